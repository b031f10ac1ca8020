"""Kernel-level network emulation: Linux network namespaces, veth pairs and `tc` htb.

`Runtime(scenario, network="netns")` (`dora run ... --network netns`) builds, for one run:

* one namespace per device, `dora-<pid>-<n>-d<i>`, whose only interface `eth0`
  (10.213.<i+1>.2/24) is one end of a veth pair; the other end, `d<i>`
  (10.213.<i+1>.1/24), sits in a hub namespace `dora-<pid>-<n>-hub` that routes (L3)
  between the devices. The coordinator's sockets live in the hub (MASTER_ADDR is
  10.213.1.1); every worker is started inside its device's namespace
  (`ip netns exec`), and gloo binds to `eth0` (GLOO_SOCKET_IFNAME);
* **links**: on each device's `eth0` egress an htb root with one class per
  destination device, rate = ceil = the route's bottleneck bandwidth (`Cluster.bw`,
  the same number the cost model and the pacing calendar use), selected by a u32
  filter on the destination address; traffic to the coordinator is unshaped;
* **shared media**: one namespace per medium, `dora-<pid>-<n>-m<k>`, joined to the hub by
  one veth pair (`m<k>` in the hub). Policy routing in the hub (`ip rule iif d<i>
  from A to B`) sends every packet whose route crosses the medium out of `m<k>`; the
  medium namespace forwards it straight back (hairpin), and the hub then delivers
  it (or hairpins it through the route's next medium). So *all* of a medium's
  traffic, every sender and both directions, leaves through one egress: `m<k>` has
  an htb root with a parent class rate = ceil = the medium's capacity and one child
  class per sending device (rate = capacity / members, ceil = capacity); htb's
  deficit round robin between equal-quantum children gives each backlogged sender
  an equal share (per-station fairness, like WiFi DCF). A plan schedule's priorities
  replace those children by per-device-pair htb priority classes (`set_priorities`,
  `netns_media.py`).

Rates are goodput: the htb rates are scaled by 1514/1448 (Ethernet + IPv4 + TCP
header bytes per full 1448-byte TCP payload) so a bulk TCP flow gets the link's
`mbps` of payload.

Latency: `tc` without netem cannot delay packets (tbf/htb only rate-limit), so the
route latency stays in-process. The sender stamps each message with a delivery
floor = the end of its serialisation on the pair, chained per destination
(max(now, previous end) + bytes / bw) + route latency; the receiver waits for the
bytes (the kernel decides when they arrive) and then until that floor (`KernelNet`).
Uncontended, that is arrival + latency; when the kernel delivers later than the
uncontended model (medium contention, TCP dynamics), the latency overlaps that
extra delay instead of adding to it (an underestimate of at most one route
latency per message).

Requires root and iproute2 (`ip`, `tc`); otherwise `RuntimeFault`. Everything is
removed on `close()`, at interpreter exit, and stale namespaces of dead processes
(`dora-<pid>-*`) are removed at the next build."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time

from dora_rl.errors import RuntimeFault
from dora_rl.runtime.emulation import now
from dora_rl.runtime.netns_media import UNSHAPED, bits, medium_classes, medium_lines, quantum

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns" if os.path.isdir("/run/netns") or not os.path.isdir("/var/run/netns") else "/var/run/netns"
_LIVE: set = set()
_libc = None


def _cleanup_live() -> None:
    for n in list(_LIVE):
        n.close()


atexit.register(_cleanup_live)


def _tool(name: str) -> str:
    p = shutil.which(name) or next((d + "/" + name for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
                                    if os.access(d + "/" + name, os.X_OK)), None)
    if p is None:
        raise RuntimeFault(f"--network netns needs iproute2's `{name}` (not found on PATH, /sbin or /usr/sbin); "
                           "install iproute2 or use --network pace")
    return p


def check_available() -> tuple[str, str]:
    """(ip, tc) paths; RuntimeFault with the reason when kernel shaping is impossible."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise RuntimeFault("--network netns needs root (network namespaces, veth pairs and tc); run as root "
                           "or use --network pace (the in-process pacing calendar)")
    return _tool("ip"), _tool("tc")


