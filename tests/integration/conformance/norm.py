"""Normalization of client output before direct and proxied runs are compared.

Only what MUST differ between two servers that received the identical request
sequence is normalized. Every rule, with its reason:

N1 cluster_id, member_id, leader, member IDs: derived from each server's peer URLs
   (different ports) -> replaced by CLUSTER#n / MEMBER#n in order of appearance.
N2 lease IDs: generated from the member ID and a clock -> LEASE#n in order of
   appearance (the same lease keeps its token in decimal JSON and in hex text,
   e.g. lock keys "L/<hex>"). Lease list order (by remaining TTL) -> sorted.
N3 addresses: each server's client/peer URL and the endpoint the client dialled
   -> <member-client-url>, <member-peer-url>, <endpoint>; temp paths -> <tmp>.
N4 timings: "took" (health), log timestamps ("ts"), log "caller"/"target"
   (client-side UUID and dialled address), snapshot log "size"/"path" -> dropped.
N5 remaining TTLs (timetolive "ttl", "remaining(Ns)") depend on wall-clock time
   between grant and query -> "<remaining>" when positive (the sign is kept:
   -1 "already expired" must match).
N6 db sizes (dbSize, dbSizeInUse, snapshot totalSize): bbolt page allocation depends
   on batch commit timing (100 ms backend batch interval) -> "<size>".
N7 hashes: only for the namespaced target (every backend key there carries the
   "ns/" prefix, so Hash/HashKV/snapshot hashes must differ); also the snapshot
   file hash (it covers bbolt pages incl. the member's meta bucket). HashKV between
   the direct and the plain proxied server is NOT normalized: same keys, same
   revisions -> same hash, as long as no key in the hashed history carries a lease (the
   stored KeyValue includes the lease ID, N2); the hashkv step after lock/elect (session
   leases) therefore normalizes its hash for every target.
N8 lease TimeToLive keys: etcd lists a lease's keys in Go map order -> sorted.
N9 requests above etcd's gRPC receive limit (scenario 18, steps.py_message_sizes): the
   code must match, the text only in that it is the transport's "received message larger
   than max" (worded by the rejecting gRPC implementation: Go in etcd, C++ in keel).
N11 member list order (and `member add`'s ETCD_INITIAL_CLUSTER list): by member ID, which
   differs per server (N1) -> sorted.
N10 `etcdctl -w json watch` from a past revision: how events are grouped into responses
   (and so each response's header revision) depends on whether the watcher was still
   catching up when the next write landed (historical batches hold many revisions) ->
   only the flattened event list is compared.
N12 `etcdctl member add/update/remove` print the cluster ID with %16x: IDs below 2^60 get
   space padding -> the padding goes with the ID.
N13 `etcdctl snapshot save` logs from two goroutines (stream reader, snapshot writer), so
   its stderr lines come in either order -> sorted for those steps.
N14 raft indexes once auth is on: every `etcdctl --user` run authenticates through raft, and
   clientv3 authenticates again (one more entry) when its token turned stale meanwhile,
   which is timing-dependent -> raftIndex/raftAppliedIndex dropped in the auth section.
Not normalized, on purpose: header revisions, raft_term, raftIndex/raftAppliedIndex and
raftTerm in endpoint status (fresh single-member servers that get the same proposals
have the same raft log; a proxy adds no entries: linearizable reads use ReadIndex, lease
keep-alives are not proposals), compact_revision, versions, create/mod revisions, lease
TTLs as granted, every error text and gRPC code.
"""

import json
import re

HEX_ID = re.compile(r"( *)\b([0-9a-f]{12,16})\b")
MEMBER_HEX = re.compile(r"\bMember +([0-9a-f]{12,16})\b")
REMAINING = re.compile(r"remaining\((\d+)s\)")
TOOK = re.compile(r"took = \S+")
FIELDS_ID = re.compile(r'^"(ClusterID|MemberID|Lease|ID)" : (\d+)$')
INITIAL_CLUSTER = re.compile(r'ETCD_INITIAL_CLUSTER="([^"]*)"')
ATTACHED = re.compile(r"attached keys\(\[(.*?)\]\)")


