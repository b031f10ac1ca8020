"""The long commands shown in README.md and docs/*.md, run for real as shown (the cheap
ones and the parsing of all run in tests/test_docs_commands.py): `dora run ...` and
`dora demo` with their defaults, each in a fresh folder, with its exit code, seconds
and the last line of stderr. Commands with placeholders (SCEN, ...) are synopses and
are only parsed; `dora train` runs of 25-30 minutes are listed as skipped unless
DORA_BENCH_DOCS_TRAIN=1.

    PYTHONPATH=. python bench/bench_docs.py      # writes bench/results/docs.json
    DORA_BENCH_DOCS_ONLY='dora run ...;dora demo'  # only these commands (exactly as in the docs)
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

LONG = ("run", "demo", "train", "evaluate")


def run(results: dict) -> dict:
    from test_docs_commands import COMMANDS, concrete
    rows = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    only = [c.strip() for c in os.environ.get("DORA_BENCH_DOCS_ONLY", "").split(";") if c.strip()]
    for where, cmd, block in COMMANDS:
        words = shlex.split(cmd)
        if not (block and concrete(cmd) and words[1] in LONG) or (only and cmd not in only):
            continue
        if words[1] == "train" and os.environ.get("DORA_BENCH_DOCS_TRAIN") != "1":
            rows.append({"where": where, "cmd": cmd, "skipped": "a 25-30 minute training run "
                                                                 "(DORA_BENCH_DOCS_TRAIN=1 runs it)"})
            continue
        with tempfile.TemporaryDirectory() as tmp:
            if "plan.json" in words:
                subprocess.run([sys.executable, "-m", "dora_rl.cli", "plan", words[2], "--planner", "dora",
                                "--out", "plan.json"], cwd=tmp, env=env, capture_output=True, timeout=600, check=False)
            t = time.monotonic()
            try:
                p = subprocess.run([sys.executable, "-m", "dora_rl.cli", *words[1:]], cwd=tmp, env=env,
                                   capture_output=True, text=True, timeout=1800, check=False)
                rc, err = p.returncode, (p.stderr.strip().splitlines() or [""])[-1]
            except subprocess.TimeoutExpired:
                rc, err = None, "timed out after 1800 s"
        rows.append({"where": where, "cmd": cmd, "rc": rc, "seconds": time.monotonic() - t, "stderr": err[:300]})
        print(f"{where:18s} rc {rc}  {rows[-1]['seconds']:6.0f} s  {cmd}  {err[:120]}", flush=True)
    ran = [r for r in rows if "rc" in r]
    results["docs"] = {"ran": len(ran), "ok": sum(1 for r in ran if r["rc"] == 0),
                       "skipped": len(rows) - len(ran), "rows": rows}
    return results


if __name__ == "__main__":
    res = run({})
    out = ROOT / "bench" / "results" / "docs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print("wrote", out)
