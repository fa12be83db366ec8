"""Process management for the conformance suite: etcd members, proxies, etcdctl.

Every process is started in its own session (process group) and registered in
PROCS; kill_all() (called from try/finally, atexit and SIGTERM/SIGINT) kills
every group still alive. Ports are ephemeral 127.0.0.1 ports, data lives in one
temporary directory per run. Nothing here sleeps for a fixed time: waits poll
with a deadline (wait_for).
"""

import atexit
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"

PROCS = []  # every Proc ever started, for kill_all()

# Extra etcdctl flags per --endpoints value: the TLS client flags of a TLS endpoint.
CTL_FLAGS = {}


def _dying_with_parent(argv):
    """argv under setpriv(1), which makes the child SIGKILLed when the harness dies (even
    by SIGKILL, e.g. a ctest timeout), since each child runs in its own session and would
    survive otherwise. Not a preexec_fn: Python code run between fork and exec can deadlock
    on a lock another thread held at the fork (it did once)."""
    return ["/usr/bin/setpriv", "--pdeathsig", "KILL", "--"] + list(argv)


_PROCS_LOCK = threading.Lock()


def free_port():
    """An ephemeral 127.0.0.1 port that was free when asked."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, what):
    """Polls pred() every 50 ms until it is truthy; raises TimeoutError after timeout s."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise TimeoutError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(0.05)


def can_connect(addr):
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


class Proc:
    """A background process in its own process group, output to a log file."""

    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(_dying_with_parent(argv), stdout=self._log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                      start_new_session=True)
        with _PROCS_LOCK:
            PROCS.append(self)

    def alive(self):
        return self.popen.poll() is None

    def stop(self, sig=signal.SIGKILL, timeout=20):
        """Signals the whole group, waits for the leader; escalates to SIGKILL."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait()
        else:
            # The leader is gone; its children (if any) may not be.
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()

    def tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def kill_all():
    with _PROCS_LOCK:
        procs = list(PROCS)
    for p in procs:
        try:
            p.stop(signal.SIGKILL, timeout=10)
        except Exception:  # cleanup must go on for the others
            pass


class TmpRoot:
    """The run's temporary directory, removed at exit."""

    path = None

    @classmethod
    def get(cls):
        if cls.path is None:
            cls.path = tempfile.mkdtemp(prefix="keel-conformance.")
        return cls.path

    @classmethod
    def remove(cls):
        if cls.path and os.environ.get("KEEL_CONFORMANCE_KEEP_TMP") != "1":
            shutil.rmtree(cls.path, ignore_errors=True)


def _cleanup():
    kill_all()
    TmpRoot.remove()


atexit.register(_cleanup)


def _on_signal(signum, _frame):
    _cleanup()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def ctl_env():
    env = dict(os.environ)
    env["ETCDCTL_API"] = "3"
    for k in list(env):
        if k.startswith("ETCDCTL_") and k != "ETCDCTL_API":
            del env[k]
    return env


def ctl_argv(endpoints, args):
    return [ETCDCTL, "--endpoints=" + endpoints] + CTL_FLAGS.get(endpoints, []) + list(args)


