"""The `dora` command. Each concern contributes its subcommands through a small
`add_commands(sub)` function (dora_rl/commands/*.py), so this file only parses,
dispatches and turns every `DoraError` into one line on stderr with exit code 2."""

from __future__ import annotations

import argparse
import importlib
import sys

from dora_rl.errors import DoraError

# modules that define add_commands(subparsers); each subcommand sets func=callable(args) -> int
COMMAND_MODULES = [
    "dora_rl.commands.basic",      # profile, score
    "dora_rl.commands.simulate",   # simulate
    "dora_rl.commands.planning",   # plan, compare
    "dora_rl.commands.learning",   # train, evaluate
    "dora_rl.commands.runtime",    # run, worker
    "dora_rl.commands.calibrate",  # calibrate
    "dora_rl.commands.demo",       # demo
]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        sys.stderr.write(f"dora: error: {message} (see `dora --help`)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dora", description="QoE-aware hybrid parallelism for distributed edge AI.")
    p.add_argument("--version", action="version", version=f"dora_rl {__import__('dora_rl').__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in COMMAND_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue  # that concern is not built yet
            raise
        m.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DoraError as e:
        msg = " ".join(str(e).split())
        sys.stderr.write(f"dora: error: {msg}\n")
        return 2
    except OSError as e:   # a file the command reads or writes: name it, no traceback
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        sys.stderr.write(f"dora: error: {e.strerror or e}{where}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("dora: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
