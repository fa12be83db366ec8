"""The step list run identically on every target (etcd direct, proxy, namespaced proxy).

Step kinds (see run.py):
  Ctl(name, args, ...)   one etcdctl call; compares exit code, stdout, stderr.
  Bg(name, procs, actions)  background etcdctl processes (watch, lock,
                          elect): each started in turn and waited for until its output
                          has `lines` lines or contains `until`; then the foreground
                          actions; then everything is stopped (SIGINT, so etcdctl
                          closes its session) and all outputs compared.
  Py(name, fn)           a python3-etcd3 function(client, vars) -> a comparable value.
Arguments are formatted with the target's variables ("{lease1}", "{tmp}"), which
captures (regex on raw stdout, group 1) fill in.

Revisions are compared exactly: every target starts from an empty store and gets
the same writes in the same order, so header revisions must be equal.
Leases use long TTLs (300 s) and are revoked explicitly: an expiry during the run
would delete attached keys at a timing-dependent revision.
"""

import io
import queue
import threading
import time

import grpc
from etcd3.etcdrpc import rpc_pb2

import wire

ALL = ("direct", "proxy", "ns", "tls", "tls-relay")
NO_NS = ("direct", "proxy", "tls", "tls-relay")

REV = r'"revision":(\d+)'
LEASE_HEX = r"lease ([0-9a-f]+) granted"


class Ctl:
    def __init__(self, name, args, stdin=None, capture=None, targets=ALL, sort=False,
                 hash_field=False, timeout=60, sort_stderr=False, drop=()):
        self.name, self.args, self.stdin = name, list(args), stdin
        self.sort_stderr, self.drop = sort_stderr, tuple(drop)
        self.capture = capture or {}
        self.targets, self.sort, self.hash_field, self.timeout = targets, sort, hash_field, timeout


class BgProc:
    """lines: wait for that many output lines before going on (lock/elect holders);
    after_lines / until: wait, after the actions ran, for that many lines / that line."""

    def __init__(self, args, lines=None, until=None, after_lines=None, events=None):
        self.args, self.lines, self.until = list(args), lines, until
        self.after_lines = after_lines
        self.events = events  # -w json watch: wait for this many events; compare events only


class Bg:
    def __init__(self, name, procs, actions=(), targets=ALL):
        self.name, self.procs, self.actions, self.targets = name, procs, list(actions), targets


class Py:
    def __init__(self, name, fn, targets=ALL, user=None):
        self.name, self.fn, self.targets, self.user = name, fn, targets, user


def _txn(compares, success, failure):
    """stdin for `etcdctl txn -i`: three sections, each ended by an empty line."""
    return "".join("".join(line + "\n" for line in sec) + "\n"
                   for sec in (compares, success, failure))


# ---------------------------------------------------------------- python3-etcd3 steps

def _err(e):
    if isinstance(e, grpc.RpcError):
        return {"error": "RpcError", "code": e.code().name, "details": e.details()}
    inner = getattr(e, "__cause__", None) or getattr(e, "__context__", None)
    out = {"error": type(e).__name__, "msg": str(e)}
    if isinstance(inner, grpc.RpcError):
        out.update(code=inner.code().name, details=inner.details())
    return out


def _kv(kv):
    """A protobuf KeyValue, or python-etcd3's KVMetadata (no value), as a dict."""
    out = {"key": kv.key.decode(), "create_revision": kv.create_revision,
           "mod_revision": kv.mod_revision, "version": kv.version,
           "lease": getattr(kv, "lease", getattr(kv, "lease_id", 0))}
    if hasattr(kv, "value"):
        out["value"] = kv.value.decode()
    return out


def _hdr(h):
    return {"cluster_id": h.cluster_id, "member_id": h.member_id, "revision": h.revision,
            "raft_term": h.raft_term}


def py_put_get(c, v):
    c.put("py/a", "1")
    c.put("py/b", "2")
    val, meta = c.get("py/a")
    missing = c.get("py/none")
    return {"val": val.decode(), "meta": _kv(meta), "missing": repr(missing)}


def py_get_prefix(c, v):
    return [(val.decode(), _kv(m)) for val, m in c.get_prefix("py/")] + \
        [(val.decode(), _kv(m)) for val, m in c.get_all()]


def py_delete(c, v):
    c.put("py/c", "3")
    return [c.delete("py/c"), c.delete("py/c"), c.delete_prefix("py/none").deleted]


def py_txn(c, v):
    t = c.transactions
    ok, resp = c.transaction(compare=[t.value("py/b") == "2", t.version("py/a") > 0],
                             success=[t.put("py/t", "yes"), t.get("py/a")],
                             failure=[t.put("py/t", "no")])
    ok2, resp2 = c.transaction(compare=[t.mod("py/a") < 1], success=[t.delete("py/t")],
                               failure=[t.get("py/t")])
    return {"ok": ok, "resp": repr([[(x.decode(), _kv(m)) for x, m in r] if isinstance(r, list)
                                     else type(r).__name__ for r in resp]),
            "ok2": ok2, "resp2": repr([[(x.decode(), _kv(m)) for x, m in r]
                                       if isinstance(r, list) else type(r).__name__
                                       for r in resp2])}


