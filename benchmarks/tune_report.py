"""The table of a `histoscan tune` study for docs/results.md: every trial sorted by its objective, repeats of an
earlier trial's parameters marked, the best configuration, and the parameter importances with their plot.

Usage: python benchmarks/tune_report.py --tune runs/tune-hcd --name hcd-train --markdown docs/results.md
       [--keep docs/results]
Copies the study's trials.csv, importance.png and best.yaml to KEEP/NAME/tune-trials.csv, tune-importance.png and
tune-best.yaml (the run folder is not in the repository; compare_external takes the kept best configuration as
`--extra tune-best:@KEEP/NAME/tune-best.yaml`) and replaces the `tune NAME` block of the markdown file.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path

from _common import replace_block

from histoscan.folders.tune import TuneDir

FINISHED = ("COMPLETE", "PRUNED")  # what the issue counts as a finished trial


def read_trials(folder: TuneDir) -> list[dict[str, str]]:
    if not folder.trials_csv.is_file():
        raise SystemExit(f"--tune {folder.path}: no {TuneDir.TRIALS_CSV} (not a tune folder, or no trial yet)")
    with folder.trials_csv.open(newline="") as f:
        return list(csv.DictReader(f))


def _params(row: dict[str, str], names: list[str]) -> tuple[str, ...]:
    return tuple(row[n] for n in names)


def _fmt(v: str) -> str:
    try:
        x = float(v)
    except ValueError:
        return v
    return f"{x:.3g}" if "." in v or "e" in v else v


def report(
    folder: TuneDir, name: str, figure: str | None, best_file: str | None = None
) -> tuple[str, dict[str, object]]:
    """(markdown block, summary) of a tune folder; `best_file`: where the block says the best configuration is
    (default: the tune folder's best.yaml)."""
    rows = read_trials(folder)
    record = json.loads(folder.record_path.read_text()) if folder.record_path.is_file() else {}
    names = [n for n in (record.get("search_space") or {}) if n in rows[0]] if rows else []
    seen: dict[tuple[str, ...], str] = {}
    for r in rows:  # in trial order, so a repeat points at the first trial with its parameters
        key = _params(r, names)
        r["repeat_of"] = seen.get(key, "") if r["state"] in FINISHED else ""
        if r["state"] in FINISHED:
            seen.setdefault(key, r["trial"])
    finished = [r for r in rows if r["state"] in FINISHED]
    distinct = len({_params(r, names) for r in finished})
    complete = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: -float(r["mean_auc"]))
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    failed = [r for r in rows if r["state"] == "FAIL"]
    folds = f"fold(s) {record.get('use_folds')} of {record.get('folds')}" if record else "its folds"
    lines = [
        f"### tune {name}: {len(finished)} finished trials ({len(complete)} complete, {len(pruned)} pruned; "
        f"{distinct} distinct parameter sets), {len(failed)} failed",
        "",
        f"Objective: mean AUC on the held-out part of {folds} of the training set (never the external test set). "
        "A pruned trial shows the last validation AUC the pruner saw; a repeat (→ n) trained trial n's parameters "
        "again.",
        "",
        "| trial | state | mean AUC | minutes | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for r in complete + pruned + failed:
        auc = f"{float(r['mean_auc']):.4f}" if r["mean_auc"] else "–"
        minutes = f"{float(r['seconds']) / 60:.1f}" if r["seconds"] else "–"
        state = r["state"].lower() + (f" (→ {r['repeat_of']})" if r["repeat_of"] else "")
        lines.append(
            f"| {r['trial']} | {state} | {auc} | {minutes} | " + " | ".join(_fmt(r[n]) for n in names) + " |"
        )
    importance = []
    if folder.path.joinpath(TuneDir.IMPORTANCE_CSV).is_file():
        with folder.path.joinpath(TuneDir.IMPORTANCE_CSV).open(newline="") as f:
            importance = [(r["param"], float(r["importance"])) for r in csv.DictReader(f)]
    if importance:
        lines += [
            "",
            "Parameter importance (Optuna fANOVA over the complete trials): "
            + ", ".join(f"{p} {v:.2f}" for p, v in importance),
        ]
    if figure:
        lines += ["", f"![parameter importance]({figure})"]
    best = complete[0] if complete else None
    if best:
        shown = ", ".join(f"{n}={_fmt(best[n])}" for n in names)
        lines += ["", f"Best: trial {best['trial']}, mean AUC {float(best['mean_auc']):.4f} ({shown}); its full "
                  f"configuration is `{best_file or folder.best_path}`."]  # fmt: skip
    summary = {
        "finished": len(finished),
        "distinct": distinct,
        "failed": len(failed),
        "best": None if best is None else {"trial": int(best["trial"]), "mean_auc": float(best["mean_auc"])},
        "importance": dict(importance),
    }
    return "\n".join(lines) + "\n", summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tune", required=True, help="the tune folder (histoscan tune --out)")
    ap.add_argument("--name", required=True, help="data set name: the block `tune NAME` and the kept folder")
    ap.add_argument("--markdown", help="file whose `tune NAME` block is replaced")
    ap.add_argument("--keep", default="docs/results", help="copies go to KEEP/NAME/")
    args = ap.parse_args()
    folder = TuneDir(args.tune)
    keep = Path(args.keep) / args.name
    figure = None
    rows = read_trials(folder)  # refuses a folder without a study before anything is copied
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder.trials_csv, keep / "tune-trials.csv")
    png = folder.path / TuneDir.IMPORTANCE_PNG
    if png.is_file() and rows:
        shutil.copyfile(png, keep / "tune-importance.png")
        figure = os.path.relpath(keep / "tune-importance.png", Path(args.markdown or ".").resolve().parent)
    best_file = None
    if folder.best_path.is_file():
        shutil.copyfile(folder.best_path, keep / "tune-best.yaml")
        best_file = str(keep / "tune-best.yaml")
    block, summary = report(folder, args.name, figure, best_file)
    print(block)
    print(json.dumps(summary))
    if args.markdown:
        replace_block(args.markdown, f"tune {args.name}", block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
