"""The fleet on the Redis topologies teams run (issue 26 items 1, 2, 4): a 3-node Cluster and a primary + replica
behind 3 Sentinels, real servers on 127.0.0.1 (``tests/redis_topologies.py``), started once per module."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

import outbound
from outbound import Registry, _page, cli
from outbound import _state as state_package
from tests.fleet_failover import through_a_failover, through_a_lost_write
from tests.redis_server import RedisServer
from tests.redis_topologies import Cluster, SentinelGroup, free_ports
from tests.upstream import Upstream, wait_until


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Cluster:
    return redis_cluster


@pytest.fixture
def sentinels(redis_sentinels: SentinelGroup) -> SentinelGroup:
    return redis_sentinels


def _mapping(upstream: Upstream, state: dict[str, Any], **service: Any) -> dict[str, Any]:
    api = {"base_url": upstream.url, "retry": None, "breaker": {"fail_max": 3, "reset_timeout": 30}, **service}
    return {"services": {"api": api}, "state": {"backend": "redis", "sync_interval": 0.2, **state}}


def _fail(registry: Registry, times: int) -> None:
    for _ in range(times):
        with contextlib.suppress(outbound.CircuitOpenError):
            registry.session("api").get("status/503")


# -- Cluster -----------------------------------------------------------------------------------------------------------


def test_a_fleet_on_a_cluster_shares_breakers_stats_and_limits(cluster: Cluster, upstream: Upstream) -> None:
    prefix = f"c-{uuid.uuid4().hex[:6]}"
    state = {"url": cluster.url, "cluster": True, "prefix": prefix}
    limit = {"rate": "3/minute", "scope": "fleet", "max_wait": 0}
    with (
        Registry.from_mapping(_mapping(upstream, state, rate_limit=limit)) as a,
        Registry.from_mapping(_mapping(upstream, state, rate_limit=limit)) as b,
    ):
        sent = 0
        for _ in range(3):
            for worker in (a, b):
                with contextlib.suppress(outbound.RateLimitedError):
                    worker.session("api").get("ok")
                    sent += 1
        assert sent == 3  # the fleet's limit, leased from the cluster
    with (
        Registry.from_mapping(_mapping(upstream, state)) as a,
        Registry.from_mapping(_mapping(upstream, state)) as b,
    ):
        b.session("api").get("ok")
        a.session("api").get("ok")
        _fail(a, 3)
        assert wait_until(lambda: b["api"].policy.breaker.state == "open", timeout=5)  # pub/sub on the cluster
        report = b.health()
        assert report["state_backend"]["status"] == "ok"
        assert report["services"]["api"]["breaker"]["state"] == "open"
        assert wait_until(lambda: b.health()["services"]["api"]["stats"]["requests"] == 5, timeout=5)
        assert b.health()["workers"] == 2
    client = RedisCluster.from_url(cluster.first_url)
    try:
        keys = [key.decode() for key in client.scan_iter(match=f"{{{prefix}}}:*", target_nodes=RedisCluster.ALL_NODES)]
        assert keys
        assert {client.keyslot(key) for key in keys} == {client.keyslot(f"{{{prefix}}}")}  # one slot, by the tag
    finally:
        client.close()


def test_without_the_hash_tag_the_scripts_fail_on_a_cluster(
    cluster: Cluster, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broken variant: the keys without their hash tag land in several slots; the cluster refuses the scripts.
    monkeypatch.setattr(state_package, "key_prefix", lambda config: config.prefix)
    import outbound._state.redis as fleet_redis

    monkeypatch.setattr(fleet_redis, "key_prefix", lambda config: config.prefix)
    state = {"url": cluster.url, "cluster": True, "prefix": f"c-{uuid.uuid4().hex[:6]}"}
    with Registry.from_mapping(_mapping(upstream, state)) as registry:
        registry.session("api").get("ok")
        _fail(registry, 3)
        assert wait_until(lambda: registry.health()["state_backend"]["status"] == "unreachable", timeout=5)


def test_an_unreachable_cluster_is_one_warning_and_process_local_state(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    (closed,) = free_ports(1)
    state = {"url": f"redis://user:s3cret@127.0.0.1:{closed}/0", "cluster": True, "timeout": 0.05}
    with (
        caplog.at_level(logging.WARNING, logger="outbound.fleet"),
        Registry.from_mapping(_mapping(upstream, state)) as r,
    ):
        for _ in range(3):
            assert r.session("api").get("ok").status_code == 200
        _fail(r, 3)
        assert r["api"].policy.breaker.state == "open"  # its own breaker, as a process alone
        report = r.health()
    assert report["state_backend"]["status"] == "unreachable"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "outbound.fleet"]
    assert len(warnings) == 1, warnings
    assert "state.url redis://user:***@127.0.0.1" in warnings[0]
    assert "s3cret" not in str(report)
    assert "s3cret" not in warnings[0]


# -- Sentinel ----------------------------------------------------------------------------------------------------------


def test_a_wrong_sentinel_service_name_is_one_warning_and_process_local_state(
    sentinels: SentinelGroup, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    url = sentinels.url.replace(f"/{SentinelGroup.SERVICE}/", "/no-such-primary/")
    with (
        caplog.at_level(logging.WARNING, logger="outbound.fleet"),
        Registry.from_mapping(_mapping(upstream, {"url": url})) as registry,
    ):
        assert registry.session("api").get("ok").status_code == 200
        report = registry.health()
    assert report["state_backend"]["status"] == "unreachable"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "outbound.fleet"]
    assert len(warnings) == 1, warnings
    assert "no-such-primary" in warnings[0]


def test_a_fleet_behind_sentinel_follows_a_primary_failover(
    sentinels: SentinelGroup, upstream: Upstream, tmp_path: Path
) -> None:
    prefix = f"s-{uuid.uuid4().hex[:6]}"
    state = {"url": sentinels.url, "prefix": prefix, "timeout": 0.2}
    with Registry.from_mapping(_mapping(upstream, state)) as worker:
        assert worker.session("api").get("ok").status_code == 200
        old = sentinels.primary_port()
        before = worker.health()["state_backend"]
        assert before["status"] == "ok"
        assert before["outages"] == 0
        assert before["last_outage"] is None
        assert before["primary"] == f"127.0.0.1:{old}"
        worker.isolate("api", 600)  # a decision the fleet must not lose
        primary = redis.Redis(port=old, socket_timeout=2)
        assert primary.wait(1, 2000) == 1  # the replica has it before the primary dies
        sentinels.kill(old)
        request_revive(sentinels, old)
        refused = failed = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sentinels_primary(sentinels) in (old, None):
            try:
                worker.session("api").get("ok")
            except outbound.CircuitOpenError:
                refused += 1  # the isolation holds through the failover
            except Exception:  # any other failure is what this test counts
                failed += 1
            time.sleep(0.05)
        assert sentinels_primary(sentinels) not in (old, None), "no failover within 30 s"
        assert failed == 0
        assert refused > 0
        # The new primary has the isolation; a worker started now (and this one) reports it.
        with Registry.from_mapping(_mapping(upstream, state)) as newcomer:
            newcomer._state.ensure_running()  # type: ignore[attr-defined]  # follow the fleet, as on a first call
            # Right after a failover the Sentinels may still disagree for a moment: then it starts alone and adopts
            # the fleet's state at its next sync.
            assert wait_until(lambda: newcomer.health()["state_backend"]["status"] == "ok", timeout=10)
            assert wait_until(lambda: newcomer["api"].policy.breaker.state == "isolated", timeout=5)
            with pytest.raises(outbound.CircuitOpenError):
                newcomer.session("api").get("ok")
        assert wait_until(lambda: worker.health()["state_backend"]["status"] == "ok", timeout=15)
        assert worker.health()["services"]["api"]["breaker"]["state"] == "isolated"
        # Health tells the story: the outage, its end, and the primary's move (an address, no credentials).
        after = worker.health()["state_backend"]
        _tells_the_outage(after, moved=True)
        assert after["primary"] == f"127.0.0.1:{sentinels_primary(sentinels)}"
        assert after["primary_changed"]["from"] == f"127.0.0.1:{old}"
        # The same story on the status page and in `outbound status`.
        moved = f"primary moved from 127.0.0.1:{old} to {after['primary']}"
        assert moved in _page.render_page(worker.health())
        table = cli.status(worker).text
        assert moved in " ".join(table.split())
        assert "last outage: " in " ".join(table.split())
        worker.reset("api")  # and decisions written after the failover reach the new primary
        assert worker.session("api").get("ok").status_code == 200


_KILLED: list[tuple[SentinelGroup, int]] = []


@pytest.fixture(autouse=True)
def _revive_killed_primaries() -> Iterator[None]:
    yield
    while _KILLED:
        group, port = _KILLED.pop()
        group.revive(port)  # the next test that kills a primary finds a replica to promote


def request_revive(group: SentinelGroup, port: int) -> None:
    _KILLED.append((group, port))


def sentinels_primary(group: SentinelGroup) -> int | None:
    try:
        return group.primary_port()
    except (redis.RedisError, OSError, TypeError):
        return None


# -- settings ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "key"),
    [
        ({"backend": "redis", "url": "unix:///tmp/redis.sock", "cluster": True}, "cluster"),
        ({"backend": "redis", "url": "redis+sentinel://127.0.0.1:26379/x/0", "cluster": True}, "cluster"),
        ({"backend": "redis", "cluster": "yes"}, "cluster"),
        ({"backend": "redis", "url": "http://user:s3cret@127.0.0.1:6379/0"}, "url"),
    ],
)
def test_bad_topology_settings_are_config_errors_naming_the_key(state: dict[str, Any], key: str) -> None:
    with pytest.raises(outbound.ConfigError) as raised:
        Registry.from_mapping({"services": {"api": {"base_url": "http://127.0.0.1:1"}}, "state": state})
    assert raised.value.key == f"state.{key}" or raised.value.key == key
    assert "s3cret" not in str(raised.value)


def test_sentinel_and_cluster_urls_are_accepted_and_redacted() -> None:
    from outbound._state._notice import redact

    for url in ("redis+sentinel://a:1,b:2/primary/3", "rediss+sentinel://u:p@a:1/primary"):
        with Registry.from_mapping(
            {"services": {"api": {"base_url": "http://127.0.0.1:1"}}, "state": {"backend": "redis", "url": url}}
        ):
            pass
    assert redact("rediss://app:s3cret@h:6380/0?ssl_keyfile=k.pem&password=x") == "rediss://app:***@h:6380/0"
    assert redact("redis://:s3cret@h:6379/0") == "redis://***@h:6379/0"
    assert redact("redis+sentinel://a:1,b:2/primary/0") == "redis+sentinel://a:1,b:2/primary/0"


def _through_a_failover(
    settings: dict[str, Any], fail_over: Callable[[], None], seconds: float = 14.0, *, moves: bool = True
) -> None:
    failed, missed, backends = through_a_failover(settings, fail_over, seconds=seconds)
    assert failed == 0  # no call failed because of Redis
    assert missed == 0  # the decision made after the failover reached every worker
    for backend in backends:  # and each worker's health tells what happened
        _tells_the_outage(backend, moved=moves)


def _tells_the_outage(backend: dict[str, Any], *, moved: bool) -> None:
    assert backend["status"] == "ok"
    assert backend["outages"] >= 1
    outage = backend["last_outage"]
    started, ended = datetime.fromisoformat(outage["unreachable_from"]), datetime.fromisoformat(outage["recovered_at"])
    assert started < ended
    assert outage["seconds"] == pytest.approx((ended - started).total_seconds(), abs=0.01)
    assert outage["error"]
    assert datetime.fromisoformat(backend["since"]) == ended  # ok since it recovered
    if moved:
        change = backend["primary_changed"]
        assert change is not None
        assert change["from"] != change["to"] == backend["primary"]
        assert datetime.fromisoformat(change["at"]) >= started
    else:
        assert backend["primary"] is None  # one Redis: the settings name it
        assert backend["primary_changed"] is None


def test_four_worker_processes_keep_their_answers_through_a_primary_failover(
    sentinels: SentinelGroup, upstream: Upstream
) -> None:
    settings = _mapping(upstream, {"url": sentinels.url, "prefix": f"f-{uuid.uuid4().hex[:6]}", "timeout": 0.2})

    def fail_over() -> None:
        old = sentinels.primary_port()
        sentinels.kill(old)
        request_revive(sentinels, old)
        assert wait_until(lambda: sentinels_primary(sentinels) not in (old, None), timeout=30), "no failover"

    _through_a_failover(settings, fail_over)


def test_four_worker_processes_keep_their_answers_through_a_cluster_master_loss(
    upstream: Upstream, tmp_path: Path
) -> None:
    prefix = f"n-{uuid.uuid4().hex[:6]}"
    with Cluster(tmp_path, replicas=1) as cluster:
        settings = _mapping(upstream, {"url": cluster.url, "cluster": True, "prefix": prefix, "timeout": 0.2})
        tag = f"{{{prefix}}}"

        def fail_over() -> None:
            old = cluster.master_of(tag)
            assert old is not None
            cluster.kill(old)  # the master holding every key of the fleet
            assert wait_until(lambda: cluster.master_of(tag) not in (old, None), timeout=20), "no replica took over"

        _through_a_failover(settings, fail_over)


def _sentinel_losing_a_write(sentinels: SentinelGroup, prefix: str) -> tuple[Callable[[], None], Callable[[], None]]:
    # The next writes reach the primary only; then the primary dies and the replica, without them, takes over.
    ports: dict[str, int] = {}

    def lose() -> None:
        ports["primary"], ports["replica"] = sentinels.primary_port(), sentinels.replica_port()
        sentinels.lose_replication(ports["primary"], ports["replica"])

    def fail_over() -> None:
        old, replica = ports["primary"], ports["replica"]
        sentinels.kill(old)
        request_revive(sentinels, old)
        sentinels.thaw(replica)
        assert not redis.Redis(port=replica, socket_timeout=2).keys(f"{prefix}:breaker:*")  # the opening is lost
        assert wait_until(lambda: sentinels_primary(sentinels) == replica, timeout=30), "no failover"

    return lose, fail_over


def test_an_open_breaker_survives_a_failover_that_loses_its_write(sentinels: SentinelGroup, upstream: Upstream) -> None:
    # Item 4: replication is asynchronous; the opening, acknowledged by the primary, never reached the replica that
    # took over. The workers hold it, and write it again: every one refuses every call, and the fleet has it again.
    prefix = f"l-{uuid.uuid4().hex[:6]}"
    settings = _mapping(upstream, {"url": sentinels.url, "prefix": prefix, "timeout": 0.2})
    failed, missed, fleet_state = through_a_lost_write(settings, *_sentinel_losing_a_write(sentinels, prefix))
    assert failed == 0
    assert missed == 0
    assert fleet_state == "open"


def test_without_the_reassertion_a_failover_loses_the_open_breaker(
    sentinels: SentinelGroup, upstream: Upstream
) -> None:
    # The broken variant: workers that never write again what the fleet lost adopt the new primary's "closed".
    prefix = f"l-{uuid.uuid4().hex[:6]}"
    settings = _mapping(upstream, {"url": sentinels.url, "prefix": prefix, "timeout": 0.2})
    lose, fail_over = _sentinel_losing_a_write(sentinels, prefix)
    failed, missed, fleet_state = through_a_lost_write(settings, lose, fail_over, broken=True)
    assert failed == 0
    assert missed == 4
    assert fleet_state == "closed"


def test_an_open_breaker_survives_a_cluster_master_loss_that_loses_its_write(
    upstream: Upstream, tmp_path: Path
) -> None:
    prefix = f"m-{uuid.uuid4().hex[:6]}"
    tag = f"{{{prefix}}}"
    with Cluster(tmp_path, replicas=1) as cluster:
        settings = _mapping(upstream, {"url": cluster.url, "cluster": True, "prefix": prefix, "timeout": 0.2})
        ports: dict[str, int] = {}

        def lose() -> None:
            master = cluster.master_of(tag)
            assert master is not None
            ports["master"], ports["replica"] = master, cluster.replica_of(master)
            cluster.lose_replication(master, ports["replica"])

        def fail_over() -> None:
            old, replica = ports["master"], ports["replica"]
            cluster.kill(old)
            cluster.thaw(replica)
            assert not redis.Redis(port=replica, socket_timeout=2).keys(f"{tag}:breaker:*")  # the opening is lost
            assert wait_until(lambda: cluster.master_of(tag) == replica, timeout=20), "no replica took over"

        failed, missed, fleet_state = through_a_lost_write(settings, lose, fail_over)
    assert failed == 0
    assert missed == 0
    assert fleet_state == "open"


def test_four_worker_processes_keep_their_answers_when_a_single_redis_restarts_empty(
    redis_server: RedisServer, redis_url: str, upstream: Upstream
) -> None:
    settings = _mapping(upstream, {"url": redis_url, "prefix": f"r-{uuid.uuid4().hex[:6]}", "timeout": 0.2})

    def restart() -> None:
        redis_server.stop()
        time.sleep(1.0)
        redis_server.start()

    _through_a_failover(settings, restart, seconds=7.0, moves=False)


def test_the_failover_check_fails_for_workers_that_ignore_the_fleet(
    redis_server: RedisServer, redis_url: str, upstream: Upstream
) -> None:
    settings = _mapping(upstream, {"url": redis_url, "prefix": f"r-{uuid.uuid4().hex[:6]}", "timeout": 0.2})
    failed, missed, _ = through_a_failover(settings, lambda: None, seconds=4.0, broken=True)
    assert failed == 0
    assert missed == 4  # every worker missed the decision


def _lost_and_found(redis_server: RedisServer, redis_url: str, upstream: Upstream) -> tuple[bool, bool, str]:
    # An isolation and a pause every worker holds; then the fleet loses them (FLUSHALL: what a failover that lost
    # their writes, or a Redis restarted empty, leaves). Whether each is back in Redis a second later, and the state
    # a worker is in then.
    prefix = f"p-{uuid.uuid4().hex[:6]}"
    settings = _mapping(upstream, {"url": redis_url, "prefix": prefix}, retry={"total": 0, "retry_after_max": 60})
    client = redis_server.client()
    with Registry.from_mapping(settings) as a, Registry.from_mapping(settings) as b:
        a.session("api").get("ok")
        b.session("api").get("ok")
        a.session("api").get("status/429", params={"retry_after": "60"})  # the upstream asks for a pause
        a.isolate("api")
        pause_b = b["api"].policy.pause
        assert pause_b is not None
        assert wait_until(lambda: b["api"].policy.breaker.state == "isolated" and (pause_b.paused_for() or 0) > 30)
        client.flushall()
        time.sleep(1.0)  # five sync intervals
        found = client.exists(f"{prefix}:breaker:api") == 1, client.pttl(f"{prefix}:pause:api") > 30_000
        state = b["api"].policy.breaker.state
        if all(found):
            # The rule never revives what ended: after an operator's reset, nothing comes back.
            a.reset("api")
            assert wait_until(lambda: b["api"].policy.breaker.state == "closed")
            time.sleep(1.0)
            assert client.exists(f"{prefix}:breaker:api") == 0
            assert client.pttl(f"{prefix}:pause:api") < 0
            assert b["api"].policy.breaker.state == "closed"
            assert a.session("api").get("ok").status_code == 200
    return (*found, state)


def test_an_isolation_and_a_pause_the_fleet_lost_are_written_again_by_the_workers(
    redis_server: RedisServer, redis_url: str, upstream: Upstream
) -> None:
    assert _lost_and_found(redis_server, redis_url, upstream) == (True, True, "isolated")


def test_without_the_reassertion_the_fleet_loses_the_isolation_and_the_pause(
    redis_server: RedisServer, redis_url: str, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    import outbound._state.redis as fleet_redis

    monkeypatch.setattr(fleet_redis.RedisState, "_reassert", lambda *args, **kwargs: False)
    monkeypatch.setattr(fleet_redis.RedisState, "_reassert_pause", lambda *args, **kwargs: None)
    assert _lost_and_found(redis_server, redis_url, upstream) == (False, False, "closed")


def _connection_attempts(url: str) -> int:
    # A port that accepts and at once closes every connection (a Redis dying at each try): how many connections one
    # command of the fleet's client opens before it gives up.
    import socket
    import threading

    from outbound._config import StateConfig
    from outbound._state._client import connect

    accepted = 0
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()

    def accept() -> None:
        nonlocal accepted
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted += 1
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        client = connect(StateConfig(backend="redis", url=url.format(port=port), timeout=0.2))
        with pytest.raises((redis.RedisError, OSError)):
            client.ping()
        client.close()
    finally:
        done.set()
        thread.join(timeout=5)
        listener.close()
    return accepted


@pytest.mark.parametrize("url", ["redis://127.0.0.1:{port}/0", "redis+sentinel://127.0.0.1:{port}/primary/0"])
def test_a_dying_redis_costs_one_connection_per_command_not_redis_pys_retries(url: str) -> None:
    # Since redis-py 6 a client retries a failed connection 3 times, sleeping up to 1, 2 and 4 s in between: seconds
    # on a calling thread (a failure counted, a trial claimed, a health report). The fleet's client does not retry.
    assert _connection_attempts(url) == 1


def test_with_redis_pys_retries_a_dying_redis_costs_four_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    # The broken variant: redis-py's default retry count (with short pauses, to keep the test quick).
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    from outbound._state import _client

    monkeypatch.setattr(_client, "Retry", lambda backoff, retries: Retry(ExponentialWithJitterBackoff(0.02, 0.01), 3))
    assert _connection_attempts("redis://127.0.0.1:{port}/0") == 4


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
def test_game_day_switches_work_on_a_cluster_and_behind_sentinel(
    topology: str, cluster: Cluster, sentinels: SentinelGroup, upstream: Upstream
) -> None:
    # `outbound chaos` goes through the fleet's own client (any topology) and its keys carry the hash tag on a
    # cluster: a plain client to one node was refused there (keys of other slots), and could not read a Sentinel URL.
    prefix = f"g-{uuid.uuid4().hex[:6]}"
    state = {"url": cluster.url, "cluster": True} if topology == "cluster" else {"url": sentinels.url}
    breaker = {"fail_max": 1000, "reset_timeout": 30}  # the injected 502s must not open it
    mapping = _mapping(upstream, {**state, "prefix": prefix, "timeout": 0.5}, retry={"total": 0}, breaker=breaker)
    mapping["chaos"] = {"allow": True}
    with Registry.from_mapping(mapping) as worker, Registry.from_mapping(mapping) as operator:
        assert worker.session("api").get("ok").status_code == 200  # first use starts the follower
        out = cli.chaos(operator, "api", kind="status", rate=1.0, seconds=30, status=502)
        assert out.code == 0, out.text
        assert wait_until(lambda: worker.session("api").get("ok").status_code == 502, timeout=5)
        assert cli.chaos(operator, None, off=True).code == 0  # one DEL of every service's key: one slot
        assert wait_until(lambda: worker.session("api").get("ok").status_code == 200, timeout=5)
