"""Feast's Redis online store, read and bulk-written directly in Feast's own layout.

Feast's Redis store (``online_store: {type: redis}``) keeps one hash per contact, under
the key ``<serialized entity key><project>``; each feature is the field
``murmur3("<view>:<feature>")`` holding a serialized ``ValueProto`` (empty for a null),
and each view has the field ``_ts:<view>`` holding its event time as a serialized
``Timestamp``. Several service workers and several ``engage serve`` processes can share
one Redis.

This module reads and writes exactly that layout, without Feast's per-value Python
objects:

- :class:`RedisDirectReader` has the interface of the packed SQLite store's direct read
  (:meth:`features.online_store.PackedSqliteOnlineStore.read_views` and ``probe``), so
  the service's hot path (:mod:`serving.online`) can read Redis the same way: one
  pipelined round trip of ``HMGET`` per request, all views of a contact in one command;
- :func:`write_frame` writes a snapshot chunk with pipelined ``HSET`` commands, the bulk path of
  a materialization, encoding the protobuf bytes directly (tested byte-equal to
  ``ValueProto.SerializeToString``).

What one read sees: each contact's hash is read by one ``HMGET`` (atomic in Redis), and
the pipeline of a request runs inside ``MULTI``/``EXEC``, so one request is one state of
the store. A bulk write is pipelined per chunk, not one transaction: a reader during a
reload can see some contacts already updated and others not yet (never half a contact).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from feast import FeatureView
from feast.infra.online_stores.helpers import _mmh3
from feast.repo_config import RepoConfig

from features.online_store import MAX_EXACT_INT, OnlineStoreUnavailable, view_layout

if TYPE_CHECKING:
    import redis

# ValueProto fields (feast/protos/feast/types/Value.proto): int64_val = 4 (varint),
# double_val = 5 (fixed64). Timestamp: seconds = 1, nanos = 2 (both varints).
_INT64_TAG, _DOUBLE_TAG = b"\x20", b"\x29"
WRITE_CHUNK_ROWS = 5_000  # HSETs per pipeline round trip


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # a negative int64 is its 64-bit two's complement, ten bytes
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_value(v: float, kind: str) -> bytes:
    """``ValueProto(int64_val=...)`` / ``(double_val=...)`` serialized; NaN: a null (b"")."""
    if v != v:  # NaN
        return b""
    if kind == "int":
        return _INT64_TAG + _varint(int(v))
    return _DOUBLE_TAG + struct.pack("<d", v)


def encode_timestamp(us: int) -> bytes:
    """``google.protobuf.Timestamp`` of epoch microseconds, serialized (zeros omitted)."""
    seconds, micros = divmod(int(us), 1_000_000)
    out = b""
    if seconds:
        out += b"\x08" + _varint(seconds)
    if micros:
        out += b"\x10" + _varint(micros * 1000)
    return out


def _decode(blob: bytes | None) -> float:
    """A serialized ValueProto of a number as a float; NaN for a null or a missing field."""
    if not blob:
        return np.nan
    tag = blob[0]
    if tag == 0x29:
        return struct.unpack_from("<d", blob, 1)[0]
    if tag == 0x20:
        n, shift = 0, 0
        for b in blob[1:]:
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return float(n - (1 << 64) if n >= 1 << 63 else n)
    # Another type (e.g. written by a Feast view with other dtypes): let protobuf say.
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    proto = ValueProto.FromString(blob)
    kind = proto.WhichOneof("val")
    return np.nan if kind is None else float(getattr(proto, kind))


def decode_many(blobs: Sequence[bytes | None]) -> np.ndarray:
    """:func:`_decode` of many values at once, vectorised for the two numeric encodings.

    The values are joined into one byte buffer and read with numpy: a double is its tag
    and 8 little-endian bytes; an int64 is its tag and a varint of at most 10 bytes, the
    sum of each byte's low 7 bits shifted into place. Anything else goes through
    :func:`_decode`.
    """
    blobs = [b or b"" for b in blobs]
    lens = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
    buf = np.frombuffer(b"".join(blobs) + bytes(11), dtype=np.uint8)
    starts = np.cumsum(lens) - lens
    tag = np.where(lens > 0, buf[starts], 0)
    out = np.full(len(blobs), np.nan)
    doubles = (tag == 0x29) & (lens == 9)
    if doubles.any():
        raw = buf[starts[doubles, None] + np.arange(1, 9)]
        out[doubles] = raw.view("<f8")[:, 0]
    ints = (tag == 0x20) & (lens >= 2) & (lens <= 11)
    if ints.any():
        pos = np.arange(1, 11)
        digits = buf[starts[ints, None] + pos].astype(np.uint64)
        digits[pos[None, :] >= lens[ints, None]] = 0  # bytes of the next values
        shifts = np.arange(0, 70, 7, dtype=np.uint64)
        n = ((digits & np.uint64(0x7F)) << shifts).sum(axis=1, dtype=np.uint64)
        out[ints] = n.view(np.int64).astype("float64")
    for i in np.flatnonzero((lens > 0) & ~doubles & ~ints):
        out[i] = _decode(blobs[i])
    return out


def _layout(view: FeatureView) -> list[tuple[str, str]]:
    return view_layout(view, "the direct Redis path")


def view_name(config: RepoConfig, view: FeatureView) -> str:
    """The view's name in Redis field names (Feast's versioned name when enabled)."""
    from feast.infra.online_stores.redis import _versioned_fv_name

    return _versioned_fv_name(view, config)


def redis_keys(config: RepoConfig, keys: Sequence[bytes]) -> list[bytes]:
    """Feast's Redis key of each serialized entity key: the key, then the project."""
    project = config.project.encode("utf-8")
    return [k + project for k in keys]


