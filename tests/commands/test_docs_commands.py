"""Every `dora ...` command shown in README.md and docs/*.md parses as shown: its
subcommand exists and every --option it names is one of that subcommand's; concrete
commands (no placeholders) parse completely, and the cheap ones run for real with exit
code 0 (one that reads `plan.json` gets the plan `dora plan SCENARIO --out plan.json`
writes). The long ones (`dora run`, `dora train`, `dora demo`, ...) run for real in
bench/bench_docs.py (`make bench`)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from dora_rl.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_.]{2,}\b|\[|\]|\||\.\.\.|<")


def doc_commands() -> list[tuple[str, str, bool]]:
    """(where, command, in a code block) of every `dora ...` in README.md and docs/*.md."""
    out = []
    for f in [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md")):
        block = False
        for i, ln in enumerate(f.read_text().splitlines(), 1):
            if ln.strip().startswith("```"):
                block = not block
                continue
            m = re.match(r"^\s*(?:\$\s+)?(dora\s.*)$", ln)
            if m and (block or ln.startswith("    ")):
                out.append((f"{f.name}:{i}", m.group(1).split(" #")[0].strip(), True))
            elif not block:
                out += [(f"{f.name}:{i}", c.strip(), False) for c in re.findall(r"`(dora [^`]+)`", ln)]
    return out


def subparsers():
    p = build_parser()
    act = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    return act.choices


COMMANDS = doc_commands()
CHEAP = ("profile", "score", "plan", "compare", "simulate")


def concrete(cmd: str) -> bool:
    return not PLACEHOLDER.search(cmd.removeprefix("dora "))


def test_the_docs_show_commands():
    assert len(COMMANDS) > 20
    assert sum(1 for _, c, b in COMMANDS if b and concrete(c)) >= 8


@pytest.mark.parametrize("where, cmd", [(w, c) for w, c, _ in COMMANDS], ids=[w for w, _, _ in COMMANDS])
def test_subcommand_and_options_exist(where, cmd):
    subs = subparsers()
    words = shlex.split(cmd)
    assert words[1] in subs, f"{where}: `{cmd}`: no subcommand {words[1]!r}"
    opts = set(subs[words[1]]._option_string_actions)
    for w in words[2:]:
        flag = w.split("=")[0].strip("[]|")
        if flag.startswith("--"):
            assert flag in opts, f"{where}: `{cmd}`: `dora {words[1]}` has no option {flag}"


@pytest.mark.parametrize("where, cmd", [(w, c) for w, c, b in COMMANDS if b and concrete(c)],
                         ids=[w for w, c, b in COMMANDS if b and concrete(c)])
def test_concrete_commands_parse(where, cmd):
    args = build_parser().parse_args(shlex.split(cmd)[1:])   # SystemExit (exit 2) on a bad command
    assert callable(args.func)


@pytest.mark.parametrize("where, cmd", [(w, c) for w, c, b in COMMANDS
                                        if b and concrete(c) and shlex.split(c)[1] in CHEAP],
                         ids=[w for w, c, b in COMMANDS if b and concrete(c) and shlex.split(c)[1] in CHEAP])
def test_cheap_commands_run(where, cmd, tmp_path, capsys):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        words = [w if not (ROOT / w).exists() or "/" not in w else str(ROOT / w) for w in shlex.split(cmd)[1:]]
        if "plan.json" in words[2:] and words[0] != "plan":   # a command that reads the plan `dora plan` wrote
            assert main(["plan", words[1], "--out", "plan.json"]) == 0
        assert main(words) == 0, f"{where}: `{cmd}` failed: {capsys.readouterr().err}"
    finally:
        os.chdir(cwd)


def test_no_merge_conflict_markers_in_the_docs():
    # A merge left `<<<<<<< HEAD` ... `>>>>>>> branch` in README.md once; the docs are what
    # users read first, so a conflict marker anywhere in them is a bug.
    bad = []
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("trained_agents/*/README.md"))]
    for p in docs:
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if re.match(r"(<{7}|>{7}|={7})( |$)", line):
                bad.append(f"{p.relative_to(ROOT)}:{n}")
    assert not bad, bad
