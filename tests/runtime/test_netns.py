"""Kernel-level network emulation (`dora_rl/runtime/netns.py`, `Runtime(network="netns")`).

Needs root and iproute2 (skipped otherwise, with the reason). Checks: the namespaces
are built and torn down (none left); a bulk TCP transfer between two device
namespaces (plain sockets, bounded bytes and time) is limited by tc to its link's
rate within 10%; two concurrent flows on one shared medium each get about half the
medium's capacity; a 2-stage tiny_cnn inference through `Runtime(network="netns")`
returns the single-process outputs. Traffic only ever goes to 10.213.x addresses
inside the test's own namespaces. A schedule's priorities become htb priority classes per
device pair (`netns_media.py`): the urgent pair's transfer finishes first."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest
import torch

from dora_rl.cluster.model import Cluster
from dora_rl.errors import RuntimeFault
from dora_rl.plan import Plan
from dora_rl.profile import build_model
from dora_rl.scenario import Scenario

netns = pytest.importorskip("dora_rl.runtime.netns")

try:
    IP, TC = netns.check_available()
    SKIP = None
except RuntimeFault as e:
    IP = TC = None
    SKIP = str(e)

needs_root = pytest.mark.skipif(SKIP is not None, reason=f"kernel shaping unavailable: {SKIP}")

W = 80      # mbps of the shared medium "w" and of its links a-b, c-d
DED = 40    # mbps of the dedicated links


def cluster_dict():
    links = [{"a": "a", "b": "b", "mbps": W, "latency_ms": 1, "medium": "w"},
             {"a": "c", "b": "d", "mbps": W, "latency_ms": 1, "medium": "w"}]
    links += [{"a": x, "b": y, "mbps": DED, "latency_ms": 1} for x, y in ("ac", "ad", "bc", "bd")]
    return {"devices": [{"name": n, "gflops": 0.5, "memory_gb": 4} for n in "abcd"], "links": links,
            "media": {"w": {"mbps": W}}}


def our_namespaces(prefix: str) -> list[str]:
    out = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.split() and ln.split()[0].startswith(prefix)]


@pytest.fixture(scope="module")
def net():
    n = netns.NetNS(Cluster.from_dict(cluster_dict()))
    try:
        n.build()
        yield n
    finally:
        n.close()
    assert our_namespaces(n.prefix) == []


def start_flow(net, src: str, dst: str, port: int, seconds: float, max_bytes: int = 60_000_000):
    """A bulk TCP transfer src -> dst (threads entered into the two namespaces).
    Returns (join, marks): marks is [(t, bytes received so far)] at the receiver."""
    marks: list = []
    ready = threading.Event()
    errors: list = []

    def server():
        try:
            with net.entered(dst):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((net.addr(dst), port))
                s.listen(1)
            s.settimeout(5)
            ready.set()
            c, _ = s.accept()
            c.settimeout(5)
            n = 0
            while True:
                b = c.recv(1 << 16)
                if not b:
                    break
                n += len(b)
                marks.append((time.monotonic(), n))
            c.close()
            s.close()
        except Exception as e:
            errors.append(e)
            ready.set()

    def client():
        try:
            with net.entered(src):
                c = socket.create_connection((net.addr(dst), port), timeout=5)
            buf = b"\0" * 65536
            end, sent = time.monotonic() + seconds, 0
            while time.monotonic() < end and sent < max_bytes:
                c.sendall(buf)
                sent += len(buf)
            c.close()
        except Exception as e:
            errors.append(e)

    ts = threading.Thread(target=server, daemon=True)
    ts.start()
    ready.wait(5)
    tc = threading.Thread(target=client, daemon=True)
    tc.start()

    def join():
        tc.join(seconds + 10)
        ts.join(10)
        assert not errors, errors
        assert not tc.is_alive() and not ts.is_alive()
    return join, marks


def mbps(marks, t0: float, t1: float) -> float:
    """Receiver goodput (Mbit/s) between t0 and t1."""
    w = [(t, n) for t, n in marks if t0 <= t <= t1]
    assert len(w) > 10, "too few samples in the window"
    return (w[-1][1] - w[0][1]) * 8 / 1e6 / (w[-1][0] - w[0][0])


@needs_root
def test_namespaces_built_and_torn_down():
    n = netns.NetNS(Cluster.from_dict(cluster_dict()))
    try:
        n.build()
        names = set(our_namespaces(n.prefix))
        assert names == {n.hub, *n.dev_ns.values(), *n.med_ns}
        assert all(x.startswith(f"dora-{os.getpid()}-") for x in names)
        links = subprocess.run([IP, "-n", n.dev_ns["a"], "-o", "addr", "show", "dev", "eth0"],
                               capture_output=True, text=True, timeout=10).stdout
        assert n.addr("a") + "/24" in links
        qd = subprocess.run([TC, "-n", n.hub, "class", "show", "dev", "m0"], capture_output=True, text=True,
                            timeout=10).stdout
        assert "htb 1:1 root" in qd
    finally:
        n.close()
    assert our_namespaces(n.prefix) == []
    # a build that fails half-way removes what it created
    bad = netns.NetNS(Cluster.from_dict(cluster_dict()))
    orig = bad._build

    def boom():
        bad._ns(bad.hub, [])
        raise RuntimeFault("injected failure")
    bad._build = boom
    with pytest.raises(RuntimeFault, match="injected"):
        bad.build()
    assert our_namespaces(bad.prefix) == [] and orig is not None


@needs_root
def test_bulk_transfer_limited_to_link_rate(net):
    for src, dst, rate, port in (("a", "c", DED, 5201), ("a", "b", W, 5202)):
        join, marks = start_flow(net, src, dst, port, seconds=1.8)
        join()
        t0 = marks[0][0] + 0.4      # past slow start and the htb burst
        got = mbps(marks, t0, marks[-1][0])
        # the kernel caps the flow at the link rate; a loaded CPU can only slow the sender, so the
        # bound is tight above and loose below (the exact rate is bench_runtime's figure)
        assert 0.3 * rate < got < 1.10 * rate, (src, dst, got, rate)


@needs_root
def test_two_flows_share_the_medium(net):
    j1, m1 = start_flow(net, "a", "b", 5203, seconds=2.5)
    j2, m2 = start_flow(net, "c", "d", 5204, seconds=2.5)
    j1()
    j2()
    t0 = max(m1[0][0], m2[0][0]) + 0.5          # both backlogged
    t1 = min(m1[-1][0], m2[-1][0])
    r = [mbps(m1, t0, t1), mbps(m2, t0, t1)]
    # together they never exceed the medium, and neither takes more than its fair half (tight
    # above); a loaded CPU only slows them (loose below)
    for x in r:
        assert 0.3 * W / 2 < x < 1.15 * W / 2, (r, W / 2)
    assert sum(r) < 1.10 * W, r


@needs_root
def test_runtime_netns_inference_equals_single_process():
    from dora_rl.runtime import Runtime
    sc = Scenario.from_dict({"name": "netns_test", "model": "tiny_cnn",
                             "workload": {"kind": "inference", "batch": 4, "microbatches": 2, "source": "a"},
                             **cluster_dict()})
    r = Runtime(sc, emulate=True, timeout=40, network="netns")
    try:
        import dataclasses

        from dora_rl.schedule import Schedule
        plan = Plan.make([(0, 3, ["a"]), (3, 7, ["b"])], microbatches=2)
        # the answer b -> a ranked above the activation a -> b on w: htb priority classes in the hub
        r.start(dataclasses.replace(plan, schedule=Schedule.from_dict({"priorities": {"w": ["act2", "act1"]}})))
        prefix = r.netns.prefix
        assert len(our_namespaces(prefix)) == 6
        a, b = r.netns.cl.index["a"], r.netns.cl.index["b"]
        assert r.netns.prios == {0: {(b, a): 1, (a, b): 2}}
        res = r.infer(4, window=2, keep_outputs=True)
        model, _ = build_model("tiny_cnn")
        assert sorted(res.outputs) == list(range(4))
        for rid, y in res.outputs.items():
            with torch.no_grad():
                ref = model(r.make_input(rid, 4))
            assert torch.allclose(y, ref, atol=1e-5, rtol=0)
        assert res.latency_ms["p50"] > 0
    finally:
        r.close()
    assert all(p.poll() is not None for p in r.procs)
    assert our_namespaces(prefix) == []


def test_clear_error_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeFault, match="root"):
        netns.check_available()
    from dora_rl.runtime import Runtime
    sc = Scenario.from_dict({"name": "netns_test", "model": "tiny_cnn",
                             "workload": {"kind": "inference", "batch": 4, "microbatches": 2, "source": "a"},
                             **cluster_dict()})
    with pytest.raises(RuntimeFault, match="network"):
        Runtime(sc, network="bogus")
    r = Runtime(sc, network="netns", timeout=10)
    with pytest.raises(RuntimeFault, match="root"):
        r.start(Plan.make([(0, 7, ["a"])]))
    assert r.procs == []


def _wifi_scenario(kind: str):
    """Four devices, every link on one medium w (so every pair crosses it)."""
    links = [{"a": x, "b": y, "mbps": W, "latency_ms": 1, "medium": "w"} for i, x in enumerate("abcd")
             for y in "abcd"[i + 1:]]
    wl = {"kind": kind, "batch": 8, "microbatches": 2, "source": "a", **({"optimizer": "sgd"}
                                                                          if kind == "training" else {})}
    return Scenario.from_dict({"name": "w4", "model": "tiny_cnn", "workload": wl, "links": links,
                               "devices": [{"name": n, "gflops": 0.5, "memory_gb": 4} for n in "abcd"],
                               "media": {"w": {"mbps": W}}})


def test_pair_priorities_map_each_class_to_the_pairs_that_carry_it():
    """No root needed: the schedule's ranks become htb prios per device pair (1 + rank);
    a pair carrying two classes gets the more urgent one (what per-pair cannot express)."""
    import dataclasses

    from dora_rl.cost import CostModel
    from dora_rl.runtime.netns_media import pair_priorities
    from dora_rl.schedule import Schedule

    sc = _wifi_scenario("inference")
    cl = sc.cluster
    ix = cl.index
    plan = Plan.make([(0, 3, ["b"]), (3, 5, ["c"]), (5, 7, ["d"])], 2)
    assert pair_priorities(CostModel(sc), plan, cl) == {}                  # FIFO: no classes
    plan = dataclasses.replace(plan, schedule=Schedule.from_dict({"priorities": {"w": ["act3", "act2", "act1",
                                                                                       "act0"]}}))
    got = pair_priorities(CostModel(sc), plan, cl)
    # act0 a->b, act1 b->c, act2 c->d, act3 (the answer) d->a
    assert got == {0: {(ix["d"], ix["a"]): 1, (ix["c"], ix["d"]): 2, (ix["b"], ix["c"]): 3, (ix["a"], ix["b"]): 4}}
    tr = _wifi_scenario("training")
    plan = Plan.make([(0, 3, ["b"]), (3, 7, ["a", "c"], [0.5, 0.5])], 2)
    plan = dataclasses.replace(plan, schedule=Schedule.from_dict({"priorities": {"w": ["grad1", "act1", "ar1",
                                                                                       "act0"]}}))
    got = pair_priorities(CostModel(tr), plan, tr.cluster)[0]
    a, b, c = ix["a"], ix["b"], ix["c"]
    # a -> b carries act0 (rank 3) and grad1 (rank 0): one TCP pair, one class, rank 0
    assert got == {(a, b): 1, (c, b): 1, (b, a): 2, (b, c): 2, (a, c): 3, (c, a): 3}


def finish_times(net, flows, nbytes: int) -> list[float]:
    """Send `nbytes` on each (src, dst, port, delay) flow, started `delay` s apart; the
    receiver's time of its last byte, per flow."""
    out = []
    joins = []
    t0 = time.monotonic()
    for src, dst, port, delay in flows:
        while time.monotonic() < t0 + delay:
            time.sleep(0.005)
        joins.append(start_flow(net, src, dst, port, seconds=30, max_bytes=nbytes))
    for join, marks in joins:
        join()
        assert marks[-1][1] >= nbytes
        out.append(marks[-1][0] - t0)
    return out


