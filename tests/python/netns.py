"""Ray nodes on one machine, each in its own network namespace: faithful
"hosts" for the plugin (own loopback, own abstract Unix sockets, own IP; same
files, same /dev/shm, same kernel). Used by tests/python/test_two_nodes.py,
tests/python/test_node_share.py, benches/cross_node.py and benches/weights.py.

    with NamespaceCluster(plugin=True) as cluster:   # two nodes; needs root
        out = cluster.run_driver("script.py", "arg", timeout=120)
        out.result                                   # the script's `RESULT {json}` line
    with NamespaceCluster(nodes=3) as cluster:       # a, b, c behind one switch
        cluster.nodes[2].resource                    # "node_c"

What it does (see /work/shared/NOTES.md, "Multi-node on one machine"):

* one namespace per node, ``rdt-a-<pid>-<n>``, ``rdt-b-<pid>-<n>``, ...;
  two nodes are joined by one veth pair, three or more each by a veth to a
  bridge in a switch namespace ``rdt-sw-<pid>-<n>`` (one link per host, as
  hosts on one switch: a node's veth counters are all its traffic); every
  link is created directly inside the namespaces (nothing is ever added to the
  root namespace); addresses ``10.231.<x>.1`` (A), ``.2`` (B), ``.3`` (C) ...,
  ``lo`` up, and a default route over the veth so that Ray's own "what is my
  IP" probe finds the veth address;
* a Ray head in A (``--resources={"node_a": 100}``) and the other nodes
  (``{"node_b": 100}``, ``{"node_c": 100}``, ...) joining it, each ``ray start
  ... --block`` a child in its own session (process group) with its own
  ``--temp-dir``;
* ``RAY_AUTH_MODE=token`` for every Ray process and driver (Ray 2.60 turns token
  auth on for ``ray start --head``; the token is ``~/.ray/auth_token``);
* ``GLOO_SOCKET_IFNAME`` = that namespace's veth for each node: both namespaces
  share one hostname that resolves to loopback, and stock torch.distributed gloo
  binds the hostname's address otherwise (real hosts do not need this);
* ``RDT_NODE_A_IP``, ``RDT_NODE_B_IP``, ... (every node's address) and
  ``RDT_VETH`` (this namespace's veth, e.g. for its
  ``/sys/class/net/<veth>/statistics``) for every process;
* ``UCX_TLS=tcp,self`` (:data:`NETWORK_ONLY_ENV`) for every process: the
  namespaces share one kernel, and UCX would otherwise move NIXL's bytes
  through shared memory between them, never over the veth (issue 21); a
  caller's ``extra_env`` may override it;
* ``RAY_RDT_PLUGIN`` passed through from the caller (or forced by ``plugin=``),
  so the same harness runs stock and plugin clusters; ``RAY_RDT_LIB`` likewise
  (unset: the binding finds the library itself); ``ray_rdt`` is imported as the
  venv does (its ``.pth`` names the checkout's ``python/``);
* drivers run inside A (``ip netns exec A python script ...``) with a timeout;
* teardown (context-manager exit, also after any failure): SIGTERM then SIGKILL
  to each node's process group, SIGKILL to every process left in any
  namespace (``ip netns pids``) and to any process naming the temp dirs
  (``pgrep -f``), then ``ip netns del``; it raises if anything is left behind.

Where namespaces cannot be made (not root, ``ip`` missing, ``ip netns add``
fails) it raises :class:`NamespacesUnavailable`, a ``unittest.SkipTest``: pytest
reports a skip with that reason; other callers see an exception, never a pass.
"""

import glob
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from holds import pid_alive

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SCRIPTS = os.path.join(HERE, "two_node_scripts")
PYTHON = sys.executable
RAY = os.path.join(os.path.dirname(PYTHON), "ray")

GCS_PORT = 6379
# Every process of both nodes: NIXL's UCX over the network (the veth), as
# between two real hosts, not through the shared memory one kernel offers.
NETWORK_ONLY_ENV = {"UCX_TLS": "tcp,self"}
RESULT_PREFIX = "RESULT "
SIGNAL_PREFIX = "@@"  # a driver line "@@name" asks the harness to run handler `name`
NODE_NAMES = "abcdefgh"  # node i is NODE_NAMES[i]: namespace rdt-<x>-..., resource node_<x>
_counter = itertools.count()