def _run(argv: list[str], inp: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, input=inp, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        what = " ".join(argv) if inp is None else " ".join(argv) + " <<< " + (inp.strip().splitlines() or [""])[0]
        raise RuntimeFault(f"netns: `{what}` failed: {(r.stderr or r.stdout).strip()[:400]}")
    return r


@contextlib.contextmanager
def entered(ns: str):
    """Run the calling *thread* inside namespace `ns` (sockets it creates belong there)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    except OSError:
        os.close(own)
        raise RuntimeFault(f"netns: namespace {ns!r} does not exist") from None
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise RuntimeFault(f"netns: setns({ns}) failed: {os.strerror(ctypes.get_errno())}")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def stale_namespaces(ip: str) -> list[str]:
    """`dora-<pid>-*` namespaces whose creating process no longer exists."""
    out = []
    for line in _run([ip, "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == "dora" and parts[1].isdigit():
            try:
                os.kill(int(parts[1]), 0)
            except ProcessLookupError:
                out.append(name)
            except PermissionError:
                pass
    return out


class NetNS:
    """The namespaces, links and qdiscs of one run (see the module docstring).

        net = NetNS(cluster).build()
        argv = net.exec_prefix("phone") + [python, ...]; env.update(net.worker_env("phone"))
        with net.entered_hub(): ...   # coordinator sockets in the hub (MASTER_ADDR = net.coord_addr)
        net.close()
    """

    _seq = 0

    def __init__(self, cluster, prefix: str | None = None, net: str = "10.213"):
        self.ip, self.tc = check_available()
        self.cl = cluster
        if cluster.n > 199 or len(cluster.media_names) > 50:
            raise RuntimeFault("--network netns supports at most 199 devices and 50 media")
        if prefix is None:
            NetNS._seq += 1
            prefix = f"dora-{os.getpid()}-{NetNS._seq}-"
        self.prefix = prefix
        self.net = net
        self.hub = self.prefix + "hub"
        self.dev_ns = {d: f"{self.prefix}d{i}" for i, d in enumerate(cluster.names)}
        self.med_ns = [f"{self.prefix}m{k}" for k in range(len(cluster.media_names))]
        self.created: list[str] = []
        self.prios: dict = {}           # medium index -> {(i, j): htb prio}: a schedule's priorities
        self.lock = threading.Lock()
        self.built = False

    # ------------------------------------------------------------------ addresses
    def addr(self, dev: str) -> str:
        return f"{self.net}.{self.cl.index[dev] + 1}.2"

    def _hub_addr(self, i: int) -> str:
        return f"{self.net}.{i + 1}.1"

    def _med_addrs(self, k: int) -> tuple[str, str]:
        return f"{self.net}.{250 - k}.1", f"{self.net}.{250 - k}.2"

    @property
    def coord_addr(self) -> str:
        return self._hub_addr(0)

    coord_ifname = "d0"

    def exec_prefix(self, dev: str) -> list[str]:
        return [self.ip, "netns", "exec", self.dev_ns[dev]]

    def worker_env(self, dev: str) -> dict:
        return {"GLOO_SOCKET_IFNAME": "eth0", "DORA_NETNS": self.dev_ns[dev]}

    def entered(self, dev: str | None = None):
        """Context manager: the calling thread inside `dev`'s namespace (None: the hub)."""
        return entered(self.hub if dev is None else self.dev_ns[dev])

    @contextlib.contextmanager
    def entered_hub(self):
        """The calling thread in the hub, and gloo bound to the coordinator's address
        (GLOO_SOCKET_IFNAME is process-wide: restored on exit)."""
        old = os.environ.get("GLOO_SOCKET_IFNAME")
        os.environ["GLOO_SOCKET_IFNAME"] = self.coord_ifname
        try:
            with entered(self.hub):
                yield
        finally:
            if old is None:
                os.environ.pop("GLOO_SOCKET_IFNAME", None)
            else:
                os.environ["GLOO_SOCKET_IFNAME"] = old

    # ------------------------------------------------------------------ build
    def _ns(self, name: str, sysctls: list[str]) -> None:
        _run([self.ip, "netns", "add", name])
        self.created.append(name)
        base = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
        _run([self.ip, "netns", "exec", name, _tool("sysctl"), "-q", "-w"] + base + sysctls)

    def _batch(self, ns: str, tool: str, lines: list[str]) -> None:
        if lines:
            _run([tool, "-n", ns, "-batch", "-"], inp="\n".join(lines) + "\n")

    def build(self) -> "NetNS":
        """Create everything; on any failure remove what was created and raise RuntimeFault."""
        with self.lock:
            if self.built:
                return self
            for ns in stale_namespaces(self.ip):
                _run([self.ip, "netns", "del", ns], check=False)
            _LIVE.add(self)
            try:
                self._build()
            except BaseException:
                self._teardown()
                raise
            self.built = True
        return self

    def _build(self) -> None:
        cl = self.cl
        n, names = cl.n, cl.names
        self._ns(self.hub, ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.accept_redirects=0",
                            "net.ipv4.conf.default.accept_redirects=0"])
        for ns in self.med_ns:
            self._ns(ns, ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                          "net.ipv4.conf.default.send_redirects=0"])
        for d in names:
            self._ns(self.dev_ns[d], [])
        hub_ip, hub_tc = [], []
        hub_ip.append("link set lo up")
        for i, d in enumerate(names):
            ns = self.dev_ns[d]
            _run([self.ip, "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"d{i}",
                  "netns", self.hub])
            self._batch(ns, self.ip, ["link set lo up", f"addr add {self.addr(d)}/24 dev eth0", "link set eth0 up",
                                      f"route add default via {self._hub_addr(i)} dev eth0"])
            hub_ip += [f"addr add {self._hub_addr(i)}/24 dev d{i}", f"link set d{i} up"]
            # links: one htb class per destination on this device's egress
            tcl = ["qdisc add dev eth0 root handle 1: htb default 2",
                   f"class add dev eth0 parent 1: classid 1:2 htb rate {UNSHAPED}"]
            for j, e in enumerate(names):
                if i == j:
                    continue
                bw = cl.bw_l[i][j]
                cid = f"1:{0x10 + j:x}"
                tcl += [f"class add dev eth0 parent 1: classid {cid} htb rate {bits(bw)} ceil {bits(bw)} "
                        f"quantum {quantum(bw)}",
                        f"filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst {self.addr(e)}/32 "
                        f"flowid {cid}"]
            self._batch(ns, self.tc, tcl)
        for k, ns in enumerate(self.med_ns):
            h, m = self._med_addrs(k)
            _run([self.ip, "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"m{k}",
                  "netns", self.hub])
            self._batch(ns, self.ip, ["link set lo up", f"addr add {m}/24 dev eth0", "link set eth0 up",
                                      f"route add default via {h} dev eth0"])
            hub_ip += [f"addr add {h}/24 dev m{k}", f"link set m{k} up",
                       f"route add default via {m} dev m{k} table {100 + k}"]
            hub_tc += self._medium(k)
        # policy routing: a packet i -> j goes out through each medium its route crosses, in turn
        prio = 1000
        for i in range(n):
            for j in range(n):
                media = [mu for mu, _ in cl.hops[i][j]] if i != j else []
                iif = f"d{i}"
                for mu in media:
                    hub_ip.append(f"rule add priority {prio} iif {iif} from {self.addr(names[i])} "
                                  f"to {self.addr(names[j])} table {100 + mu}")
                    prio += 1
                    iif = f"m{mu}"
        self._batch(self.hub, self.ip, hub_ip)
        self._batch(self.hub, self.tc, hub_tc)

    def update_rates(self, cluster) -> None:
        """Change link and medium rates in place (same devices, media and routes), e.g.
        to follow a bandwidth trace (`Cluster.with_medium_mbps`)."""
        cl = self.cl = cluster
        n, names = cl.n, cl.names
        for i, d in enumerate(names):
            tcl = [f"class change dev eth0 parent 1: classid 1:{0x10 + j:x} htb rate {bits(cl.bw_l[i][j])} "
                   f"ceil {bits(cl.bw_l[i][j])} quantum {quantum(cl.bw_l[i][j])}" for j in range(n) if j != i]
            self._batch(self.dev_ns[d], self.tc, tcl)
        hub_tc = []
        for k in range(len(self.med_ns)):
            cap = float(cl.medium_bps[k])
            hub_tc.append(f"class change dev m{k} parent 1: classid 1:1 htb rate {bits(cap)} ceil {bits(cap)} "
                          f"quantum {quantum(cap)}")
            hub_tc += medium_classes(f"m{k}", cap, self._senders(k), self.prios.get(k), verb="change")
        self._batch(self.hub, self.tc, hub_tc)

    # ------------------------------------------------------------------ media
    def _senders(self, k: int) -> list[int]:
        """Devices whose packets to some device cross medium k (the kernel's routes)."""
        cl = self.cl
        return sorted({i for i in range(cl.n) for j in range(cl.n)
                       if i != j and any(mu == k for mu, _ in cl.hops[i][j])})

    def _medium(self, k: int) -> list[str]:
        """The tc lines of medium k's egress under the current priorities (netns_media.py)."""
        return medium_lines(f"m{k}", float(self.cl.medium_bps[k]), self._senders(k), self.prios.get(k),
                            lambda i: self.addr(self.cl.names[i]))

    def set_priorities(self, prios: dict) -> None:
        """Apply a plan schedule's priorities, {medium index: {(i, j): htb prio}}
        (`netns_media.pair_priorities`; {}: FIFO everywhere), rebuilding the egress of every
        medium whose classes change. Call it when nothing is in flight (a plan deploy):
        replacing a qdisc drops its queue."""
        with self.lock:
            changed = [k for k in range(len(self.med_ns)) if (prios.get(k) or None) != (self.prios.get(k) or None)]
            self.prios = {k: dict(v) for k, v in prios.items() if v}
            if self.built and changed:
                self._batch(self.hub, self.tc, [ln for k in changed for ln in [f"qdisc del dev m{k} root",
                                                                                 *self._medium(k)]])

    # ------------------------------------------------------------------ teardown
    def _teardown(self) -> None:
        for ns in reversed(self.created):
            # only our own processes can be inside our namespaces (workers, test helpers)
            pids = _run([self.ip, "netns", "pids", ns], check=False).stdout.split()
            for p in pids:
                if p.isdigit() and int(p) != os.getpid():
                    with contextlib.suppress(OSError):
                        os.kill(int(p), signal.SIGKILL)
            if pids:
                time.sleep(0.05)
            _run([self.ip, "netns", "del", ns], check=False)
        self.created = []

    def close(self) -> None:
        with self.lock:
            self._teardown()
            self.built = False
            _LIVE.discard(self)

    def __enter__(self):
        return self.build()

    def __exit__(self, *exc):
        self.close()
        return False


