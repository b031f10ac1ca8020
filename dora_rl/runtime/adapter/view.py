"""The live terminal view (rich.live): current plan, bandwidth, battery, latency
p50/p95 against the SLO, throughput, power, switches and QoE violations so far."""

from __future__ import annotations

import math

import numpy as np
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def render(log, row: dict) -> Group:
    rows = log.rows
    from dora_rl.runtime.adapter.simulate import latencies

    lat = latencies(rows)
    p50, p95 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 95))) if len(lat) else (math.nan, math.nan)
    slo = log.slo_ms
    viol = sum(1 for r in rows if not r["ok"])
    sw = sum(1 for r in rows[1:] if r["switch"])
    head = Text.assemble((f"{log.scenario}", "bold"), " / adapter ", (log.adapter, "bold cyan"),
                         f"   t = {row['t'] + log.interval_s:.0f} / {log.duration_s:.0f} s")
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
    t.add_row("throughput", f"{row['throughput']:.1f} / required {log.need:.1f}")
    t.add_row("power", f"{row['power_w']:.2f} W   energy so far {sum(r['energy_j'] for r in rows):.0f} J")
    t.add_row("switches", f"{sw}   QoE-violating intervals {viol}/{len(rows)} ({viol / len(rows):.0%})")
    t.add_row("decision", f"{row['decide_ms']:.2f} ms")
    return Group(head, t)


class LiveView:
    """Use as `with LiveView() as v: simulate(..., on_interval=v.update)`."""

    def __init__(self, enabled: bool = True, console=None):
        self.enabled = enabled
        self.console = console
        self.live = None

    def __enter__(self):
        if self.enabled:
            self.live = Live(Text("starting..."), console=self.console, refresh_per_second=8, transient=False)
            self.live.__enter__()
        return self

    def update(self, row, log) -> None:
        if self.live is not None:
            self.live.update(render(log, row))

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)
        return False