class NamespacesUnavailable(unittest.SkipTest):
    """Network namespaces cannot be created here (the message says why)."""


class DriverTimeout(AssertionError):
    """A driver script ran past its timeout (it was killed; output attached)."""


class ClusterError(RuntimeError):
    """The cluster did not come up, or did not tear down cleanly."""


def _run(cmd, check=True, timeout=30):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def veth_tx_bytes() -> int:
    """Bytes sent so far over the veth of the namespace this process runs in
    (``RDT_VETH``, which every process of a cluster gets): what left that
    node, whatever the transport did."""
    with open(f"/sys/class/net/{os.environ['RDT_VETH']}/statistics/tx_bytes") as fh:
        return int(fh.read())


def namespace_pids(ns: str) -> List[int]:
    """Processes whose network namespace is ``ns`` (``ip netns pids``)."""
    proc = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def pids_matching(pattern: str) -> List[int]:
    """Processes whose command line contains ``pattern`` (``pgrep -f``), not us."""
    proc = _run(["pgrep", "-f", pattern], check=False)
    return [int(p) for p in proc.stdout.split() if int(p) != os.getpid()]


def namespaces() -> List[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines() if line.strip()]


def reap_stale():
    """Removes what an earlier harness left when it was killed before its
    teardown (SIGKILL, a CI timeout): namespaces ``rdt-<node or sw>-<pid>-<n>`` and
    temp dirs ``/tmp/rdt2n-<pid>-<n>-*`` whose creating process no longer
    exists, and every process inside those namespaces. Names of live
    harnesses, and anything not named like this, are left alone."""
    for ns in namespaces():
        m = re.fullmatch(rf"rdt-(?:[{NODE_NAMES}]|sw)-(\d+)-\d+", ns)
        if m and not pid_alive(int(m.group(1))):
            _kill(namespace_pids(ns), signal.SIGKILL)
            _wait_gone(lambda: namespace_pids(ns), 10)
            _run(["ip", "netns", "del", ns], check=False)
    for path in glob.glob("/tmp/rdt2n-*-*-*"):
        m = re.fullmatch(r"/tmp/rdt2n-(\d+)-\d+-\w+", path)
        if m and not pid_alive(int(m.group(1))):
            _kill(pids_matching(path), signal.SIGKILL)
            shutil.rmtree(path, ignore_errors=True)