def py_lease(c, v):
    lease = c.lease(300)
    out = {}
    try:
        c.put("py/l", "x", lease=lease)
        info = c.get_lease_info(lease.id)
        out.update({"lease": lease.id, "ttl": lease.ttl, "granted": lease.granted_ttl,
                    "keys": sorted(k.decode() for k in lease.keys),
                    "info": {"ID": info.ID, "grantedTTL": info.grantedTTL,
                             "keys": sorted(k.decode() for k in info.keys)}})
        try:
            # LeaseKeepAlive: one request, then the client half-closes (scenario 37).
            out["refresh"] = [{"ID": r.ID, "TTL": r.TTL} for r in lease.refresh()]
        except Exception as e:
            out["refresh"] = _err(e)
    finally:
        lease.revoke()  # always: an expiry later would move revisions (see module comment)
    out["after"] = repr(c.get("py/l")[0])
    out["ttl_after"] = c.get_lease_info(lease.id).TTL
    return out


def py_watch(c, v):
    q = queue.Queue()
    wid = c.add_watch_prefix_callback("pyw/", q.put)
    c.put("pyw/1", "a")
    c.put("pyw/2", "b")
    c.delete("pyw/1")
    events = []
    deadline = time.monotonic() + 30
    while len(events) < 3 and time.monotonic() < deadline:
        try:
            r = q.get(timeout=1)
        except queue.Empty:
            continue
        if isinstance(r, Exception):
            events.append(_err(r))
            break
        for e in r.events:
            events.append((type(e).__name__, e.key.decode(), e.value.decode(), e.mod_revision))
    c.cancel_watch(wid)
    return events


class RawWatch:
    """A Watch stream with hand-encoded requests (the python3-etcd3 protos predate watch_id,
    progress requests and filters that work): send(fields), responses collected in order."""

    def __init__(self, channel):
        self._out = queue.Queue()
        self.responses = []
        self._cv = threading.Condition()
        fn = channel.stream_stream("/etcdserverpb.Watch/Watch")
        self._call = fn(iter(self._out.get, None), timeout=120)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        try:
            for raw in self._call:
                with self._cv:
                    self.responses.append(wire.watch_response(raw))
                    self._cv.notify_all()
        except grpc.RpcError as e:
            with self._cv:
                if e.code() != grpc.StatusCode.CANCELLED:
                    self.responses.append({"stream_error": wire.rpc_error(e)})
                self._cv.notify_all()

    def send(self, fields):
        self._out.put(wire.encode(fields))

    def wait(self, pred, timeout=30):
        """Waits until pred(responses) holds; False after the deadline."""
        end = time.monotonic() + timeout
        with self._cv:
            while not pred(self.responses):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def close(self):
        self._out.put(None)
        self._call.cancel()
        self._t.join(timeout=10)


def _create(key, **kw):
    f = [(1, key)]
    for num, name in ((2, "range_end"), (3, "start_revision"), (6, "prev_kv"), (7, "watch_id")):
        if name in kw:
            f.append((num, kw[name]))
    for flt in kw.get("filters", []):
        f.append((5, flt))
    return [(1, wire.encode(f))]


def py_raw_watch(c, v):
    """Watch stream semantics through one stream (a proxy may coalesce the watchers):
    filters + prev_kv, history from a past revision, client-chosen and duplicate watch IDs,
    a compacted start revision, an empty range, cancel, progress request (member.md 1.5;
    scenarios 20-24, 26, 27)."""
    kv = c.kvstub
    kv.Put(rpc_pb2.PutRequest(key=b"rw/k", value=b"0"), 10)
    rev0 = kv.Range(rpc_pb2.RangeRequest(key=b"rw/k"), 10).kvs[0].mod_revision
    w = RawWatch(c.channel)
    log = []
    slow = [30]  # after a first missed expectation, later waits are short (already failed)

    def expect(label, pred):
        ok = w.wait(pred, timeout=slow[0])
        if not ok:
            slow[0] = 5
        log.append((label, ok))
    try:
        def created(n):
            return lambda rs: sum(1 for r in rs if r.get("created")) >= n
        creates = [_create(b"rw/k", filters=[0], prev_kv=1),  # NOPUT
                   _create(b"rw/k"),
                   _create(b"rw/k", start_revision=rev0),
                   _create(b"rw/k", watch_id=7),
                   _create(b"rw/k", watch_id=7),  # duplicate
                   _create(b"rw/z", range_end=b"rw/a"),  # empty range
                   _create(b"c", start_revision=int(v["rev_c1"]))]  # compacted
        for i, cr in enumerate(creates):
            w.send(cr)
            expect("created %d" % i, created(i + 1))
        expect("compacted cancel", lambda rs: any(r.get("compact_revision") for r in rs))
        kv.Put(rpc_pb2.PutRequest(key=b"rw/k", value=b"1"), 10)
        kv.Put(rpc_pb2.PutRequest(key=b"rw/k", value=b"2"), 10)
        kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"rw/k"), 10)
        kv.Put(rpc_pb2.PutRequest(key=b"rw/k", value=b"end"), 10)
        want = {0: 1, 1: 4, 2: 5, 7: 4}

        def all_events(rs):
            n = {}
            for r in rs:
                n[r.get("watch_id")] = n.get(r.get("watch_id"), 0) + len(r.get("events", []))
            return all(n.get(k, 0) >= cnt for k, cnt in want.items())
        expect("events", all_events)
        w.send([(2, wire.encode([(1, 7)]))])  # cancel 7
        expect("cancel 7", lambda rs: any(r.get("canceled") and r.get("watch_id") == 7
                                          for r in rs))
        w.send([(3, b"")])  # progress request
        expect("progress", lambda rs: any(r.get("watch_id") == -1 and not r.get("created") and
                                          not r.get("canceled") for r in rs))
    finally:
        w.close()
        kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"rw/k"), 10)
    # Per watch ID: control responses in full; events flattened (norm.py N10: how events are
    # grouped into responses, and so their header revision, depends on timing).
    by_id = {}
    for r in w.responses:
        wid = str(r.get("watch_id"))
        slot = by_id.setdefault(wid, {"control": [], "events": []})
        if r.get("events"):
            slot["events"].extend(r["events"])
        else:
            slot["control"].append(r)
    return {"log": log, "watchers": by_id}