def etcdctl(endpoints, args, stdin=None, timeout=60):
    """Runs etcdctl against endpoints; returns (rc, stdout, stderr) as text."""
    argv = ctl_argv(endpoints, args)
    try:
        r = subprocess.run(argv, input=stdin.encode() if stdin is not None else None,
                           capture_output=True, env=ctl_env(), timeout=timeout,
                           stdin=None if stdin is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return (-1, (e.stdout or b"").decode("utf-8", "replace"),
                "harness: etcdctl timed out after %ss" % timeout)
    return (r.returncode, r.stdout.decode("utf-8", "replace"),
            r.stderr.decode("utf-8", "replace"))


def make_certs():
    """A CA and one certificate it signed for 127.0.0.1 that serves and authenticates clients
    (etcd, the proxy and the clients share it); returns their paths."""
    d = os.path.join(TmpRoot.get(), "certs")
    os.makedirs(d, exist_ok=True)
    c = {k: os.path.join(d, k) for k in ("ca.pem", "ca.key", "cert.pem", "cert.key")}
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth, clientAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for argv in (["req", "-x509"] + ec + ["-days", "2", "-subj", "/CN=keel-conformance-ca",
                                          "-keyout", c["ca.key"], "-out", c["ca.pem"]],
                 ["req"] + ec + ["-subj", "/CN=127.0.0.1", "-keyout", c["cert.key"],
                                 "-out", os.path.join(d, "cert.csr")],
                 ["x509", "-req", "-in", os.path.join(d, "cert.csr"), "-CA", c["ca.pem"],
                  "-CAkey", c["ca.key"], "-CAcreateserial", "-days", "2", "-extfile", ext,
                  "-out", c["cert.pem"]]):
        r = subprocess.run(["openssl"] + argv, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError("openssl %s: %s" % (argv[0], r.stderr.decode()))
    return c


class Member:
    """One etcd 3.4 member (part of a cluster started with the same initial_cluster).
    certs (make_certs()): clients reach it over TLS only."""

    def __init__(self, name, cluster_token="keel-conformance", etcd_name=None, certs=None):
        self.name = name
        self.etcd_name = etcd_name or name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.certs = certs
        self.client_url = "%s://127.0.0.1:%d" % ("https" if certs else "http", self.client_port)
        self.peer_url = "http://127.0.0.1:%d" % self.peer_port
        self.endpoint = "127.0.0.1:%d" % self.client_port
        if certs:
            CTL_FLAGS[self.endpoint] = ["--cacert=" + certs["ca.pem"]]
        self.token = cluster_token
        self.data_dir = os.path.join(TmpRoot.get(), "etcd-%s-%d" % (name, self.client_port))
        self.proc = None

    def start(self, initial_cluster, state="new"):
        argv = [ETCD, "--name", self.etcd_name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.client_url,
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", initial_cluster,
                "--initial-cluster-token", self.token,
                "--initial-cluster-state", state]
        if self.certs:
            argv += ["--cert-file", self.certs["cert.pem"], "--key-file", self.certs["cert.key"]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.proc = Proc("etcd-" + self.name, argv, self.data_dir + ".log", env=env)

    def wait_healthy(self, timeout=90):
        def ok():
            if not self.proc.alive():
                raise RuntimeError("etcd %s exited:\n%s" % (self.name, self.proc.tail()))
            rc, _, _ = etcdctl(self.endpoint, ["--command-timeout=3s", "endpoint", "health"],
                               timeout=20)
            return rc == 0
        wait_for(ok, timeout, "etcd %s healthy" % self.name)

    def stop(self):
        if self.proc:
            self.proc.stop(signal.SIGKILL)


def start_cluster(names):
    """A fresh multi-member etcd cluster, every member healthy."""
    ms = [Member(n) for n in names]
    ic = ",".join("%s=%s" % (m.name, m.peer_url) for m in ms)
    for m in ms:
        m.start(ic)
    for m in ms:
        m.wait_healthy()
    return ms


def proxy_cmd():
    """The proxy under test: $KEEL_PROXY_CMD or "$KEEL_BIN_DIR/keel grpc-proxy start"."""
    cmd = os.environ.get("KEEL_PROXY_CMD")
    if cmd:
        return shlex.split(cmd)
    bin_dir = os.environ.get("KEEL_BIN_DIR")
    if not bin_dir:
        raise RuntimeError("set KEEL_BIN_DIR or KEEL_PROXY_CMD")
    return [os.path.join(bin_dir, "keel"), "grpc-proxy", "start"]


class Proxy:
    """The grpc-proxy under test, listening on a free 127.0.0.1 port.
    advertise: the --advertise-client-url value, None to leave the flag out, SELF for the
    proxy's own listen address. ctl_flags: the etcdctl flags its clients need (TLS)."""

    SELF = object()

    def __init__(self, name, endpoints, extra_flags=(), advertise="", ctl_flags=()):
        self.name = name
        self.port = free_port()
        self.endpoint = "127.0.0.1:%d" % self.port
        if ctl_flags:
            CTL_FLAGS[self.endpoint] = list(ctl_flags)
        self.data_dir = os.path.join(TmpRoot.get(), "proxy-%s-%d" % (name, self.port))
        argv = proxy_cmd() + ["--endpoints=" + ",".join(endpoints),
                              "--listen-addr=" + self.endpoint,
                              "--data-dir=" + self.data_dir]
        if advertise is Proxy.SELF:
            advertise = self.endpoint
        if advertise is not None:
            argv.append("--advertise-client-url=" + advertise)
        argv += list(extra_flags)
        self.argv = argv
        self.proc = Proc("proxy-" + name, argv, self.data_dir + ".log")

    def wait_ready(self, timeout=60):
        def ok():
            if not self.proc.alive():
                raise RuntimeError("proxy %s exited (%s):\n%s" % (
                    self.name, " ".join(map(str, self.argv)), self.proc.tail()))
            if not can_connect(self.endpoint):
                return False
            rc, _, _ = etcdctl(self.endpoint, ["--command-timeout=3s", "get", "x"], timeout=20)
            return rc == 0
        wait_for(ok, timeout, "proxy %s serving" % self.name)

    def stop(self):
        self.proc.stop(signal.SIGKILL)


class Background:
    """A background etcdctl (watch, elect, lock) whose stdout lines are collected."""

    def __init__(self, endpoints, args):
        argv = ctl_argv(endpoints, args)
        self.popen = subprocess.Popen(_dying_with_parent(argv), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      env=ctl_env(), start_new_session=True)
        self.lines = []
        self.err = []
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._read, args=(self.popen.stdout, self.lines),
                                   daemon=True)
        self._te = threading.Thread(target=self._read, args=(self.popen.stderr, self.err),
                                    daemon=True)
        self._t.start()
        self._te.start()
        with _PROCS_LOCK:
            PROCS.append(self)

    def _read(self, stream, sink):
        for raw in iter(stream.readline, b""):
            with self._lock:
                sink.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def snapshot(self):
        with self._lock:
            return list(self.lines)

    def wait_lines(self, n, timeout=30):
        """Waits until n stdout lines arrived (or the process ended); returns them."""
        try:
            wait_for(lambda: len(self.snapshot()) >= n or self.popen.poll() is not None,
                     timeout, "%d output lines" % n)
        except TimeoutError:
            pass
        return self.snapshot()

    def stop(self, sig=signal.SIGKILL, timeout=20):
        """Stops the process (SIGINT lets etcdctl close its session); returns rc."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._t.join(timeout=10)
        self._te.join(timeout=10)
        return self.popen.returncode