def client_for(config: RepoConfig) -> redis.Redis:
    """A redis-py client for ``online_store.connection_string`` (``host:port,db=0,...``).

    Raises:
        OnlineStoreUnavailable: the online store is not ``type: redis`` (single node).

    """
    from feast.infra.online_stores.redis import RedisOnlineStore, RedisType

    store_cfg = config.online_store
    if getattr(store_cfg, "type", None) != "redis" or store_cfg.redis_type != RedisType.redis:
        raise OnlineStoreUnavailable(
            "the direct Redis path needs online_store type redis, redis_type redis; "
            f"found {getattr(store_cfg, 'type', None)!r}"
        )
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    # Feast's own parsing of the string, so both clients reach the same server.
    nodes, kwargs = RedisOnlineStore._parse_connection_string(store_cfg.connection_string)
    # A request waits for Redis at most ~2 s, then the service answers "unavailable";
    # redis-py's default retries back off for seconds per call.
    kwargs.setdefault("socket_connect_timeout", 2)
    kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=0.2, base=0.02), 2))
    return redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **kwargs)


class RedisDirectReader:
    """The service's direct read of Feast's Redis online store (no Feast SDK per value).

    Args:
        config: the repo config; its ``online_store`` is Feast's ``redis`` store.
        client: a redis-py client (default: from the connection string).

    """

    def __init__(self, config: RepoConfig, client: Any | None = None) -> None:
        self.config = config
        self.client = client if client is not None else client_for(config)

    def _fields(self, view: FeatureView, features: list[str]) -> list[bytes]:
        known = {f for f, _ in _layout(view)}
        missing = [f for f in features if f not in known]
        if missing:
            raise KeyError(f"feature view {view.name!r} has no features {missing}")
        name = view_name(self.config, view)
        return [_mmh3(f"{name}:{f}") for f in features]

    def read_views(
        self,
        config: RepoConfig,
        plan: Sequence[tuple[FeatureView, list[str]]],
        keys: list[bytes],
    ) -> list[np.ndarray]:
        """Per ``(view, features)`` pair, a (keys x features) float64 matrix, NaN = null.

        Same contract as ``PackedSqliteOnlineStore.read_views``: one state of the store
        for the whole request (one ``MULTI``/``EXEC`` of one ``HMGET`` per contact).

        Raises:
            KeyError: a feature is not in its view.
            OnlineStoreUnavailable: Redis cannot be reached or answered an error.

        """
        import redis

        fields: list[bytes] = []
        spans = []
        for view, features in plan:
            spans.append((len(fields), len(features)))
            fields += self._fields(view, features)
        # MULTI, one HMGET per contact, EXEC: encoded once here (the field list is the
        # same for every contact), then sent and read on one connection.
        asked = b"".join(_bulk(f) for f in fields)
        head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fields))
        parts = [b"*1\r\n$5\r\nMULTI\r\n"]
        for key in redis_keys(config, keys):
            parts += [head, _bulk(key), asked]
        parts.append(b"*1\r\n$4\r\nEXEC\r\n")
        try:
            replies = _send(self.client, b"".join(parts), len(keys) + 2)[-1] if keys else []
        except redis.RedisError as err:
            raise OnlineStoreUnavailable(f"Redis online store cannot be read ({err})") from None
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:  # inside EXEC an error is a reply, e.g. a key that is not a hash
            raise OnlineStoreUnavailable(
                f"Redis online store cannot be read: {len(failed)} of {len(keys)} contacts "
                f"answered an error ({failed[0]})"
            )
        values = decode_many([b for reply in replies for b in reply])
        values = values.reshape(len(keys), len(fields))
        return [values[:, start : start + n] for start, n in spans]

    def read_columns(
        self, config: RepoConfig, view: FeatureView, keys: list[bytes], features: list[str]
    ) -> np.ndarray:
        """:meth:`read_views` of one view."""
        return self.read_views(config, [(view, features)], keys)[0]

    def probe(self, config: RepoConfig, views: Sequence[FeatureView]) -> None:
        """A cheap real round trip (``PING``) and a check that the views fit the layout.

        Raises:
            OnlineStoreUnavailable: Redis cannot be reached.

        """
        import redis

        for view in views:
            _layout(view)
        try:
            self.client.ping()
        except redis.RedisError as err:
            raise OnlineStoreUnavailable(f"Redis online store cannot be reached ({err})") from None


