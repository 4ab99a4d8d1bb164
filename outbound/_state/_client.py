"""How the fleet reaches its Redis: one ``state.url``, whichever topology is behind it.

- ``redis://`` / ``rediss://`` / ``unix://``: one Redis, or a managed primary behind one address (redis-py's
  ``Redis.from_url``). TLS and an ACL user are the URL's: ``rediss://USER:PASSWORD@HOST:PORT/0?ssl_ca_certs=CA.pem``
  ``&ssl_certfile=CLIENT.pem&ssl_keyfile=CLIENT.key`` (redis-py passes the query's ``ssl_*`` on to its TLS socket).
- ``redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]`` (``rediss+sentinel://`` for TLS to
  the Sentinels and the primary, with the same ``?ssl_ca_certs=…&ssl_certfile=…&ssl_keyfile=…`` query as ``rediss://``;
  ``USER:PASSWORD`` is the primary's ACL user): the primary the Sentinels name (redis-py's ``Sentinel.master_for``);
  after a failover the next command that fails asks the Sentinels again, so the new primary is followed without a
  restart.
- ``state.cluster: true`` with a ``redis://`` URL naming any node, or several (``redis://A:6379,B:6379/0``, so that a
  process starting while one is down still finds the cluster): redis-py's ``RedisCluster``; every key of the fleet
  carries the hash tag ``{prefix}`` (``key_prefix``), so each script's keys live in one slot.

A client that cannot be built (no reachable cluster node) raises ``redis.ConnectionError`` like any unreachable
Redis: the fleet goes on with process-local state and says so once. ``redact`` is the URL as messages show it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from .._config import StateConfig

logger = logging.getLogger("outbound.fleet")

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
# What Redis failing looks like, whichever client: a cluster's client raises errors outside RedisError too (keys in
# several slots, no node for a slot).
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException, OSError)


def connect(config: StateConfig) -> redis.Redis:
    """A client of the fleet's Redis (connections open lazily, except a cluster's first look at its nodes).

    Raises:
        redis.ConnectionError: a cluster none of whose nodes answers.
    """
    # No retries of redis-py's own (since redis-py 6 a client retries a failed connection 3 times, sleeping up to
    # 1, 2 and 4 s between tries: seconds on a calling thread, against the one state.timeout promised): a command
    # that fails is Redis unreachable for the fleet, which has its own way back (the next sync asks again).
    options: dict[str, Any] = {
        "socket_timeout": config.timeout,
        "socket_connect_timeout": config.timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if urlsplit(config.url).scheme in SENTINEL_SCHEMES:
        return _sentinel(config.url, options)
    if config.cluster:
        # Several nodes may be named (``redis://A:6379,B:6379/0``): the client starts from any that answers.
        parts = urlsplit(config.url)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        first, *others = hosts.split(",")
        url = parts._replace(netloc=f"{userinfo}@{first}" if userinfo else first).geturl()
        nodes = [_node(host) for host in others]
        # The cluster's own retry, without a pause: it follows a MOVED redirection (a slot moved by a failover)
        # within the command, at the price of one more round trip, not of a wait.
        options["retry"] = Retry(NoBackoff(), 1)
        try:
            return cast("redis.Redis", RedisCluster.from_url(url, startup_nodes=nodes, **options))
        except RedisClusterException as error:
            raise redis.ConnectionError(f"no node of the cluster answers ({error})") from error
    return redis.Redis.from_url(config.url, **options)


def _node(address: str) -> ClusterNode:
    host, _, port = address.rpartition(":")
    return ClusterNode(host.strip("[]"), int(port or 6379))  # type: ignore[no-untyped-call]


def _sentinel(url: str, options: dict[str, Any]) -> redis.Redis:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    hosts = []
    for address in netloc.split(","):
        host, _, port = address.rpartition(":")
        hosts.append((host.strip("[]") or "127.0.0.1", int(port or 26379)))
    path = [segment for segment in parts.path.split("/") if segment]
    if not path:
        raise redis.ConnectionError("the redis+sentinel:// URL names no service (…/SERVICE_NAME[/DB])")
    service, db = unquote(path[0]), int(path[1]) if len(path) > 1 else 0
    primary: dict[str, Any] = {**options, "db": db}
    if parts.username:
        primary["username"] = unquote(parts.username)
    if parts.password:
        primary["password"] = unquote(parts.password)
    watchers = dict(options)
    if parts.scheme == "rediss+sentinel":
        # TLS to the Sentinels and to the primary alike (a deployment that encrypts one encrypts both), with the
        # query's ssl_* settings as redis-py reads them from a rediss:// URL: CA, client certificate and key.
        tls = {"ssl": True, **_tls_options(parts.query)}
        primary.update(tls)
        watchers.update(tls)
    sentinel = Sentinel(hosts, sentinel_kwargs=watchers, **options)  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis-py 8
    client: redis.Redis = sentinel.master_for(service, **primary)  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis-py 8
    return client


def _tls_options(query: str) -> dict[str, Any]:
    """The ``ssl_*`` settings of a URL's query, typed as redis-py types them (``ssl_check_hostname=false``...)."""
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query):
        if name.startswith("ssl_"):
            parser: Callable[[str], Any] | None = URL_QUERY_ARGUMENT_PARSERS.get(name)  # type: ignore[assignment]
            try:
                options[name] = parser(value) if parser is not None else value
            except (TypeError, ValueError) as error:
                raise redis.ConnectionError(f"state.url: {name} has an invalid value") from error
    return options


def serving(client: redis.Redis | None, key: str) -> str | None:
    """The ``host:port`` of the Redis that serves ``key`` as the client last found it (no command sent): the
    primary the Sentinels named, or the cluster node owning the key's slot; ``None`` for one Redis (the settings
    name it) or before the first connection. An address only, never credentials."""
    if isinstance(client, RedisCluster):
        try:
            node = client.get_node_from_key(key)
        except REDIS_ERRORS:
            return None
        return f"{node.host}:{node.port}" if node is not None else None
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        address = pool.master_address
        return f"{address[0]}:{address[1]}" if address else None
    return None
