"""The live terminal view (rich.live): current plan, bandwidth, battery, latency
p50/p95 against the SLO, throughput (with its unit) against the required rate, power,
switches, QoE violations so far and which target (latency, throughput, battery) the
last interval violated, faults (device, detection time), and for a time-dilated live
run the dilation (the numbers shown are in dilated time: 1 s of run = 1/X s on the
devices). Nothing is drawn before the first interval (an error before it prints on its
own line)."""

from __future__ import annotations

import math

import numpy as np
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def render(log, row: dict) -> Group:
    rows = log.rows
    from dora_rl.adapter.simulate import latencies

    lat = latencies(rows)
    p50, p95 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 95))) if len(lat) else (math.nan, math.nan)
    slo = log.slo_ms
    viol = sum(1 for r in rows if not r["ok"])
    sw = sum(1 for r in (rows if getattr(log, "live", False) else rows[1:]) if r["switch"])   # as Log.summary
    t_now = min(row["t"] + log.interval_s, log.duration_s)
    dil = getattr(log, "dilation", None) or 1.0
    head = Text.assemble((f"{log.scenario}", "bold"), " / adapter ", (log.adapter, "bold cyan"),
                         f"   t = {t_now:.0f} / {log.duration_s:.0f} s",
                         (f"   (time dilated {dil:.3g}x: {t_now / dil:.3g} s of device time)" if dil != 1 else "",
                          "dim"))
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="dim")
    t.add_column()
    plan = row["label"] + ("" if row["reason"] == "keep" else f"  ({row['reason']})")
    t.add_row("plan", plan)
    est = row["bw_est_mbps"]
    t.add_row(f"{log.medium} bandwidth",
              f"true {row['bw_true_mbps']:.1f} Mbps   estimated {est:.1f} Mbps   (nominal {log.nominal_mbps:.0f})"
              if est is not None else f"true {row['bw_true_mbps']:.1f} Mbps")
    if row["battery"]:
        t.add_row("battery", "   ".join(f"{d} {100 * v:.2f}%" for d, v in row["battery"].items()))
    style = "green" if (slo is None or not p95 > slo) else "red"
    t.add_row("latency", Text(f"p50 {p50:.1f} ms   p95 {p95:.1f} ms   SLO {slo if slo else '-'} ms"
                              if len(lat) else f"no answer yet   SLO {slo if slo else '-'} ms", style=style))
    t.add_row("throughput", f"{row['throughput']:.3g} req/s   required {log.need:.3g} req/s")
    t.add_row("power", f"{row['power_w']:.2f} W   energy so far {sum(r['energy_j'] for r in rows):.0f} J")
    t.add_row("switches", f"{sw}   QoE-violating intervals {viol}/{len(rows)} ({viol / len(rows):.0%})")
    met = "QoE met" if row.get("thr_judged", True) else ("QoE met (throughput not judged yet: the window of 3 "
                                                          "expected answers is longer than the run so far)")
    t.add_row("this interval", Text("; ".join(row["violations"]) or met, style="red" if row["violations"] else "green"))
    for f in getattr(log, "faults", None) or ():
        det = f.get("detected_s") or {}
        t.add_row("fault", f"{', '.join(f['devices'])} lost; detected "
                  + (", ".join(f"{d} after {v:.2f} s" for d, v in det.items()) if det else "(not killed by us)")
                  + f"; recovered in {f['recover_s']:.1f} s")
    t.add_row("decision", f"{row['decide_ms']:.2f} ms")
    return Group(head, t)


class LiveView:
    """Use as `with LiveView() as v: simulate(..., on_interval=v.update)`."""

    def __init__(self, enabled: bool = True, console=None):
        self.enabled = enabled
        self.console = console
        self.live = None

    def __enter__(self):
        return self

    def update(self, row, log) -> None:
        if not self.enabled:
            return
        if self.live is None:     # started at the first interval: nothing half-drawn before it
            self.live = Live(render(log, row), console=self.console, refresh_per_second=8, transient=False)
            self.live.__enter__()
        else:
            self.live.update(render(log, row))

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live.console.line()   # what follows starts on its own line
        return False