def _kill(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pids_fn, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pids_fn():
            return True
        time.sleep(0.1)
    return not pids_fn()


@dataclass
class Node:
    """One Ray node: its namespace, veth, address, resources, temp dir, process."""

    name: str  # "a", "b", ...
    ns: str
    veth: str
    ip: str
    resource: str
    temp_dir: str
    log_path: str
    proc: Optional[subprocess.Popen] = None
    killed: bool = False

    def log_tail(self, n=40):
        try:
            with open(self.log_path, errors="replace") as fh:
                return "".join(fh.readlines()[-n:])
        except OSError:
            return ""


@dataclass
class DriverOutput:
    """What a driver script printed, its exit status, and its ``RESULT`` (JSON)."""

    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float
    result: object = None
    signals: List[str] = field(default_factory=list)

    def describe(self):
        return f"exit {self.returncode} after {self.elapsed_s:.1f} s\n--- stdout\n{self.stdout[-6000:]}\n--- stderr\n{self.stderr[-6000:]}"


class NamespaceCluster:
    """A Ray head in namespace A and ``nodes - 1`` more nodes in namespaces B,
    C, ... (see the module docstring). ``plugin``: True/False forces
    ``RAY_RDT_PLUGIN=1``/``0``; None passes the caller's value through (unset
    means the plugin's default, on). ``ray=False``: the namespaces and links
    only, no Ray (for measurements of the links themselves)."""

    def __init__(
        self,
        plugin: Optional[bool] = None,
        nodes: int = 2,
        ray: bool = True,
        num_cpus: int = 8,
        object_store_memory: int = 2 << 30,
        start_timeout: float = 120.0,
        extra_env: Optional[Dict[str, str]] = None,
    ):
        if not 2 <= nodes <= len(NODE_NAMES):
            raise ValueError(f"a namespace cluster has 2 to {len(NODE_NAMES)} nodes, not {nodes}")
        self.plugin = plugin
        self.ray = ray
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.start_timeout = start_timeout
        self.extra_env = dict(extra_env or {})
        tag = f"{os.getpid()}-{next(_counter)}"
        # Addresses live inside the namespaces, so runs cannot collide on them;
        # the pid only makes them easy to tell apart in logs.
        subnet = f"10.231.{os.getpid() % 254 + 1}"
        self.root = tempfile.mkdtemp(prefix=f"rdt2n-{tag}-", dir="/tmp")
        short = f"{os.getpid() % 100000}{tag.split('-')[1]}"
        self.nodes = [
            Node(x, f"rdt-{x}-{tag}", f"rdt{x}{short}"[:15], f"{subnet}.{i + 1}", f"node_{x}",
                 os.path.join(self.root, x), os.path.join(self.root, f"node-{x}.log"))
            for i, x in enumerate(NODE_NAMES[:nodes])
        ]
        self.a, self.b = self.nodes[:2]
        # Three or more nodes meet at a bridge in a namespace of its own.
        self.switch = f"rdt-sw-{tag}" if nodes > 2 else None
        self._short = short
        self.address = f"{self.a.ip}:{GCS_PORT}"
        self._made_ns: List[str] = []

    # ----------------------------------------------------------------- setup

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def start(self):
        self._make_namespaces()
        if not self.ray:
            return
        for i, node in enumerate(self.nodes):
            self._start_node(node, head=i == 0)
        self._wait_for_nodes()

    def _make_namespaces(self):
        if os.geteuid() != 0:
            raise NamespacesUnavailable(f"network namespaces need root; running as uid {os.geteuid()}")
        if shutil.which("ip") is None:
            raise NamespacesUnavailable("network namespaces need iproute2's `ip`, which is not installed")
        reap_stale()
        for ns in self._namespace_names():
            proc = _run(["ip", "netns", "add", ns], check=False)
            if proc.returncode != 0:
                raise NamespacesUnavailable(f"`ip netns add {ns}` failed: {proc.stderr.strip()}")
            self._made_ns.append(ns)
        if self.switch is None:
            _run(["ip", "link", "add", self.a.veth, "netns", self.a.ns, "type", "veth",
                  "peer", "name", self.b.veth, "netns", self.b.ns])
        else:
            self._make_switch()
        for node in self.nodes:
            _run(["ip", "-n", node.ns, "addr", "add", f"{node.ip}/24", "dev", node.veth])
            _run(["ip", "-n", node.ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", node.ns, "link", "set", node.veth, "up"])
            _run(["ip", "-n", node.ns, "route", "add", "default", "dev", node.veth])
            os.makedirs(node.temp_dir, exist_ok=True)

    def _namespace_names(self) -> List[str]:
        """Every namespace of this cluster: the nodes', then the switch's."""
        return [n.ns for n in self.nodes] + ([self.switch] if self.switch else [])

    def _make_switch(self):
        """A bridge in the switch namespace and, per node, a veth from the
        node's namespace to a port of it."""
        sw = ["ip", "-n", self.switch]
        _run(sw + ["link", "add", "br0", "type", "bridge"])
        _run(sw + ["link", "set", "br0", "up"])
        # Bridged frames skip the switch namespace's (empty) netfilter where the
        # kernel lets a namespace say so.
        _run(["ip", "netns", "exec", self.switch, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"],
             check=False)
        for node in self.nodes:
            port = f"sw{node.name}{self._short}"[:15]
            _run(["ip", "link", "add", node.veth, "netns", node.ns, "type", "veth",
                  "peer", "name", port, "netns", self.switch])
            _run(sw + ["link", "set", port, "master", "br0"])
            _run(sw + ["link", "set", port, "up"])

    def env(self, node: Node) -> Dict[str, str]:
        """Environment of a Ray node or a driver in ``node``'s namespace."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        # ray_rdt itself comes from the venv (ci/setup's .pth names the checkout's
        # python/), so the binding and the library it finds next to it match.
        paths = [SCRIPTS, HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env.update(
            PYTHONPATH=os.pathsep.join(paths),
            RAY_AUTH_MODE="token",
            RAY_USAGE_STATS_ENABLED="0",
            # Ray 2.60 drains a node for up to 30 s on SIGTERM; teardown needs none.
            RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
            GLOO_SOCKET_IFNAME=node.veth,
            RAY_ADDRESS=self.address,
            RDT_VETH=node.veth,
            # A driver or worker that crashes prints its Python stack (stderr).
            PYTHONFAULTHANDLER="1",
        )
        env.update({f"RDT_NODE_{n.name.upper()}_IP": n.ip for n in self.nodes})
        if self.plugin is not None:
            env["RAY_RDT_PLUGIN"] = "1" if self.plugin else "0"
        env.update(NETWORK_ONLY_ENV)
        env.update(self.extra_env)
        return env

    def _start_node(self, node: Node, head: bool):
        cmd = ["ip", "netns", "exec", node.ns, RAY, "start", "--block", "--disable-usage-stats",
               f"--node-ip-address={node.ip}", f"--temp-dir={node.temp_dir}",
               f"--object-store-memory={self.object_store_memory}",
               f"--resources={json.dumps({node.resource: 100})}"]
        if head:
            cmd += ["--head", f"--port={GCS_PORT}", f"--num-cpus={self.num_cpus}", "--include-dashboard=false"]
        else:
            cmd += [f"--address={self.address}", f"--num-cpus={self.num_cpus}"]
        env = self.env(node)
        env.pop("RAY_ADDRESS")
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_for_nodes(self, replaced: Optional[Node] = None):
        """Polls the cluster from a driver in A until exactly one alive node
        runs at each node's address (and, after a restart, ``replaced``'s is
        not its old node ID: Ray takes a while to mark a killed node dead)."""
        deadline = time.monotonic() + self.start_timeout
        last = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc.poll() is not None:
                    raise ClusterError(
                        f"`ray start` in {node.ns} exited ({node.proc.returncode}):\n{node.log_tail()}")
            try:
                last = self.run_driver(os.path.join(SCRIPTS, "alive_nodes.py"), timeout=60)
            except DriverTimeout as e:
                last = e
                continue
            if last.returncode == 0 and last.result is not None:
                ids = {}
                for n in last.result:
                    ids.setdefault(n["ip"], []).append(n["node_id"])
                if (len(last.result) == len(self.nodes)
                        and all(len(ids.get(x.ip, [])) == 1 for x in self.nodes)
                        and (replaced is None or ids[replaced.ip][0] != self.node_ids[replaced.ip])):
                    self.node_ids = {ip: v[0] for ip, v in ids.items()}
                    return
            time.sleep(1)
        detail = last.describe() if isinstance(last, DriverOutput) else str(last)
        logs = "".join(f"\n--- node {n.name}\n{n.log_tail()}" for n in self.nodes)
        raise ClusterError(f"the cluster did not show its {len(self.nodes)} nodes alive within "
                           f"{self.start_timeout:.0f} s:\n{detail}{logs}")

    # ----------------------------------------------------------------- drivers

    def run_driver(self, script: str, *args: str, timeout: float = 120.0, node: Optional[Node] = None,
                   handlers: Optional[Dict[str, Callable[[], None]]] = None) -> DriverOutput:
        """Runs ``python script args`` inside namespace A (or ``node``'s) with the
        cluster's environment. Returns its output and its last ``RESULT {json}``
        line; raises :class:`DriverTimeout` (after killing it) past ``timeout``.

        A line ``@@name`` on the driver's stdout runs ``handlers[name]()`` here,
        then ``ok`` (or ``error: ...``) is written to the driver's stdin, so a
        driver can ask for something only the harness can do (kill node B)."""
        node = node or self.a
        handlers = handlers or {}
        if not os.path.isabs(script):
            script = os.path.join(SCRIPTS, script)
        cmd = ["ip", "netns", "exec", node.ns, PYTHON, script, *args]
        t0 = time.monotonic()
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, env=self.env(node), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, text=True, start_new_session=True, bufsize=1)
            out, signals = [], []
            try:
                deadline = t0 + timeout
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise DriverTimeout(f"{os.path.basename(script)} ran past {timeout:.0f} s")
                    ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
                    if not ready:
                        continue
                    line = proc.stdout.readline()
                    if not line:
                        break
                    out.append(line)
                    if line.startswith(SIGNAL_PREFIX):
                        name = line[len(SIGNAL_PREFIX):].strip()
                        signals.append(name)
                        try:
                            handlers[name]()
                            reply = "ok"
                        except Exception as e:  # reported to the driver, which reports it back
                            reply = f"error: {type(e).__name__}: {e}"
                        proc.stdin.write(reply + "\n")
                        proc.stdin.flush()
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except (DriverTimeout, subprocess.TimeoutExpired) as e:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                err.seek(0)
                raise DriverTimeout(
                    f"{os.path.basename(script)} ran past {timeout:.0f} s and was killed\n--- stdout\n"
                    f"{''.join(out)[-6000:]}\n--- stderr\n{err.read()[-6000:]}") from e
            finally:
                if proc.poll() is None:
                    _killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            err.seek(0)
            stderr = err.read()
        stdout = "".join(out)
        results = [l for l in stdout.splitlines() if l.startswith(RESULT_PREFIX)]
        result = json.loads(results[-1][len(RESULT_PREFIX):]) if results else None
        return DriverOutput(proc.returncode, stdout, stderr, time.monotonic() - t0, result, signals)

    def popen_in(self, node: Node, argv: List[str], **kwargs) -> subprocess.Popen:
        """A plain child process inside ``node``'s namespace (its own session;
        killed at teardown with everything else in the namespace)."""
        return subprocess.Popen(["ip", "netns", "exec", node.ns, *argv], env=self.env(node),
                                start_new_session=True, **kwargs)

    # ----------------------------------------------------------------- faults

    def kill_node(self, node: Node):
        """Kills a whole Ray node at once: SIGKILL to its process group and to
        every process in its namespace (the node's veth stays up)."""
        node.killed = True
        if node.proc is not None:
            _killpg(node.proc.pid, signal.SIGKILL)
        _kill(namespace_pids(node.ns), signal.SIGKILL)
        _wait_gone(lambda: namespace_pids(node.ns), 10)
        if node.proc is not None:
            node.proc.wait()

    def restart_node(self, node: Node):
        """Starts a node other than the head again after :meth:`kill_node` (a
        new Ray node, same namespace, address and resources) and waits until
        Ray has replaced the old node by the new one."""
        assert node is not self.a, "the head cannot be restarted (it holds the cluster)"
        self.kill_node(node)
        self._start_node(node, head=False)
        node.killed = False
        self._wait_for_nodes(replaced=node)

    # ----------------------------------------------------------------- teardown

    def leftovers(self) -> List[str]:
        """Namespaces and processes of this cluster that still exist."""
        mine = self._namespace_names()
        live = namespaces()
        left = [f"namespace {ns}" for ns in live if ns in mine]
        left += [f"process {pid} in {ns}" for ns in mine if ns in live for pid in namespace_pids(ns)]
        left += [f"process {pid} naming {self.root}" for pid in pids_matching(self.root)]
        return left

    def close(self):
        """Tears everything down (the head last); raises
        :class:`ClusterError` if anything is left."""
        for node in reversed(self.nodes):
            if node.proc is not None and node.proc.poll() is None:
                _killpg(node.proc.pid, signal.SIGTERM)
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    _killpg(node.proc.pid, signal.SIGKILL)
                    node.proc.wait()
                _killpg(node.proc.pid, signal.SIGKILL)  # children that outlived `ray start`
        for ns in list(self._made_ns):
            _kill(namespace_pids(ns), signal.SIGKILL)
            _wait_gone(lambda: namespace_pids(ns), 10)
        _kill(pids_matching(self.root), signal.SIGKILL)
        _wait_gone(lambda: pids_matching(self.root), 10)
        for ns in list(self._made_ns):
            if _run(["ip", "netns", "del", ns], check=False).returncode == 0:
                self._made_ns.remove(ns)
        left = self.leftovers()
        if not left:
            shutil.rmtree(self.root, ignore_errors=True)
        if left:
            raise ClusterError(f"teardown left behind: {', '.join(left)} (logs in {self.root})")