class Normalizer:
    """Per-target normalization state (ID maps persist across steps)."""

    def __init__(self, replacements, normalize_hashes=False):
        # replacements: list of (literal, token), applied in order (longest first).
        self.replacements = sorted(replacements, key=lambda r: -len(r[0]))
        self.normalize_hashes = normalize_hashes
        self.ids = {}  # int value -> token
        self.counts = {"CLUSTER": 0, "MEMBER": 0, "LEASE": 0}
        self._drop = set()

    def token(self, value, kind):
        value = int(value)
        if value == 0:
            return 0
        if value not in self.ids:
            self.counts[kind] += 1
            self.ids[value] = "%s#%d" % (kind, self.counts[kind])
        return self.ids[value]

    def text(self, s):
        for lit, tok in self.replacements:
            s = s.replace(lit, tok)
        for m in MEMBER_HEX.finditer(s):  # "Member <id> added to cluster <id>"
            self.token(int(m.group(1), 16), "MEMBER")
        s = HEX_ID.sub(self._hex_match, s)
        s = REMAINING.sub(lambda m: "remaining(<remaining>)" if int(m.group(1)) > 0
                          else m.group(0), s)
        s = TOOK.sub("took = <took>", s)
        s = INITIAL_CLUSTER.sub(lambda m: 'ETCD_INITIAL_CLUSTER="%s"' % ",".join(
            sorted(m.group(1).split(","))), s)  # N11
        s = ATTACHED.sub(lambda m: "attached keys([%s])" % " ".join(sorted(m.group(1).split())),
                         s)
        return s

    def _hex_match(self, m):
        # N12: etcdctl prints some IDs with %16x, so an ID with a leading zero nibble gets a
        # padding space more; drop the padding with the ID.
        spaces, h = m.group(1), m.group(2)
        pad = 16 - len(h)
        if len(spaces) > pad:
            spaces = spaces[:len(spaces) - pad]
        return spaces + str(self._hex(h))

    def _hex(self, h):
        v = int(h, 16)
        if v in self.ids:
            return self.ids[v]
        # An unseen 12-16 digit hex word in etcdctl text is a lease ID (lock/elect keys,
        # lease grant) or a member ID (member list); member IDs are registered by
        # register_members() before text output is normalized.
        return self.token(v, "LEASE")

    def register_members(self, cluster_id=None, member_ids=()):
        if cluster_id:
            self.token(cluster_id, "CLUSTER")
        for m in member_ids:
            self.token(m, "MEMBER")

    def json_value(self, obj, key=None, in_members=False):
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if k in ("ts", "caller", "target", "took", "size", "path") or \
                        k in self._drop:
                    continue
                if k == "members":
                    # N11: etcd lists members by ID, and IDs differ per server -> sorted.
                    out[k] = sorted(self.json_value(v, k, in_members=True),
                                    key=lambda m: json.dumps(m, sort_keys=True))
                else:
                    out[k] = self.json_value(v, k, in_members)
            return out
        if isinstance(obj, list):
            out = [self.json_value(v, key, in_members) for v in obj]
            if key == "keys" and all(isinstance(v, str) for v in out):
                out.sort()  # N8
            return out
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, bool) or not isinstance(obj, (int, float)):
            return obj
        if key == "cluster_id":
            return self.token(obj, "CLUSTER")
        if key in ("member_id", "leader"):
            return self.token(obj, "MEMBER")
        if key == "ID" and in_members:
            return self.token(obj, "MEMBER")
        if key in ("ID", "id", "lease"):
            return self.token(obj, "LEASE")
        if key == "ttl" and obj > 0:
            return "<remaining>"
        if key in ("dbSize", "dbSizeInUse", "totalSize"):
            return "<size>"
        if key == "hash" and self.normalize_hashes:
            return "<hash>"
        return obj

    def output(self, s, sort_lines=False, hash_field=False, drop=()):
        """Normalizes etcdctl stdout: JSON documents per line or as a whole, else text.
        drop: JSON keys removed wherever they occur (N14)."""
        self._drop = set(drop)
        try:
            return self._output(s, sort_lines, hash_field)
        finally:
            self._drop = set()

    def _output(self, s, sort_lines, hash_field):
        s = s.strip("\n")
        if not s:
            return ""
        try:
            return json.dumps(self._json(json.loads(s), hash_field), sort_keys=True)
        except ValueError:
            pass
        lines = []
        for line in s.split("\n"):
            try:
                lines.append(json.dumps(self._json(json.loads(line), hash_field),
                                        sort_keys=True))
            except ValueError:
                m = FIELDS_ID.match(line)
                if m:  # "-w fields" prints IDs in decimal
                    kind = {"ClusterID": "CLUSTER", "MemberID": "MEMBER"}.get(m.group(1), "LEASE")
                    line = '"%s" : %s' % (m.group(1), self.token(m.group(2), kind))
                lines.append(self.text(line))
        if sort_lines:
            lines.sort()
        return "\n".join(lines)

    def _json(self, obj, hash_field):
        saved = self.normalize_hashes
        self.normalize_hashes = saved or hash_field
        try:
            return self.json_value(obj)
        finally:
            self.normalize_hashes = saved

    def stderr(self, s, sort_lines=False):
        """Keeps each clientv3 log line's level/msg/attempt/error; other lines as text."""
        out = []
        for line in s.strip("\n").split("\n"):
            if not line:
                continue
            try:
                d = json.loads(line)
            except ValueError:
                out.append(self.text(line))
                continue
            if isinstance(d, dict):
                keep = {k: d[k] for k in ("level", "msg", "attempt", "error") if k in d}
                out.append(json.dumps(self.json_value(keep), sort_keys=True))
            else:
                out.append(self.text(line))
        if sort_lines:  # N13
            out.sort()
        return "\n".join(out)