def py_lock(c, v):
    lk = c.lock("pylock", ttl=60)
    got = lk.acquire(timeout=20)
    held = lk.is_acquired()
    lk.release()
    return {"acquired": got, "held": held, "after": lk.is_acquired()}


def py_members(c, v):
    return sorted([{"ID": m.id, "name": m.name, "peer": list(m.peer_urls),
                    "client": list(m.client_urls)} for m in c.members], key=str)


def py_status(c, v):
    s = c.status()
    return {"version": s.version, "leader": {"ID": s.leader.id, "name": s.leader.name},
            "raft_term": s.raft_term, "dbSize": s.db_size}


def py_maintenance(c, v):
    """python3-etcd3's own compaction and Maintenance calls (compaction errors are steps of
    their own; snapshot contents and hashes differ between servers: only their presence is
    compared)."""
    def run(fn):
        try:
            return fn()
        except Exception as e:  # the client's error is the observation
            return _err(e)
    rev = c.put("py/m", "1").header.revision
    out = {"compact": run(lambda: repr(c.compact(rev))),
           "defragment": run(lambda: repr(c.defragment())),
           "hash": run(lambda: type(c.hash()).__name__),
           "alarms": run(lambda: [repr(a) for a in c.list_alarms()]),
           "disarm": run(lambda: [repr(a) for a in c.disarm_alarm()])}
    buf = io.BytesIO()
    out["snapshot"] = run(lambda: c.snapshot(buf) or len(buf.getvalue()) > 0)
    return out


def _raw(call):
    try:
        r = call()
        return {"ok": str(r)}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def py_raw_errors(c, v):
    kv, lease = c.kvstub, c.leasestub
    t = 10
    return {
        "range_empty_key": _raw(lambda: kv.Range(rpc_pb2.RangeRequest(key=b""), t)),
        "range_future": _raw(lambda: kv.Range(
            rpc_pb2.RangeRequest(key=b"k1", revision=10 ** 6), t)),
        "range_compacted": _raw(lambda: kv.Range(
            rpc_pb2.RangeRequest(key=b"c", revision=int(v["rev_c1"])), t)),
        "put_empty_key": _raw(lambda: kv.Put(rpc_pb2.PutRequest(key=b"", value=b"x"), t)),
        "put_unknown_lease": _raw(lambda: kv.Put(
            rpc_pb2.PutRequest(key=b"pl", value=b"x", lease=0x1234), t)),
        "put_ignore_value_missing": _raw(lambda: kv.Put(
            rpc_pb2.PutRequest(key=b"nokey", ignore_value=True), t)),
        "put_value_provided": _raw(lambda: kv.Put(
            rpc_pb2.PutRequest(key=b"k1", value=b"x", ignore_value=True), t)),
        "compact_future": _raw(lambda: kv.Compact(rpc_pb2.CompactionRequest(revision=10 ** 6), t)),
        "compact_compacted": _raw(lambda: kv.Compact(
            rpc_pb2.CompactionRequest(revision=int(v["rev_c1"])), t)),
        "revoke_unknown": _raw(lambda: lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=0x1234), t)),
        "ttl_unknown": _raw(lambda: str(lease.LeaseTimeToLive(
            rpc_pb2.LeaseTimeToLiveRequest(ID=0x1234), t).TTL)),
        "grant_too_large": _raw(lambda: lease.LeaseGrant(
            rpc_pb2.LeaseGrantRequest(TTL=9000000001), t)),
        "txn_duplicate": _raw(lambda: kv.Txn(rpc_pb2.TxnRequest(success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"d", value=b"1")),
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"d", value=b"2"))]), t)),
    }


