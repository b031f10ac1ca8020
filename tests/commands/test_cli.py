"""The `dora` command: tables, --json, and one-line errors with exit code 2."""

import json
import os
import subprocess
import sys

import pytest

from dora_rl.cli import main
from dora_rl.plan import Plan


def run(*args):
    p = subprocess.run([sys.executable, "-m", "dora_rl.cli", *args], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_profile_json(capsys):
    assert main(["profile", "tiny_cnn", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["name"] == "tiny_cnn" and len(d["blocks"]) > 3


def test_profile_table(capsys):
    assert main(["profile", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "layer4" in out


def test_score_json_and_table(tmp_path, capsys):
    # the laptop+jetson pipeline that meets every smart_home target (docs: envs/smart_home.yaml)
    Plan.make([(0, 12, ["jetson"]), (12, 14, ["laptop"])], 1).save(tmp_path / "p.json")
    assert main(["score", "smart_home", str(tmp_path / "p.json"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["qoe_ok"] is True and d["latency_ms"] > 0 and set(d["memory_bytes"]) == {"phone", "jetson", "laptop"}
    assert main(["score", "smart_home", str(tmp_path / "p.json")]) == 0
    assert "QoE met" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["score", "nowhere", "p.json"], "unknown scenario 'nowhere'"),
    (["score", "smart_home", "missing.json"], "does not exist"),
    (["profile", "alexnet"], "unknown model 'alexnet'"),
])
def test_errors_one_line_exit_2(args, words, tmp_path):
    code, out, err = run(*args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dora: error:") and words in err
    assert "Traceback" not in err


def test_bad_plan_exit_2(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"stages": [{"blocks": [0, 5], "devices": ["jetson"]}]}))
    code, _, err = run("score", "smart_home", str(tmp_path / "p.json"))
    assert code == 2 and "stages end at block 5 but the model has 14 blocks" in err


def test_unknown_command_exit_2():
    code, _, err = run("frobnicate")
    assert code == 2 and "invalid choice" in err


@pytest.mark.parametrize("flag", ["--out", "--plot"])
def test_unwritable_output_is_one_line_after_the_result(tmp_path, flag):
    """An --out/--plot under a regular file cannot be created: the computed result is
    printed first, then one line on stderr and exit 2 (no traceback)."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    cmd = ["plan", "smart_home", "--planner", "local", "--json"] if flag == "--out" else \
          ["compare", "smart_home", "--planners", "local", "--json"]
    code, out, err = run(*cmd, flag, str(blocker / "result.file"))
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and "not_a_folder" in err
    assert json.loads(out)   # what was computed is on stdout


def test_compare_and_plan_say_exact_and_name_violations(capsys):
    assert main(["compare", "smart_home", "--planners", "dora,oracle,local,even", "--json"]) == 0
    rows = {r["planner"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert ok and all("approximate" in r and "violated" in r for r in ok)
    for r in ok:
        assert r["qoe_ok"] == (r["violated"] == "")
        for v in r["violations"]:
            assert v.split(":")[0] in r["violated"]
    if rows["oracle"]["status"] == "ok":
        assert rows["oracle"]["approximate"] is False
    if rows["even"]["status"] == "ok":
        assert rows["even"]["approximate"] is True and rows["even"]["gap"] is not None
    assert main(["plan", "smart_home", "--planner", "local", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["approximate"] is True and d["gap"] is not None and d["gap"] >= -1e-9


def test_tables_keep_full_names_off_a_terminal():
    """Piped into a file, `dora compare` must not squeeze its table to 80 columns and cut the
    planner names and headers ("data_parallel" -> "dat…")."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-m", "dora_rl.cli", "compare", "smart_home", "--planners",
                          "data_parallel,neurosurgeon,proportional"], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert "data_parallel" in out and "neurosurgeon" in out and "latency ms" in out
    assert "…" not in out