def _bulk(b: bytes) -> bytes:
    """A RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(b), b)


def _field_chunks(field: bytes, column: np.ndarray, kind: str) -> list[bytes]:
    """The RESP text of ``<field> <encoded value>`` for every row of one column."""
    head = _bulk(field)
    n = len(column)
    null = np.isnan(column)
    if kind == "float":
        # Fixed width: "$9", the double's tag and its 8 little-endian bytes.
        prefix = head + b"$9\r\n" + _DOUBLE_TAG
        width = len(prefix) + 8 + 2
        raw = np.empty((n, width), dtype=np.uint8)
        raw[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
        doubles = np.ascontiguousarray(column, dtype="<f8").view(np.uint8).reshape(n, 8)
        raw[:, len(prefix) : len(prefix) + 8] = doubles
        raw[:, -2:] = (13, 10)
        buf = raw.tobytes()
        out = [buf[i : i + width] for i in range(0, n * width, width)]
    else:
        cache: dict[int, bytes] = {}
        out = [
            cache.get(v) or cache.setdefault(v, head + _bulk(_INT64_TAG + _varint(v)))
            for v in np.where(null, 0, column).astype(np.int64).tolist()
        ]
    if null.any():
        empty = head + _bulk(b"")  # a null: Feast's empty ValueProto
        for i in np.flatnonzero(null):
            out[i] = empty
    return out


def _send(client: Any, payload: bytes, commands: int) -> list[Any]:
    """Send pre-encoded commands on one connection; every reply, in order (a pipeline).

    Raises:
        redis.ResponseError: the first error reply, once every reply has been read.
        redis.ConnectionError: the connection failed (it is dropped, not reused).

    """
    import redis

    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([payload])  # a list of chunks: one chunk here
        replies, errors = [], []
        for _ in range(commands):
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as err:  # keep reading: the replies stay in step
                errors.append(err)
        if errors:
            raise errors[0]
        return replies
    except (redis.ConnectionError, redis.TimeoutError):
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def write_frame(
    client: Any,
    config: RepoConfig,
    view: FeatureView,
    frame: pd.DataFrame,
    keys: Sequence[bytes],
    event_column: str,
    chunk_rows: int = WRITE_CHUNK_ROWS,
    ttl_seconds: int | None = None,
) -> int:
    """Bulk-write one view of a snapshot chunk into Feast's Redis layout; returns rows.

    One ``HSET`` per contact (every feature of the view and its ``_ts:<view>`` field),
    encoded straight to Redis' wire protocol and sent in pipelines of ``chunk_rows``
    commands without waiting per command. Unlike Feast's
    stock write, it does not read the stored times first: a full reload replaces every
    contact's values with the snapshot's (the stock path's ``skip_dedup`` mode).

    Raises:
        ValueError: keys and rows differ in number, a column is missing, or an Int64
            value is too large to keep exactly (the rule of the packed store).

    """
    if len(keys) != len(frame):
        raise ValueError(f"write_frame: {len(keys)} keys for {len(frame)} rows")
    layout = _layout(view)
    missing = [f for f, _ in layout if f not in frame.columns]
    if missing:
        raise ValueError(f"write_frame: view {view.name!r} columns missing: {missing}")
    values = frame[[f for f, _ in layout]].to_numpy(dtype="float64", na_value=np.nan)
    ints = [j for j, (_, kind) in enumerate(layout) if kind == "int"]
    if ints:
        big = np.abs(values[:, ints]) >= MAX_EXACT_INT
        if big.any():
            cols = [layout[ints[j]][0] for j in np.flatnonzero(big.any(axis=0))]
            raise ValueError(
                f"Int64 features {cols}: {int(big.any(axis=1).sum())} rows hold values of "
                "2**53 or more, which cannot be kept exactly"
            )
    name = view_name(config, view)
    # As microseconds whatever the column's unit (a Parquet read keeps µs, not ns).
    events = pd.to_datetime(frame[event_column], utc=True).dt.as_unit("us").astype("int64")
    # Each column becomes the RESP text of "<field> <value>" per row, built column-wise
    # (numpy for doubles, a cache for repeated counts and times); a command is then one
    # join per row. redis-py's own packing of 150 arguments per HSET cost more than
    # encoding the values.
    columns = [
        _field_chunks(_mmh3(f"{name}:{f}"), values[:, j], kind)
        for j, (f, kind) in enumerate(layout)
    ]
    ts_head = _bulk(f"_ts:{name}".encode())
    ts_cache: dict[int, bytes] = {}
    stamps = [
        ts_cache.get(us) or ts_cache.setdefault(us, ts_head + _bulk(encode_timestamp(us)))
        for us in events.tolist()
    ]
    header = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * (len(layout) + 1))
    expire = b"" if not ttl_seconds else b"%d" % ttl_seconds
    rkeys = redis_keys(config, keys)
    rows = zip(rkeys, zip(*columns, strict=True), stamps, strict=True)
    for _ in range(0, len(frame), chunk_rows):
        parts, commands = [], 0
        for key, chunks, stamp in islice(rows, chunk_rows):
            parts += [header, _bulk(key), *chunks, stamp]
            commands += 1
            if expire:
                parts += [b"*3\r\n$6\r\nEXPIRE\r\n", _bulk(key), _bulk(expire)]
                commands += 1
        _send(client, b"".join(parts), commands)
    return len(frame)


__all__ = [
    "RedisDirectReader",
    "client_for",
    "encode_timestamp",
    "encode_value",
    "redis_keys",
    "write_frame",
]