def py_raw_range(c, v):
    """Scenario 10: full Range/DeleteRange/Txn responses incl. headers (normalized)."""
    kv = c.kvstub
    r = kv.Range(rpc_pb2.RangeRequest(key=b"py/", range_end=b"py0", limit=1,
                                      sort_order=2, sort_target=3), 10)
    r2 = kv.Range(rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True), 10)
    r3 = kv.Range(rpc_pb2.RangeRequest(key=b"py/", range_end=b"py0", min_mod_revision=1,
                                       max_create_revision=10 ** 5, keys_only=True), 10)
    return {"h": _hdr(r.header), "kvs": [_kv(x) for x in r.kvs], "more": r.more,
            "count": r.count, "h2": _hdr(r2.header), "count2": r2.count, "kvs2": len(r2.kvs),
            "kvs3": [_kv(x) for x in r3.kvs]}


def _size_outcome(call):
    """Scenario 18. Up to etcd's request limit (1.5 MiB + 512 KiB gRPC overhead) the answer
    is compared exactly; above it only the code and that it is the transport-level
    "received message larger than max" rejection (norm: the rest of that text, incl. the
    limit, is worded by whichever gRPC implementation rejects: Go in etcd, C++ in keel)."""
    try:
        r = call()
        return {"ok": r.header.revision}
    except grpc.RpcError as e:
        d = e.details() or ""
        if "received message larger than max" in d.lower():
            d = "<received message larger than max>"
        return {"code": e.code().name, "details": d}


def py_message_sizes(c, v):
    kv = c.kvstub
    out = {}
    for label, n in (("1.4MiB", int(1.4 * 2 ** 20)), ("1.6MiB", int(1.6 * 2 ** 20)),
                     ("3MiB", 3 * 2 ** 20), ("5MiB", 5 * 2 ** 20)):
        out[label] = _size_outcome(lambda: kv.Put(
            rpc_pb2.PutRequest(key=b"big", value=b"x" * n), 60))
    r = kv.Range(rpc_pb2.RangeRequest(key=b"big"), 60)
    out["get"] = {"len": len(r.kvs[0].value) if r.kvs else -1, "rev": r.header.revision}
    out["del"] = kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"big"), 60).deleted
    return out


def _resp_ops(resps):
    out = []
    for r in resps:
        which = r.WhichOneof("response")
        if which == "response_range":
            out.append({"range": [_kv(x) for x in r.response_range.kvs],
                        "count": r.response_range.count, "h": _hdr(r.response_range.header)})
        elif which == "response_put":
            out.append({"put_prev": _kv(r.response_put.prev_kv) if r.response_put.HasField(
                "prev_kv") else None, "h": _hdr(r.response_put.header)})
        elif which == "response_delete_range":
            d = r.response_delete_range
            out.append({"deleted": d.deleted, "prev": [_kv(x) for x in d.prev_kvs],
                        "h": _hdr(d.header)})
        elif which == "response_txn":
            out.append({"txn": {"succeeded": r.response_txn.succeeded,
                                "h": _hdr(r.response_txn.header),
                                "responses": _resp_ops(r.response_txn.responses)}})
    return out


def py_raw_txn(c, v):
    """Scenario 10/40: compares with range_end, nested txn, prev_kv inside txns."""
    kv, P = c.kvstub, rpc_pb2
    kv.Put(P.PutRequest(key=b"rt/a", value=b"1"), 10)
    kv.Put(P.PutRequest(key=b"rt/b", value=b"2"), 10)
    inner = P.TxnRequest(
        compare=[P.Compare(key=b"rt/a", target=P.Compare.VALUE, result=P.Compare.EQUAL,
                           value=b"1")],
        success=[P.RequestOp(request_put=P.PutRequest(key=b"rt/n", value=b"nested",
                                                      prev_kv=True)),
                 P.RequestOp(request_range=P.RangeRequest(key=b"rt/", range_end=b"rt0"))],
        failure=[P.RequestOp(request_delete_range=P.DeleteRangeRequest(key=b"rt/a"))])
    outer = P.TxnRequest(
        compare=[P.Compare(key=b"rt/a", range_end=b"rt/c", target=P.Compare.VERSION,
                           result=P.Compare.GREATER, version=0),
                 P.Compare(key=b"rt/", range_end=b"rt0", target=P.Compare.MOD,
                           result=P.Compare.LESS, mod_revision=10 ** 6),
                 P.Compare(key=b"rt/zz", target=P.Compare.CREATE, result=P.Compare.EQUAL,
                           create_revision=0)],
        success=[P.RequestOp(request_txn=inner),
                 P.RequestOp(request_delete_range=P.DeleteRangeRequest(
                     key=b"rt/b", prev_kv=True))],
        failure=[P.RequestOp(request_put=P.PutRequest(key=b"rt/f", value=b"x"))])
    r = kv.Txn(outer, 10)
    r2 = kv.Txn(P.TxnRequest(compare=[P.Compare(key=b"rt/", range_end=b"\x00",
                                                  target=P.Compare.VALUE,
                                                  result=P.Compare.NOT_EQUAL, value=b"q")],
                             success=[P.RequestOp(request_range=P.RangeRequest(
                                 key=b"rt/", range_end=b"\x00", keys_only=True))],
                             failure=[P.RequestOp(request_range=P.RangeRequest(
                                 key=b"rt/", range_end=b"\x00", count_only=True))]), 10)
    kv.DeleteRange(P.DeleteRangeRequest(key=b"rt/", range_end=b"rt0"), 10)
    return {"h": _hdr(r.header), "succeeded": r.succeeded, "responses": _resp_ops(r.responses),
            "h2": _hdr(r2.header), "succeeded2": r2.succeeded,
            "responses2": _resp_ops(r2.responses)}


