"""Real Redis topologies on 127.0.0.1 for the fleet tests: a 3-node Cluster, and a primary + replica + 3 Sentinels.

Started as ``tests/redis_server.py`` starts one Redis: the ``redis-server`` binary on free ports (a cluster node's
bus port is its port + 10,000, so ports are taken below 55,000 with both free), each in a directory of its own,
stopped at the end. Nothing here touches the machine's shared Redis.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, bus: bool = False) -> list[int]:
    """``count`` free ports below 45,000 (with port + 10,000 free too when ``bus``)."""
    found: list[int] = []
    for _ in range(2000):
        port = random.randint(20_000, 44_999)
        if port not in found and _free(port) and (not bus or _free(port + 10_000)):
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError("no free ports")


def _binary(name: str = "redis-server") -> str:
    binary = shutil.which(name)
    if binary is None:
        raise RuntimeError(f"{name} is not installed: apt-get install -y redis-server redis-tools")
    return binary


def _wait(check: object, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout:g} s")


def _replica_synced(port: int) -> bool:
    """Whether the node on ``port`` is a master, or a replica whose link to its master is up."""
    info = redis.Redis(port=port, socket_timeout=1).info("replication")
    return info.get("role") == "master" or info.get("master_link_status") == "up"


class _Processes:
    def __init__(self, directory: Path, *, tls: tuple[str, ...] = (), client: dict[str, Any] | None = None) -> None:
        self.directory = directory
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        # With ``tls`` (redis-server's --tls-* options) every node listens on TLS only; ``client`` is what a
        # redis-py client needs to talk to them (ssl, certificates, a user).
        self.tls = tls
        self.client_options = client or {}

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, **self.client_options)

    def start(self, port: int, *extra: str, sentinel: bool = False) -> None:
        home = self.directory / str(port)
        home.mkdir(exist_ok=True)
        args = [_binary()]
        if sentinel:
            config = home / "sentinel.conf"
            config.write_text("\n".join(extra) + "\n")
            args += [str(config), "--sentinel"]
            extra = ()
        listen = ["--port", "0", "--tls-port", str(port), *self.tls] if self.tls else ["--port", str(port)]
        args += [*listen, "--bind", "127.0.0.1", "--dir", str(home), "--logfile", str(home / "log")]
        if not sentinel:
            args += ["--save", "", "--appendonly", "no"]
        self.processes[port] = subprocess.Popen([*args, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, port: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None:
            process.kill()
            process.wait(timeout=10)

    def freeze(self, port: int) -> None:
        """Stop the node on ``port`` (SIGSTOP) without killing it: it neither reads nor answers until ``thaw``."""
        self.processes[port].send_signal(signal.SIGSTOP)

    def thaw(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)

    def lose_replication(self, primary: int, replica: int) -> None:
        """Make the next writes to ``primary`` reach no replica, as asynchronous replication may lose them in a
        failover: the replica is frozen, then the primary drops its link (a frozen replica cannot reconnect, and
        nothing written from now on is sent). ``thaw`` the replica after killing the primary."""
        self.freeze(replica)
        self.client(primary).client_kill_filter(_type="slave")

    def stop(self) -> None:
        for port in list(self.processes):
            process = self.processes.pop(port)
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


class Cluster(_Processes):
    """Three masters (and ``replicas`` replicas of each): ``cluster.url`` names every node."""

    def __init__(self, directory: Path, *, replicas: int = 0) -> None:
        super().__init__(directory)
        self.replicas = replicas
        self.ports = free_ports(3 * (1 + replicas), bus=True)

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"127.0.0.1:{port}" for port in self.ports) + "/0"

    @property
    def first_url(self) -> str:
        """The first node alone (redis-py's own ``RedisCluster.from_url`` takes one)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def __enter__(self) -> Cluster:
        try:
            for port in self.ports:
                self.start(port, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                           "--cluster-config-file", f"nodes-{port}.conf")  # fmt: skip
            for port in self.ports:
                _wait(redis.Redis(port=port, socket_timeout=1).ping, f"cluster node {port}")
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            subprocess.run(
                [
                    _binary("redis-cli"),
                    "--cluster",
                    "create",
                    *nodes,
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            for port in self.ports:
                _wait(
                    lambda port=port: redis.Redis(port=port, socket_timeout=1).cluster("info")["cluster_state"] == "ok",
                    "the cluster",
                )
            # A replica takes over only once it has synced with its master (a replica whose link never came up has
            # data of unknown age and refuses to be elected): on a loaded machine the first sync can take seconds.
            for port in self.ports:
                _wait(lambda port=port: _replica_synced(port), f"cluster node {port}'s replication", timeout=30.0)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def replica_of(self, master: int) -> int:
        """The port of a replica of the master on ``master``."""
        info = redis.Redis(port=master, socket_timeout=2).info("replication")
        return int(info["slave0"]["port"])

    def master_of(self, key: str) -> int | None:
        """The port of the master serving ``key``'s slot, as a live node sees it (``None``: none yet)."""
        for port in self.ports:
            if port not in self.processes:
                continue
            with contextlib.suppress(redis.RedisError, OSError):
                node = redis.Redis(port=port, socket_timeout=1)
                slot = int(node.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in node.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        return int(master[1])
        return None


class SentinelGroup(_Processes):
    """A primary, one replica and three Sentinels watching them as ``SERVICE``.

    ``server`` adds redis-server options to the primary and the replica (an ACL user, say), ``monitor`` lines to
    the Sentinels' configuration (``sentinel auth-user``...); ``tls`` and ``client`` as ``_Processes``."""

    SERVICE = "fleet"

    def __init__(
        self,
        directory: Path,
        *,
        tls: tuple[str, ...] = (),
        client: dict[str, Any] | None = None,
        server: tuple[str, ...] = (),
        monitor: tuple[str, ...] = (),
    ) -> None:
        super().__init__(directory, tls=tls, client=client)
        self.primary, self.replica, *self.sentinels = free_ports(5)
        self.server, self.monitor = server, monitor

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def sentinel(self, port: int) -> redis.Redis:
        # A Sentinel has no ACL user of the primary's: only the TLS options.
        options = {k: v for k, v in self.client_options.items() if k not in ("username", "password")}
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, **options)

    def primary_port(self) -> int:
        answer = self.sentinel(self.sentinels[0]).sentinel_get_master_addr_by_name(self.SERVICE)
        return int(answer[1])

    def replica_port(self) -> int:
        """The port of the replica of the current primary."""
        info = self.client(self.primary_port()).info("replication")
        return int(info["slave0"]["port"])

    def __enter__(self) -> SentinelGroup:
        try:
            self.start(self.primary, *self.server)
            self.start(self.replica, *self.server, "--replicaof", "127.0.0.1", str(self.primary))
            for port in self.sentinels:
                self.start(
                    port,
                    f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary} 2",
                    f"sentinel down-after-milliseconds {self.SERVICE} 1000",
                    f"sentinel failover-timeout {self.SERVICE} 5000",
                    *self.monitor,
                    sentinel=True,
                )
            replica = self.client(self.replica)
            _wait(lambda: replica.info("replication")["master_link_status"] == "up", "the replica")
            self._wait_ready(self.replica)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, replica: int) -> None:
        # Every Sentinel knows the others and sees the replica up (they learn of replicas from the primary's INFO,
        # every few seconds): only then can they fail over.
        def ready(port: int) -> bool:
            sentinel = self.sentinel(port)
            master = sentinel.sentinel_master(self.SERVICE)
            replicas = sentinel.sentinel_slaves(self.SERVICE)
            return bool(
                master["num-other-sentinels"] == 2
                and any(r["port"] == replica and r["flags"] == "slave" and r["master-link-status"] == "ok"
                        for r in replicas)
            )  # fmt: skip

        for port in self.sentinels:
            _wait(lambda port=port: ready(port), "the sentinels", timeout=30)

    def revive(self, port: int) -> None:
        """Start a killed primary again, as a replica of the current one, and wait until a failover is possible."""
        self.start(port, *self.server, "--replicaof", "127.0.0.1", str(self.primary_port()))
        self._wait_ready(port)
