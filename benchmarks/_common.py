"""Helpers shared by the benchmark scripts (run from the repository: `python benchmarks/<name>.py`)."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """The shared data folder: $HISTOSCAN_SHARED_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("HISTOSCAN_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def same_config(saved: dict[str, Any], wanted: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """Whether a kept run's recorded configuration is the wanted one. A field the record lacks (added to
    TrainConfig after it was made) counts as its default, so a new option at its default keeps old results valid;
    a field the record has that is no longer wanted makes it stale."""
    return set(saved) <= set(wanted) and all(saved.get(k, defaults.get(k)) == v for k, v in wanted.items())


def run_timed(cmd: list[str]) -> tuple[float, Any, str, str]:
    """Run a command to completion: (wall s, its own rusage, stdout, stderr); a failure ends the benchmark.

    The child's rusage comes from wait4 (CPU seconds and peak RSS of that process alone); its output goes to
    temporary files, so a chatty child cannot fill a pipe and block.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {shlex.join(cmd)}\n{stdout}{stderr}")
    return wall, usage, stdout, stderr


def replace_block(path: str | Path, key: str, block: str) -> None:
    """Put `block` between `<!-- BEGIN key -->` and `<!-- END key -->` in the markdown file (appended if absent)."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    begin, end = f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"
    new = f"{begin}\n{block}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + new + text[text.index(end) + len(end) :]
    else:
        text = text + "\n" + new + "\n"
    path.write_text(text)
