"""What every benchmark records next to its numbers: the machine, the commit, and the place in
benchmarks/RESULTS.md the numbers go to."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
HEADER = ("# Benchmark results\n\nEvery number here was measured by the command named in its "
          "section, on the machine named there.\n")


def machine(device: str = "cpu") -> str:
    """The GPU's name, or the CPU model with its core count and torch's thread count."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def commit() -> str:
    """Short hash of HEAD, with "+dirty" when tracked files have changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               text=True, capture_output=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _read() -> str:
    return RESULTS.read_text() if RESULTS.exists() else HEADER


def append_to_section(section: str, intro: str, entry: str) -> None:
    """Appends ``entry`` at the end of the ``section`` heading's part of RESULTS.md (created with
    ``intro`` below the heading if missing), keeping earlier runs."""
    old = _read()
    if section not in old:
        RESULTS.write_text(old.rstrip("\n") + f"\n\n{section}\n\n{intro}\n" + entry)
        return
    start = old.index(section)
    nxt = old.find("\n## ", start + len(section))
    if nxt < 0:
        RESULTS.write_text(old.rstrip("\n") + "\n" + entry)
    else:
        RESULTS.write_text(old[:nxt].rstrip("\n") + "\n" + entry + old[nxt:])


def record(section: str, intro: str, script: str, argv, dev: str, details: str,
           load_before, load_after, text: str) -> None:
    """Appends one run to ``section`` (see append_to_section): a heading with the date and the
    commit, the machine ``dev``, the command (``script`` with ``argv``, default sys.argv[1:]),
    ``details`` (markdown list lines, each ending in a newline), the 1-minute load averages
    before / after (os.getloadavg() tuples) and the result ``text``."""
    date = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    cmd = f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    entry = (f"\n### {date}, commit {commit()}\n\n"
             f"- Machine: {dev}\n"
             f"- Command: `{cmd.strip()}`\n"
             + details +
             f"- Load average (1 min) before / after: {load_before[0]:.2f} / "
             f"{load_after[0]:.2f}\n\n{text}\n")
    append_to_section(section, intro, entry)
    print(f"appended to {RESULTS.relative_to(ROOT)}", file=sys.stderr)


def replace_block(start: str, end: str, text: str) -> None:
    """Replaces the block between the ``start`` and ``end`` marker lines of RESULTS.md by
    ``text`` (which carries the markers), or appends it when the markers are missing."""
    old = _read()
    if start in old and end in old:
        pre, rest = old.split(start, 1)
        RESULTS.write_text(pre + text + rest.split(end, 1)[1])
    else:
        RESULTS.write_text(old.rstrip() + "\n\n" + text + "\n")
