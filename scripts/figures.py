"""What a bench script measured, as JSON for scripts/bench.py (`--json PATH`).

A figure is a number, or a list of numbers when the script itself repeats
a measurement (bench.py then takes every sample into its median, min and
max). Names end in their unit: `_per_s`, `_ms`, `_us`, `_s`, `_mib`, `_bytes`,
or nothing for a ratio or a count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

Figures = dict[str, float | list[float]]


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, help="also write the figures to this file")


def write(path: Path | None, figures: Figures) -> None:
    if path is not None:
        path.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