@needs_root
def test_htb_priority_classes_let_the_urgent_pair_finish_first():
    """Two equal bulk transfers on medium w (a -> b, c -> d). FIFO: fair sharing, the one
    started first finishes first. With c -> d ranked above a -> b it finishes first
    although it starts later: it takes the medium while both run (the fluid model: FIFO
    0.45 / 0.60 s, priority 0.45 / 0.60 s the other way round; order asserted, not times)."""
    n = netns.NetNS(Cluster.from_dict(cluster_dict()))
    ix = n.cl.index
    nbytes = 3_000_000          # 0.3 s alone at 80 Mbit/s
    try:
        n.build()
        flows = [("a", "b", 5211, 0.0), ("c", "d", 5212, 0.15)]
        fifo = finish_times(n, flows, nbytes)
        assert fifo[0] < fifo[1], fifo
        n.set_priorities({0: {(ix["c"], ix["d"]): 1, (ix["a"], ix["b"]): 2}})
        cls = subprocess.run([TC, "-n", n.hub, "class", "show", "dev", "m0"], capture_output=True, text=True,
                             timeout=10).stdout
        # c -> d (class 1:1193) prio 1, a -> b (1:1001) prio 2, ACKs (1:3) prio 0, the rest prio 7
        assert "1:1193 parent 1:1 prio 1 " in cls and "1:1001 parent 1:1 prio 2 " in cls
        assert "1:3 parent 1:1 prio 0 " in cls and "prio 7" in cls
        prio = finish_times(n, [("a", "b", 5213, 0.0), ("c", "d", 5214, 0.15)], nbytes)
        assert prio[1] < prio[0], prio
        n.set_priorities({})                                               # back to per-sender classes
        cls = subprocess.run([TC, "-n", n.hub, "class", "show", "dev", "m0"], capture_output=True, text=True,
                             timeout=10).stdout
        assert "prio 7" not in cls and "1:3 " not in cls and "1:1193" not in cls
    finally:
        n.close()
    assert our_namespaces(n.prefix) == []
