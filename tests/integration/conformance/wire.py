"""Minimal protobuf wire encoding for the v3lock/v3election services, which python3-etcd3
does not ship stubs for (field numbers: member.md 1.10)."""

import grpc


def _varint(n):
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def encode(fields):
    """fields: [(number, int | bytes)] -> message bytes (ints as varint, bytes length-delimited)."""
    out = b""
    for num, v in fields:
        if isinstance(v, int):
            out += _varint(num << 3) + _varint(v)
        else:
            out += _varint(num << 3 | 2) + _varint(len(v)) + v
    return out


def _read_varint(buf, i):
    v, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def decode(buf):
    """message bytes -> {number: [int | bytes]} (varint and length-delimited fields)."""
    out, i = {}, 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _read_varint(buf, i)
        elif wt == 2:
            ln, i = _read_varint(buf, i)
            v, i = bytes(buf[i:i + ln]), i + ln
        elif wt == 1:
            v, i = bytes(buf[i:i + 8]), i + 8
        elif wt == 5:
            v, i = bytes(buf[i:i + 4]), i + 4
        else:
            raise ValueError("unsupported wire type %d" % wt)
        out.setdefault(field, []).append(v)
    return out


def one(msg, num, default=None):
    return msg.get(num, [default])[0]


def header(buf):
    """etcdserverpb.ResponseHeader bytes -> dict."""
    h = decode(buf or b"")
    return {"cluster_id": one(h, 1, 0), "member_id": one(h, 2, 0), "revision": one(h, 3, 0),
            "raft_term": one(h, 4, 0)}


def call(channel, method, fields, timeout=30):
    """Unary call with a hand-encoded request; returns the decoded response."""
    fn = channel.unary_unary(method)
    return decode(fn(encode(fields), timeout=timeout))


def rpc_error(e):
    if isinstance(e, grpc.RpcError):
        return {"code": e.code().name, "details": e.details()}
    raise e


def signed(v):
    """A decoded varint as int64."""
    return v - (1 << 64) if v >= (1 << 63) else v


def key_value(buf):
    """mvccpb.KeyValue bytes -> dict."""
    m = decode(buf or b"")
    return {"key": one(m, 1, b"").decode("latin-1"), "create_revision": one(m, 2, 0),
            "mod_revision": one(m, 3, 0), "version": one(m, 4, 0),
            "value": one(m, 5, b"").decode("latin-1"), "lease": one(m, 6, 0)}


def watch_response(buf):
    """etcdserverpb.WatchResponse bytes -> dict (events as dicts)."""
    m = decode(buf)
    events = []
    for e in m.get(11, []):
        ev = decode(e)
        d = {"type": "DELETE" if one(ev, 1, 0) == 1 else "PUT", "kv": key_value(one(ev, 2))}
        if 3 in ev:
            d["prev_kv"] = key_value(one(ev, 3))
        events.append(d)
    return {"header": header(one(m, 1)), "watch_id": signed(one(m, 2, 0)),
            "created": bool(one(m, 3, 0)), "canceled": bool(one(m, 4, 0)),
            "compact_revision": one(m, 5, 0), "cancel_reason": one(m, 6, b"").decode(),
            "fragment": bool(one(m, 7, 0)), "events": events}
