"""Helpers the subcommands share: printing tables with rich, JSON output, loading."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from dora_rl.errors import OutputError
from dora_rl.jsonsafe import json_safe

# A pipe or a log file has no width; rich would squeeze tables to 80 columns and cut every
# name ("pla…"). Off a terminal, print at full width unless $COLUMNS says otherwise.
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(json_safe(obj), indent=1) + "\n")


def write_output(path, write: Callable[[Path], None], what: str) -> Path:
    """Write one output (`write(path)`), creating its folder; an unwritable path becomes
    an OutputError naming the path and the cause. Commands print what they computed
    before they call this, so a bad path loses nothing."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as e:
        raise OutputError(f"cannot write the {what} to {str(path)!r}: {e.strerror or e}; "
                          "choose a path in a writable folder") from None
    return path


def table(title: str, columns: list[str], rows: list[list], justify_right_from: int = 1) -> Table:
    t = Table(title=title, show_lines=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i >= justify_right_from else "left")
    for r in rows:
        t.add_row(*[fmt(v) for v in r])
    return t


def fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1e5 or a < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}" if a < 100 else f"{v:.1f}"
    return str(v)