def _leader_key(m):
    return {"name": wire.one(m, 1, b"").decode(), "key": wire.one(m, 2, b"").decode(),
            "rev": wire.one(m, 3, 0), "lease": wire.one(m, 4, 0)}


def _try(fn):
    try:
        return fn()
    except grpc.RpcError as e:
        return wire.rpc_error(e)


def py_v3lock(c, v):
    """The v3lock gRPC service (what jetcd and gateway users call), not etcdctl's recipe."""
    ch = c.channel
    lease = c.leasestub.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=300), 10).ID
    out = {}
    try:
        r = wire.call(ch, "/v3lockpb.Lock/Lock", [(1, b"vl"), (2, lease)])
        key = wire.one(r, 2, b"")
        out["lock"] = {"header": wire.header(wire.one(r, 1)), "key": key.decode()}
        held = c.kvstub.Range(rpc_pb2.RangeRequest(key=key), 10)
        out["held"] = [_kv(x) for x in held.kvs]
        out["unlock"] = _try(lambda: {"header": wire.header(wire.one(wire.call(
            ch, "/v3lockpb.Lock/Unlock", [(1, key)]), 1))})
        out["after"] = len(c.kvstub.Range(rpc_pb2.RangeRequest(key=key), 10).kvs)
    except grpc.RpcError as e:
        out["error"] = wire.rpc_error(e)
    finally:
        c.leasestub.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease), 10)
    out["lease"] = lease
    return out


def py_v3election(c, v):
    """The v3election gRPC service: Campaign, Leader, Observe, Proclaim, Resign and their
    errors."""
    ch = c.channel
    lease = c.leasestub.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=300), 10).ID
    out = {"lease": lease}
    E = "/v3electionpb.Election/"
    observe = None
    try:
        r = wire.call(ch, E + "Campaign", [(1, b"ve"), (2, lease), (3, b"v1")])
        leader_raw = wire.one(r, 2, b"")
        out["campaign"] = {"header": wire.header(wire.one(r, 1)),
                           "leader": _leader_key(wire.decode(leader_raw))}
        # The candidate key, read back through the KV API of the same endpoint (with a
        # namespace both must agree: scenario 42).
        cand = wire.one(wire.decode(leader_raw), 2)
        held = c.kvstub.Range(rpc_pb2.RangeRequest(key=cand), 10)
        out["held"] = [_kv(x) for x in held.kvs]

        def leader():
            m = wire.call(ch, E + "Leader", [(1, b"ve")])
            kv = wire.decode(wire.one(m, 2, b""))
            return {"header": wire.header(wire.one(m, 1)), "key": wire.one(kv, 1, b"").decode(),
                    "value": wire.one(kv, 5, b"").decode(), "lease": wire.one(kv, 6, 0)}
        out["leader1"] = _try(leader)
        # Observe streams the leader's value: the current one, then each proclaimed one.
        observe = ch.unary_stream(E + "Observe")(wire.encode([(1, b"ve")]), timeout=30)

        def observed():
            m = wire.decode(next(observe))
            kv = wire.key_value(wire.one(m, 2))
            return {"revision": wire.header(wire.one(m, 1))["revision"], "key": kv["key"],
                    "value": kv["value"], "lease": kv["lease"]}
        out["observe1"] = _try(observed)
        out["proclaim"] = _try(lambda: wire.header(wire.one(wire.call(
            ch, E + "Proclaim", [(1, leader_raw), (2, b"v2")]), 1)))
        out["observe2"] = _try(observed)
        out["leader2"] = _try(leader)
        bogus = wire.encode([(1, b"ve"), (2, b"ve/nope"), (3, 1), (4, lease)])
        out["proclaim_not_leader"] = _try(lambda: wire.call(ch, E + "Proclaim",
                                                            [(1, bogus), (2, b"x")]))
        out["resign"] = _try(lambda: wire.header(wire.one(wire.call(
            ch, E + "Resign", [(1, leader_raw)]), 1)))
        out["leader3"] = _try(leader)
        out["proclaim_no_leader_field"] = _try(lambda: wire.call(ch, E + "Proclaim",
                                                                 [(2, b"x")]))
    except grpc.RpcError as e:
        out["error"] = wire.rpc_error(e)
    finally:
        if observe is not None:
            observe.cancel()
        c.leasestub.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease), 10)
    return out


def py_auth_denied(c, v):
    return {"get_denied": _raw(lambda: c.kvstub.Range(rpc_pb2.RangeRequest(key=b"k2"), 10,
                                                      metadata=c.metadata)),
            "get_ok": _raw(lambda: len(c.kvstub.Range(rpc_pb2.RangeRequest(key=b"k1"), 10,
                                                      metadata=c.metadata).kvs))}


# ---------------------------------------------------------------- the step list

