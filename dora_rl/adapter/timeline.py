"""The PNG timeline of a run: bandwidth (true and estimated), battery, latency against
the SLO with QoE-violating intervals shaded, throughput against the required rate, and
plan switches marked as vertical lines (matplotlib Agg). Each violating interval is
labelled with the targets it missed (L latency, T throughput, B battery); faults are
marked with their device and detection time; a time-dilated live run states its
dilation (the axes are in dilated time) and the device time it covered."""

from __future__ import annotations

from pathlib import Path


def plot_timeline(log, path: str | Path, title: str | None = None) -> Path:
    """Write the timeline of `log` (a Log or its to_dict()) to `path` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = log.to_dict() if hasattr(log, "to_dict") else log
    rows = list(d["rows"])
    if rows:   # hold the last interval's values to its end
        rows.append({**rows[-1], "t": rows[-1]["t"] + d["interval_s"], "switch": False, "ok": True})
    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(10, 8), sharex=True)
    ax = axes[0]
    ax.step(t, [r["bw_true_mbps"] for r in rows], where="post", label="true", color="tab:blue")
    ax.step(t, [r["bw_est_mbps"] for r in rows], where="post", label="estimated", color="tab:orange", alpha=0.8)
    ax.axhline(d["nominal_mbps"], color="grey", ls=":", lw=1, label="nominal")
    ax.set_ylabel(f"{d['medium']} Mbps")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[1]
    devs = sorted({k for r in rows for k in r["battery"]})
    for dev in devs:
        ax.plot(t, [100 * r["battery"].get(dev, float("nan")) for r in rows], label=dev)
    ax.set_ylabel("battery %")
    if devs:
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no battery devices", transform=ax.transAxes, ha="center", va="center", color="grey")
    ax = axes[2]
    lats = [float("nan") if r["latency_ms"] is None else r["latency_ms"] for r in rows]   # NaN: none measured
    ax.step(t, lats, where="post", color="tab:green",
            label="latency (measured)" if d.get("live") else "latency (model, true bw)")
    slo = d.get("slo_ms")
    if slo:
        ax.axhline(slo, color="red", ls="--", lw=1, label="SLO")
    top = max([x for x in lats if x == x] + [slo or 0, 1e-9]) * 1.1
    top = min(top, 3 * slo) if slo else top
    for r in rows:
        if not r["ok"]:
            ax.axvspan(r["t"], r["t"] + d["interval_s"], color="red", alpha=0.15, lw=0)
            kinds = "".join(k[0].upper() for k in ("latency", "throughput", "battery")
                            if any(v.startswith(k) for v in r.get("violations", ())))
            ax.text(r["t"] + d["interval_s"] / 2, top * 0.97, kinds, ha="center", va="top", fontsize=6, color="red")
    ax.set_ylim(0, top)
    ax.set_ylabel("latency ms")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[3]
    ax.step(t, [r["throughput"] for r in rows], where="post", color="tab:purple", label="served (live: measured)")
    if d.get("need"):
        ax.axhline(d["need"], color="red", ls="--", lw=1, label="required")
    ax.set_ylabel("throughput (req/s)")
    dil = d.get("dilation") or 1.0
    ax.set_xlabel((f"time (s, dilated {dil:.3g}x: device time = time / {dil:.3g})" if dil != 1 else "time (s)")
                  + "  |  lines: plan switches; red: QoE violated (L latency, T throughput, B battery)", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    for r in rows:
        if r["switch"]:
            for a in axes:
                a.axvline(r["t"], color="black", lw=0.6, alpha=0.5)
    for f in d.get("faults") or ():
        det = f.get("detected_s") or {}
        for a in axes:
            a.axvline(f.get("t", 0.0), color="red", lw=1.2)
        axes[0].text(f.get("t", 0.0), axes[0].get_ylim()[1] * 0.95,
                     f" fault: {', '.join(f['devices'])} lost"
                     + ("".join(f", detected in {v:.2f} s" for v in det.values()) if det else ""),
                     color="red", fontsize=7, va="top")
    s = d.get("summary", {})
    fig.suptitle(title or f"{d['scenario']} / {d['adapter']}: {s.get('violation_frac', 0):.1%} intervals violate QoE, "
                 f"{s.get('switches', 0)} switches, {s.get('energy_j', 0):.0f} J"
                 + (f"\ntime dilated {dil:.3g}x: {d.get('duration_s', 0):.0f} s of run = "
                    f"{d.get('duration_s', 0) / dil:.3g} s of device time" if dil != 1 else ""))
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p
