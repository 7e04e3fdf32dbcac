"""Redis discovery: each node keeps an entry in a Redis server that expires unless refreshed.

Keys of cluster ``C`` under the prefix ``P`` (``redis_key_prefix``, ``catga`` by default):

- ``P:{C}:nodes``, a sorted set of node ids, each scored by the time its entry expires
  (ms by the Redis server's clock: the one clock all nodes share, whatever their own
  clocks say);
- ``P:{C}:node:ID``, a hash of what a ``Candidate`` carries: ``id``, ``ep`` (ROUTER
  endpoint), ``pub`` (PUB endpoint), ``cluster``, ``v`` (protocol version), ``pk`` (CURVE
  public key, with CURVE on) and ``meta`` (the metadata, as JSON); it expires with the
  entry (PEXPIRE), so a crashed node's hash goes by itself;
- ``P:{C}:changes``, a pub/sub channel: a node publishes its id when it registers (again)
  or unregisters, and the others read that id's hash at once.

The braces make ``C`` a Redis Cluster hash tag: every key of one cluster is in one slot.
Each refresh (``redis_refresh_interval``) writes this node's entry in one MULTI (HMGET
of what was there, which is another node's when two run with one id; DEL, HSET,
PEXPIRE, ZADD), prunes the ids whose score has passed (ZREMRANGEBYSCORE) and reads the
live ids: a new id's hash is read, an id gone is REMOVED. As for mDNS and seeds, an
entry that goes only stops the greetings: heartbeats decide membership.

What Redis holds is untrusted input: an entry is taken only if every field is within its
bound, its id is a node id and its key's, its cluster is this one, its endpoints are
``tcp://HOST:PORT`` (``config.parse_endpoint``, as for seeds), its key a CURVE key's
length and its metadata what a heartbeat may carry; at most ``limit`` ids are read. An
entry refused is logged once, with why.

Redis unreachable (down, restarted, a network cut): what is known stays, one WARNING
says so, and the node tries again after 0.1 s, doubling up to 5 s (jittered); once it is
back, the node writes and announces its entry again and reads every entry afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._redis_url import check_redis_url, redact
from ..config import NODE_ID_PATTERN, parse_endpoint
from ..errors import ConfigError
from ..protocol import (
    MAX_CLUSTER,
    MAX_ENDPOINT,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY,
    MAX_METADATA_VALUE,
    MAX_SOURCE,
    PROTOCOL_VERSION,
    Metadata,
)
from ..security import KEY_LENGTH
from ._fanout import Fanout
from .base import Candidate, ChangeKind, Discovery, DiscoveryChange

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["RedisDiscovery"]

log = logging.getLogger(__name__)

INSTALL_HINT: Final = "pip install 'catga-zmq[redis]'"
#: The first pause after a failed attempt; doubled after each, up to ``RETRY_MAX``.
RETRY_FIRST: Final = 0.1  # s
RETRY_MAX: Final = 5.0  # s
#: What connecting to Redis, and one command, may take before the attempt has failed.
SOCKET_TIMEOUT: Final = 2.0  # s
#: ``register()`` returns after the first attempt, or after this much if it hangs.
FIRST_ATTEMPT_WAIT: Final = 5.0  # s
#: What withdrawing the entry may take when the node closes (it expires anyway).
UNREGISTER_TIMEOUT: Final = 2.0  # s
#: Pub/sub messages read before the listener lets the loop run something else.
MESSAGES_PER_TURN: Final = 64

FIELDS: Final = ("id", "ep", "pub", "cluster", "v", "pk", "meta")
#: The longest value taken for each field (characters); JSON writes one character of
#: metadata as up to 6 (``\u00e9``).
BOUNDS: Final = {
    "id": MAX_SOURCE,
    "ep": MAX_ENDPOINT,
    "pub": MAX_ENDPOINT,
    "cluster": MAX_CLUSTER,
    "v": 6,
    "pk": KEY_LENGTH,
    "meta": 6 * MAX_METADATA_ENTRIES * (MAX_METADATA_KEY + MAX_METADATA_VALUE + 6),
}
_NODE_ID = re.compile(NODE_ID_PATTERN)
_Z85 = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
_meta_decoder = msgspec.json.Decoder(Metadata)


def _require_redis() -> None:
    """ConfigError naming the extra to install when redis-py is missing."""
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        raise ConfigError(f"discovery 'redis' needs the redis package: {INSTALL_HINT}") from None


class RedisDiscovery(Discovery):
    """Register in, and find the others of ``cluster`` through, the Redis at ``url``.

    ``refresh_interval`` (s) is how often this node's entry is written again and the
    others' ids read; ``ttl`` (s, more than twice ``refresh_interval``) how long an
    entry lives unless refreshed. ``limit`` bounds the entries read. The loop starts
    with the first ``register()``, which returns once the entry is written or the
    first attempt failed (then it goes on trying). A ``ConfigError`` names a URL that
    is not usable or redis-py missing (``pip install 'catga-zmq[redis]'``).
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        cluster: str,
        *,
        key_prefix: str = "catga",
        refresh_interval: float = 2.0,
        ttl: float = 10.0,
        limit: int = 1024,
        version: int = PROTOCOL_VERSION,
    ) -> None:
        check_redis_url(url)
        if not ttl > 2 * refresh_interval > 0:
            raise ConfigError(
                f"redis ttl ({ttl} s) must be more than twice the refresh interval "
                f"({refresh_interval} s)"
            )
        _require_redis()
        self.url = url
        self.cluster = cluster
        self.version = version
        self.refresh_interval = refresh_interval
        self.ttl = ttl
        self.limit = limit
        tag = f"{key_prefix}:{{{cluster}}}"
        self.nodes_key = f"{tag}:nodes"
        self.channel = f"{tag}:changes"
        self._node_key_prefix = f"{tag}:node:"
        self._client: Redis | None = None
        self._me: Candidate | None = None
        self._found: dict[str, Candidate] = {}  # by node id
        self._refused: dict[str, str] = {}  # node id -> why, until its entry changes
        self._fanout = Fanout()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        #: register() calls, and the one whose record Redis has: they differ until the
        #: entry is written and announced on the channel.
        self._wanted = 0
        self._written = 0
        self._dirty: set[str] = set()  # ids the channel named, to read again
        self._resync = False  # too many named: read every entry instead
        self._attempted = asyncio.Event()
        self._lock = asyncio.Lock()  # one write at a time: unregister() vs a refresh
        self._closed = False
        #: True while the last attempt to reach Redis succeeded.
        self.connected = False

    def node_key(self, node_id: str) -> str:
        """The key of ``node_id``'s hash."""
        return self._node_key_prefix + node_id

    # the interface ---------------------------------------------------------------------

    async def register(self, me: Candidate) -> None:
        """Write ``me``'s entry and keep it fresh until ``unregister``; called again, update it.

        Returns after the first attempt: with Redis down, the node starts all the same
        and the entry is written once Redis answers.
        """
        if self._closed:
            raise RuntimeError("RedisDiscovery is closed")
        if not me.node_id:
            raise ConfigError("redis discovery keeps entries by node id: the node needs one")
        self._me = me
        self._wanted += 1
        self._wake.set()
        await self._begin()

    async def start(self, bind_host: str = "127.0.0.1") -> None:
        """Read the others' entries without writing one (what a client does)."""
        if self._closed:
            raise RuntimeError("RedisDiscovery is closed")
        await self._begin()

    async def _begin(self) -> None:
        """Start the loop if it is not running; return after its first attempt."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="catga-discovery-redis"
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_ATTEMPT_WAIT):
                await self._attempted.wait()

    async def unregister(self) -> None:
        """Withdraw this node's entry (ZREM, DEL, and a message on the channel).

        With Redis unreachable, logs one line and returns: the entry expires after ``ttl``.
        """
        me, self._me = self._me, None
        if me is None or me.node_id is None or self._client is None:
            return
        try:
            async with asyncio.timeout(UNREGISTER_TIMEOUT), self._lock:
                key = self.node_key(me.node_id)
                endpoint = await self._client.hget(key, "ep")
                if endpoint is not None and endpoint != me.endpoint.encode():
                    return  # another node's with our id (it stays; we were the younger)
                pipe = self._client.pipeline(transaction=True)
                pipe.zrem(self.nodes_key, me.node_id)
                pipe.delete(key)
                pipe.publish(self.channel, me.node_id)
                await pipe.execute()
        except Exception as exc:  # a closing node must not fail on its directory
            log.warning(
                "redis discovery: could not withdraw %s from %s (%s); its entry expires "
                "within %g s",
                me.node_id,
                redact(self.url),
                _why(exc),
                self.ttl,
            )

    def candidates(self) -> list[Candidate]:
        """The entries of this cluster read so far, this node's own left out."""
        return list(self._found.values())

    def watch(self) -> AsyncIterator[DiscoveryChange]:
        """Every current candidate as ADDED, then each change (REMOVED when an entry
        expires, is withdrawn or becomes unusable)."""
        return self._fanout.watch(
            DiscoveryChange(ChangeKind.ADDED, c) for c in self._found.values()
        )

    async def aclose(self) -> None:
        """Stop the loop, unregister, close the connections; every ``watch()`` ends.

        Idempotent. A closed backend does not start again.
        """
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await self.unregister()
        finally:
            client, self._client = self._client, None
            try:
                if client is not None:
                    await client.aclose()
            finally:
                self._found.clear()
                self._fanout.close()

    # the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        delay, failures = RETRY_FIRST, 0
        while not self._closed:
            try:
                await self._session()
            except Exception as exc:
                up_before, self.connected = self.connected, False
                self._attempted.set()
                if up_before:
                    failures, delay = 0, RETRY_FIRST  # a new outage
                failures += 1
                self._log_failure(exc, failures)
                if self._client is not None:
                    # Connections of before the outage only fail the next attempt too.
                    with contextlib.suppress(Exception):
                        await self._client.connection_pool.disconnect()
                # Jittered, so that the nodes of a cluster do not all come back at once.
                await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
                delay = min(delay * 2, RETRY_MAX)

    def _log_failure(self, exc: Exception, failures: int) -> None:
        reachable = _is_connection_error(exc)
        if failures > 1:
            log.debug("redis discovery: attempt %d failed: %s", failures, _why(exc))
        elif reachable:
            log.warning(
                "redis discovery: cannot reach %s (%s); keeping the nodes known (%d) and "
                "retrying, every %g s at most",
                redact(self.url),
                _why(exc),
                len(self._found),
                RETRY_MAX,
            )
        else:
            log.error(
                "redis discovery: %s failed (%s); retrying, every %g s at most",
                redact(self.url),
                _why(exc),
                RETRY_MAX,
                exc_info=not isinstance(exc, _redis_error()),
            )

    async def _session(self) -> None:
        """One connection's life: subscribe, write, read everything, then keep both up."""
        client = self._connect()
        pubsub = client.pubsub()
        try:
            # Subscribed before anything is read: a change in between is not lost.
            await pubsub.subscribe(self.channel)
            self._written = -1  # after an outage the entry may be gone (a restart)
            ids = await self._refresh(client)
            await self._sync(client, ids, full=True)
            me = self._me
            log.info(
                "redis discovery: %s at %s; %d other nodes there",
                f"registered {me.node_id}" if me is not None else "reading",
                redact(self.url),
                len(self._found),
            )
            self.connected = True
            self._attempted.set()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._listen(pubsub))
                tasks.create_task(self._keep(client))
        except BaseExceptionGroup as group:
            # The TaskGroup's: the first failure is what happened.
            raise group.exceptions[0] from None
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _connect(self) -> Redis:
        if self._client is None:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # No retries inside redis-py: a lost connection must end the session, so
            # that the entry is written again and everything read afresh, not resume
            # a subscription that missed what happened meanwhile.
            self._client = Redis.from_url(
                self.url,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                decode_responses=False,
            )
        return self._client

    async def _keep(self, client: Redis) -> None:
        """Refresh every ``refresh_interval``; read again what the channel names."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self.refresh_interval
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can turn a
            # cancellation that meets its timeout into TimeoutError, lost here.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            if self._resync or self._written != self._wanted or loop.time() >= due:
                full, self._resync = self._resync, False
                if full:
                    self._dirty.clear()
                ids = await self._refresh(client)
                await self._sync(client, ids, full=full)
                due = loop.time() + self.refresh_interval
            if self._dirty:
                dirty, self._dirty = self._dirty, set()
                await self._reread(client, dirty)

    async def _listen(self, pubsub: PubSub) -> None:
        """The channel's messages: each names an id whose entry changed."""
        while True:
            for _ in range(MESSAGES_PER_TURN):
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                data = message.get("data")
                node_id = _text(data, MAX_SOURCE) if isinstance(data, bytes) else None
                if node_id is None or not _NODE_ID.fullmatch(node_id):
                    continue  # not one of ours: anyone with access may publish
                if len(self._dirty) < self.limit:
                    self._dirty.add(node_id)
                else:
                    self._resync = True
                self._wake.set()
            await asyncio.sleep(0)  # a flood of messages must not starve the loop

    async def _refresh(self, client: Redis) -> list[str]:
        """Write this node's entry (and announce it if asked), prune, and list the live ids."""
        async with self._lock:
            seconds, micros = await client.time()
            now = seconds * 1000 + micros // 1000  # ms, Redis's clock
            ttl = round(self.ttl * 1000)
            me, wanted = self._me, self._wanted
            pipe = client.pipeline(transaction=True)
            prior_at = None
            if me is not None and me.node_id is not None:
                key = self.node_key(me.node_id)
                # What is there before it is overwritten: another node's, when two run
                # with one id; connecting to it lets their heartbeats tell which of the
                # two is younger (and closes).
                prior_at = len(pipe)
                pipe.hmget(key, list(FIELDS))
                pipe.delete(key)  # no field of an older record may linger
                fields: dict[Any, Any] = self._fields(me)  # redis-py's Mapping is invariant
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, ttl)
                pipe.zadd(self.nodes_key, {me.node_id: now + ttl})
            pipe.zremrangebyscore(self.nodes_key, "-inf", now)
            live_at = len(pipe)
            pipe.zrangebyscore(self.nodes_key, f"({now}", "+inf", start=0, num=self.limit)
            if me is not None and me.node_id is not None and wanted != self._written:
                pipe.publish(self.channel, me.node_id)
            done = await pipe.execute()
            self._written = wanted
        if me is not None and me.node_id is not None and prior_at is not None:
            prior = done[prior_at]
            if any(v is not None for v in prior):
                self._take(me.node_id, prior)
        live = done[live_at]
        return [i for raw in live if (i := _text(raw, MAX_SOURCE)) is not None]

    def _fields(self, me: Candidate) -> dict[str, str]:
        fields = {
            "id": me.node_id or "",
            "ep": me.endpoint,
            "cluster": self.cluster,
            "v": str(self.version),
        }
        if me.pub_endpoint:
            fields["pub"] = me.pub_endpoint
        if me.public_key:
            fields["pk"] = me.public_key
        if me.metadata:
            fields["meta"] = msgspec.json.encode(me.metadata).decode()
        return fields

    # reading ---------------------------------------------------------------------------

    async def _sync(self, client: Redis, ids: list[str], *, full: bool) -> None:
        """Take the live ids: those gone are REMOVED, new ones (all, if ``full``) read."""
        live = {i for i in ids if _NODE_ID.fullmatch(i)}
        for node_id in [i for i in self._found if i not in live]:
            self._remove(node_id)
        for node_id in [i for i in self._refused if i not in live]:
            del self._refused[node_id]
        known = self._found.keys() | self._refused.keys()
        if self._me is not None and self._me.node_id is not None:
            known |= {self._me.node_id}  # ours is read when the channel names it
        wanted = sorted(live if full else live - known)
        if wanted:
            await self._read(client, wanted, check_live=False)

    async def _reread(self, client: Redis, ids: Iterable[str]) -> None:
        """Read again the entries the channel named (each may have changed or gone)."""
        for node_id in ids:
            self._refused.pop(node_id, None)
        await self._read(client, sorted(ids), check_live=True)

    async def _read(self, client: Redis, ids: list[str], *, check_live: bool) -> None:
        pipe = client.pipeline(transaction=False)
        for node_id in ids:
            if check_live:
                pipe.zscore(self.nodes_key, node_id)
            pipe.hmget(self.node_key(node_id), list(FIELDS))
        done = await pipe.execute()
        step = 2 if check_live else 1
        for n, node_id in enumerate(ids):
            values = done[n * step + step - 1]
            if all(v is None for v in values) or (check_live and done[n * step] is None):
                self._remove(node_id)  # withdrawn, or expired
                continue
            self._take(node_id, values)

    def _take(self, node_id: str, values: list[bytes | None]) -> None:
        found = self._candidate(node_id, values)
        if isinstance(found, str):
            if self._refused.get(node_id) != found:
                log.warning("redis discovery: ignoring the entry of %r: %s", node_id, found)
            self._refused[node_id] = found
            self._remove(node_id)
            return
        me = self._me
        if me is not None and (found.node_id, found.endpoint) == (me.node_id, me.endpoint):
            # Our own entry; what another node with our id wrote there (a duplicate,
            # whose heartbeats tell which of us is younger) is gone.
            self._remove(node_id)
            return
        old = self._found.get(node_id)
        if old is not None and old == found and old.metadata == found.metadata:
            return
        if old is None and len(self._found) >= self.limit:
            self._refused[node_id] = f"more than {self.limit} entries"
            return
        if old is not None and old.endpoint != found.endpoint:
            # Same id, new place (a restart on other ports): consumers key by endpoint,
            # so the old one is withdrawn explicitly.
            self._fanout.publish(DiscoveryChange(ChangeKind.REMOVED, old))
        self._found[node_id] = found
        self._fanout.publish(DiscoveryChange(ChangeKind.ADDED, found))

    def _remove(self, node_id: str) -> None:
        old = self._found.pop(node_id, None)
        if old is not None:
            self._fanout.publish(DiscoveryChange(ChangeKind.REMOVED, old))

    def _candidate(self, node_id: str, values: list[bytes | None]) -> Candidate | str:
        """The entry as a Candidate, or why it is refused."""
        text: dict[str, str] = {}
        for name, raw in zip(FIELDS, values, strict=True):
            if raw is None:
                continue
            value = _text(raw, BOUNDS[name])
            if value is None:
                return f"its field {name!r} is over {BOUNDS[name]} characters or not UTF-8"
            text[name] = value
        if text.get("id") != node_id:
            return f"its id {text.get('id')!r} is not its key's"
        if text.get("cluster") != self.cluster:
            return f"its cluster {text.get('cluster')!r} is not {self.cluster!r}"
        endpoint, pub = text.get("ep"), text.get("pub")
        if not endpoint:
            return "it has no endpoint (ep)"
        for value in (endpoint, pub):
            if value is not None:
                try:
                    parse_endpoint(value)
                except ConfigError as exc:
                    return exc.message
        version = text.get("v")
        if version is not None and not version.isdigit():
            return f"its version {version!r} is no number"
        key = text.get("pk")
        if key is not None and (len(key) != KEY_LENGTH or not _Z85.issuperset(key)):
            return f"its key (pk) is no CURVE key: {KEY_LENGTH} Z85 characters"
        metadata: dict[str, str] = {}
        if "meta" in text:
            try:
                metadata = _meta_decoder.decode(text["meta"])
            except msgspec.MsgspecError as exc:
                return f"its metadata (meta) is not what a node may carry: {exc}"
        return Candidate(
            endpoint=endpoint,
            node_id=node_id,
            pub_endpoint=pub,
            cluster=self.cluster,
            version=int(version) if version is not None else None,
            public_key=key,
            metadata=metadata,
        )


def _text(raw: object, bound: int) -> str | None:
    """``raw`` (bytes from Redis) as text, or None when over ``bound`` or not UTF-8."""
    if not isinstance(raw, bytes) or len(raw) > 4 * bound:
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    return text if len(text) <= bound else None


def _redis_error() -> type[Exception]:
    from redis.exceptions import RedisError

    return RedisError


def _is_connection_error(exc: Exception) -> bool:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | TimeoutError)


def _why(exc: BaseException) -> str:
    """One line: the exception's message (or its type, when it has none)."""
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