def steps():
    s = []
    a = s.append
    # KV: put / get
    a(Ctl("put", ["put", "k1", "v1"]))
    a(Ctl("put-json", ["-w", "json", "put", "k2", "v2"], capture={"rev_k2": REV}))
    for k, val in (("k3", "v3"), ("a/1", "x"), ("a/2", "y"), ("a/3", "z"), ("b", "1"),
                   ("y1", "1"), ("y2", "2"), ("z1", "3")):
        a(Ctl("put-" + k, ["put", k, val]))
    a(Ctl("put-prev-kv-json", ["-w", "json", "put", "--prev-kv", "k1", "v1b"]))
    a(Ctl("put-prev-kv", ["put", "--prev-kv", "k1", "v1c"]))
    a(Ctl("put-prev-kv-new-key", ["put", "--prev-kv", "k4", "v4"]))
    a(Ctl("get", ["get", "k1"]))
    a(Ctl("get-json", ["-w", "json", "get", "k1"]))
    a(Ctl("get-missing", ["get", "nokey"]))
    a(Ctl("get-prefix", ["get", "--prefix", "a/"]))
    a(Ctl("get-prefix-limit-json", ["-w", "json", "get", "--prefix", "a/", "--limit", "2"]))
    a(Ctl("get-from-key", ["get", "--from-key", "b"]))
    a(Ctl("get-all-keys-only", ["get", "--prefix", "", "--keys-only"]))
    a(Ctl("get-sort-mod-desc", ["get", "--prefix", "a/", "--sort-by=MODIFY", "--order=DESCEND"]))
    a(Ctl("get-sort-version", ["get", "--prefix", "", "--sort-by=VERSION", "--order=ASCEND",
                               "--print-value-only"]))
    a(Ctl("get-sort-create-desc-json", ["-w", "json", "get", "--from-key", "a",
                                        "--sort-by=CREATE", "--order=DESCEND", "--limit=3"]))
    a(Ctl("get-sort-value", ["get", "--prefix", "", "--sort-by=VALUE", "--order=DESCEND"]))
    a(Ctl("get-prefix-count-only-json", ["-w", "json", "get", "--prefix", "a/", "--count-only"]))
    a(Ctl("get-range", ["get", "a/1", "a/3"]))
    a(Ctl("get-range-empty", ["get", "k1", "a/3"]))
    a(Ctl("get-rev", ["get", "k1", "--rev={rev_k2}"]))
    a(Ctl("get-rev-json", ["-w", "json", "get", "--prefix", "", "--rev={rev_k2}"]))
    a(Ctl("get-serializable", ["get", "--consistency=s", "k1"]))
    a(Ctl("get-fields", ["-w", "fields", "get", "k2"]))
    # put flags and errors
    a(Ctl("put-ignore-value", ["-w", "json", "put", "--ignore-value", "k2"]))
    a(Ctl("put-ignore-value-missing", ["put", "--ignore-value", "nokey"]))
    a(Ctl("put-ignore-lease", ["put", "--ignore-lease", "k2", "v2b"]))
    a(Ctl("put-ignore-lease-missing", ["put", "--ignore-lease", "nokey", "v"]))
    a(Ctl("err-put-ignore-lease-with-lease", ["put", "k2", "v", "--ignore-lease",
                                              "--lease=1234"]))
    a(Ctl("err-put-empty-key", ["put", "", "x"]))
    a(Ctl("err-get-empty-key", ["get", ""]))
    a(Ctl("err-get-future-rev", ["get", "k1", "--rev=100000"]))
    a(Ctl("err-lease-revoke-unknown", ["lease", "revoke", "1234"]))
    a(Ctl("err-put-unknown-lease", ["put", "k9", "v", "--lease=1234"]))
    a(Ctl("err-del-empty-key", ["del", ""]))
    # delete
    a(Ctl("del", ["del", "k3"]))
    a(Ctl("del-missing", ["del", "k3"]))
    a(Ctl("del-prev-kv-json", ["-w", "json", "del", "--prev-kv", "a/3"]))
    a(Ctl("del-prefix-prev-kv", ["del", "--prefix", "--prev-kv", "a/"]))
    a(Ctl("del-from-key", ["del", "--from-key", "y"]))
    a(Ctl("get-after-del", ["get", "--prefix", ""]))
    # txn
    a(Ctl("txn-success", ["txn", "-i"], stdin=_txn(
        ['value("k1") = "v1c"', 'version("k1") = "3"', 'create("k2") > "0"',
         'mod("k2") < "1000"'], ["put t1 yes", "get k1"], ["put t1 no"])))
    a(Ctl("txn-failure-json", ["-w", "json", "txn", "-i"], stdin=_txn(
        ['value("k1") = "nope"'], ["put t1 yes"], ["put t2 no", "get t1", "del t1"])))
    a(Ctl("txn-missing-key-compare", ["txn", "-i"], stdin=_txn(
        ['create("missing") = "0"', 'value("k4") != "x"'], ["put t3 1"], ["put t3 2"])))
    a(Ctl("txn-err-duplicate", ["txn", "-i"], stdin=_txn(
        ['value("k1") = "v1c"'], ["put d 1", "put d 2"], [])))
    a(Ctl("txn-err-bad-compare", ["txn", "-i"], stdin=_txn(
        ['foo("k1") = "1"'], ["put d 1"], [])))
    # watch (background; --rev makes the replay independent of when the watch starts)
    a(Ctl("watch-start-rev", ["-w", "json", "put", "w/0", "start"], capture={"rev_w": REV}))
    a(Bg("watch-prefix-rev", [BgProc(["watch", "--prefix", "w/", "--rev={rev_w}"], until="end")],
         actions=[["put", "w/1", "a"], ["put", "w/2", "b"], ["del", "w/1"],
                  ["txn", "-i", _txn([], ["put w/3 c", "put w/4 d"], [])],
                  ["put", "w/zz", "end"]]))
    a(Bg("watch-prev-kv", [BgProc(["watch", "--prev-kv", "w/2", "--rev={rev_w}"], until="end2")],
         actions=[["put", "w/2", "b2"], ["del", "w/2"], ["put", "w/2", "end2"]]))
    a(Bg("watch-json", [BgProc(["-w", "json", "watch", "w/5", "--rev={rev_w}"], events=2)],
         actions=[["put", "w/5", "x"], ["del", "w/5"]]))
    # HashKV over the whole history: same keys, values, revisions, no lease attached yet.
    a(Ctl("endpoint-hashkv-json", ["-w", "json", "endpoint", "hashkv"]))
    # lease
    a(Ctl("lease-grant", ["lease", "grant", "300"], capture={"lease1": LEASE_HEX}))
    a(Ctl("lease-grant-json", ["-w", "json", "lease", "grant", "300"]))
    a(Ctl("lease-put", ["put", "lk", "v", "--lease={lease1}"]))
    a(Ctl("lease-put2", ["put", "lk2", "v", "--lease={lease1}"]))
    a(Ctl("lease-get-json", ["-w", "json", "get", "lk"]))
    a(Ctl("lease-timetolive", ["lease", "timetolive", "{lease1}", "--keys"]))
    a(Ctl("lease-timetolive-json", ["-w", "json", "lease", "timetolive", "{lease1}", "--keys"]))
    a(Ctl("lease-keepalive-once", ["lease", "keep-alive", "--once", "{lease1}"]))
    a(Ctl("lease-list", ["lease", "list"], sort=True))
    a(Ctl("lease-revoke", ["lease", "revoke", "{lease1}"]))
    a(Ctl("lease-get-after-revoke", ["get", "--prefix", "lk"]))
    a(Ctl("lease-timetolive-revoked", ["lease", "timetolive", "{lease1}"]))
    a(Ctl("lease-keepalive-revoked", ["lease", "keep-alive", "--once", "{lease1}"]))
    # compaction
    a(Ctl("compact-put1", ["-w", "json", "put", "c", "v1"], capture={"rev_c1": REV}))
    a(Ctl("compact-put2", ["put", "c", "v2"]))
    a(Ctl("compact-put3", ["-w", "json", "put", "c", "v3"], capture={"rev_c3": REV}))
    a(Ctl("compact", ["compaction", "{rev_c3}"]))
    a(Ctl("err-get-compacted", ["get", "c", "--rev={rev_c1}"]))
    a(Ctl("err-compact-again", ["compaction", "{rev_c1}"]))
    a(Ctl("get-at-compacted-rev", ["get", "c", "--rev={rev_c3}"]))
    a(Ctl("err-watch-compacted", ["watch", "c", "--rev={rev_c1}"], timeout=30))
    # lock and election (client-side recipes over KV: namespaced by the proxy)
    a(Ctl("lock-exec", ["lock", "L", "--", "echo", "locked"]))
    a(Bg("lock-hold", [BgProc(["lock", "L2"], lines=1)], actions=[["get", "--prefix", "L2"]]))
    a(Bg("elect", [BgProc(["elect", "E", "v1"], lines=2), BgProc(["elect", "-l", "E"], lines=2)],
         actions=[["get", "--prefix", "E/", "--print-value-only"]]))
    a(Ctl("lock-elect-keys-gone", ["get", "--prefix", "L"]))
    # cluster and maintenance
    a(Ctl("member-list-json", ["-w", "json", "member", "list"]))
    a(Ctl("member-list", ["member", "list"]))
    a(Ctl("endpoint-status-json", ["-w", "json", "endpoint", "status"]))
    # lock/elect keys carried session leases (different IDs per server, norm.py N7).
    a(Ctl("endpoint-hashkv-leases-json", ["-w", "json", "endpoint", "hashkv"], hash_field=True))
    a(Ctl("err-hashkv-at-compacted-rev", ["-w", "json", "endpoint", "hashkv", "--rev={rev_c3}"]))
    a(Ctl("endpoint-health", ["endpoint", "health"]))
    a(Ctl("defrag", ["defrag"]))
    a(Ctl("alarm-list", ["alarm", "list"]))
    a(Ctl("alarm-list-json", ["-w", "json", "alarm", "list"]))
    a(Ctl("snapshot-save", ["snapshot", "save", "{tmp}/snap.db"], sort_stderr=True))
    a(Ctl("snapshot-status", ["-w", "json", "snapshot", "status", "{tmp}/snap.db"],
          hash_field=True))
    # python3-etcd3
    a(Py("py-put-get", py_put_get))
    a(Py("py-get-prefix", py_get_prefix))
    a(Py("py-delete", py_delete))
    a(Py("py-txn", py_txn))
    a(Py("py-raw-range", py_raw_range))
    a(Py("py-raw-txn", py_raw_txn))
    a(Py("py-lease", py_lease))
    a(Py("py-watch", py_watch))
    a(Py("py-raw-watch", py_raw_watch))
    a(Py("py-lock", py_lock))
    a(Py("py-v3lock", py_v3lock))
    a(Py("py-v3election", py_v3election))
    a(Py("py-members", py_members))
    a(Py("py-status", py_status))
    a(Py("py-maintenance", py_maintenance))
    a(Py("py-raw-errors", py_raw_errors))
    a(Py("py-message-sizes", py_message_sizes))
    # membership changes pass through (a learner that never starts: it has no vote, so the
    # single-member cluster keeps its quorum; its peer URL is a dead 127.0.0.1 port).
    a(Ctl("member-add-learner", ["member", "add", "learner1", "--learner",
                                 "--peer-urls=http://127.0.0.1:1"],
          capture={"learner": r"Member +([0-9a-f]+) added"}))
    a(Ctl("member-list-with-learner", ["-w", "json", "member", "list"]))
    a(Ctl("err-member-promote-unsynced", ["member", "promote", "{learner}"]))
    a(Ctl("member-update", ["member", "update", "{learner}", "--peer-urls=http://127.0.0.1:2"]))
    a(Ctl("member-remove", ["member", "remove", "{learner}"]))
    a(Ctl("err-member-remove-unknown", ["member", "remove", "1234"]))
    a(Ctl("member-list-after-remove", ["member", "list"]))
    # auth (last: raft index moves; not on the namespaced target because role permission
    # key ranges are not namespaced (proxy.md 2.9), so the same grants cover other keys)
    root = "--user=root:rootpw"
    a(Ctl("auth-user-root", ["user", "add", "root:rootpw"], targets=NO_NS))
    a(Ctl("auth-role-add", ["role", "add", "r1"], targets=NO_NS))
    a(Ctl("auth-role-grant", ["role", "grant-permission", "r1", "read", "k1"], targets=NO_NS))
    a(Ctl("auth-role-grant-prefix", ["role", "grant-permission", "--prefix", "r1", "readwrite",
                                     "y/"], targets=NO_NS))
    a(Ctl("auth-user-add", ["user", "add", "u1:u1pw"], targets=NO_NS))
    a(Ctl("auth-user-grant", ["user", "grant-role", "u1", "r1"], targets=NO_NS))
    a(Ctl("auth-enable", ["auth", "enable"], targets=NO_NS))
    a(Ctl("auth-get-allowed", ["get", "k1", "--user=u1:u1pw"], targets=NO_NS))
    a(Ctl("auth-put-allowed-prefix", ["put", "y/1", "v", "--user=u1:u1pw"], targets=NO_NS))
    a(Ctl("auth-get-denied", ["get", "k2", "--user=u1:u1pw"], targets=NO_NS))
    a(Ctl("auth-put-denied", ["put", "k1", "x", "--user=u1:u1pw"], targets=NO_NS))
    a(Ctl("auth-no-user", ["get", "k1"], targets=NO_NS))
    a(Ctl("auth-bad-password", ["get", "k1", "--user=u1:wrong"], targets=NO_NS))
    a(Ctl("auth-root-get", ["get", "k2", root], targets=NO_NS))
    a(Ctl("auth-role-get", ["role", "get", "r1", root], targets=NO_NS))
    a(Ctl("auth-user-list", ["user", "list", root], targets=NO_NS))
    a(Ctl("auth-watch-denied", ["watch", "k2", "--user=u1:u1pw"], targets=NO_NS, timeout=30))
    a(Ctl("auth-snapshot-denied", ["snapshot", "save", "{tmp}/denied.db", "--user=u1:u1pw"],
          targets=NO_NS, sort_stderr=True))
    a(Ctl("auth-defrag-denied", ["defrag", "--user=u1:u1pw"], targets=NO_NS))
    a(Ctl("auth-status-allowed", ["-w", "json", "endpoint", "status", "--user=u1:u1pw"],
          targets=NO_NS, drop=("raftIndex", "raftAppliedIndex")))  # norm.py N14
    a(Ctl("auth-lease-grant-allowed", ["lease", "grant", "300", "--user=u1:u1pw"],
          capture={"lease_auth": LEASE_HEX}, targets=NO_NS))
    a(Ctl("auth-put-with-lease", ["put", "y/2", "v", "--lease={lease_auth}", "--user=u1:u1pw"],
          targets=NO_NS))
    a(Ctl("auth-lease-revoke", ["lease", "revoke", "{lease_auth}", "--user=u1:u1pw"],
          targets=NO_NS))
    a(Py("py-auth-denied", py_auth_denied, targets=NO_NS, user=("u1", "u1pw")))
    a(Ctl("auth-disable", ["auth", "disable", root], targets=NO_NS))
    a(Ctl("auth-after-disable", ["get", "k1"], targets=NO_NS))
    return s