class KernelNet:
    """The worker side of `--network netns`: drop-in for `NetEmulator` without the
    pacing calendar (the kernel shapes the bytes). It returns a delivery *floor* per
    message: the uncontended end of its serialisation on the pair, chained per
    destination, plus the route latency (see the module docstring); never sleeps."""

    cal = None

    def __init__(self, net: dict):
        self.bw, self.lat, self.hops, self.medium_bps = net["bw"], net["lat"], net["hops"], net["medium_bps"]
        self.n = len(self.bw)
        self.ends: dict = {}
        self.lock = threading.Lock()

    def _rate(self, i: int, j: int) -> float:
        r = self.bw[i][j]
        for mu, cnt in self.hops[i][j]:
            r = min(r, self.medium_bps[mu] / cnt)
        return r

    def _floor(self, i: int, j: int, nbytes: float, prev: float) -> float:
        return max(now(), prev) + nbytes / self._rate(i, j)

    def book(self, i: int, j: int, nbytes: float) -> float:
        if i == j or nbytes <= 0:
            return 0.0
        with self.lock:
            end = self.ends[(i, j)] = self._floor(i, j, nbytes, self.ends.get((i, j), 0.0))
        return end + self.lat[i][j]

    def pace(self, i: int, j: int, nbytes: float, state: dict, ranks: dict | None = None) -> float:
        return self.book(i, j, nbytes)   # schedule priorities: the medium's htb classes (netns_media.py)

    def close(self) -> None:
        pass
