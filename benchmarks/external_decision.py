"""The default-recipe decision (issue 18, point 3), computed from kept results instead of read off tables.

A recipe may replace the current default only when all three hold:
  1. on the external test set, the paired bootstrap 95 % CI of its seed-mean AUC minus the current default's is
     above zero (at least 3 seeds: a one-seed screen cannot qualify);
  2. on the second set's kept 5-fold grouped cross-validation (compare_recipes.py's KEEP/NAME, e.g. idc-breast),
     its pooled AUC is not below the current default's (the kept CV whose training configuration is the recipe's,
     so each runs at its own budget; the paired CI over patients is reported beside it);
  3. its training takes at most 30 minutes (the slowest seed, on the machine that trained it, timed from its
     epochs by external_tables.train_minutes: pauses and other jobs left out).
Among those that qualify the highest test AUC wins; none qualifying keeps the default. The issue's targets (AUC,
balanced accuracy, spread over seeds, worst seed's ECE) are reported for each recipe, met or not: a missed target
is a finding, not a rule.
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import same_config
from compare_recipes import paired, read_rows
from external_tables import recipe_row, seed_mean_auc_diff

from histoscan.config import TrainConfig

CURRENT = "default-54db6fc"
MIN_SEEDS = 3
MAX_MINUTES = 30.0
TARGETS = {"auc": 0.965, "balanced_accuracy": 0.90, "spread": 0.01, "ece_max": 0.03}  # ≥, ≥, ≤, ≤
# Fields that say where and how a run trained, not what the recipe is: two runs of one recipe may differ in them.
NOT_RECIPE = (
    "data", "out", "seed", "test_fraction", "folds", "fold", "num_workers", "limit_batches", "precision",
    "accelerator", "devices", "num_nodes", "logger", "image_size", "fit", "mpp", "stain", "skip_bad",
    "threshold_rule", "calibrate", "tta", "target_sensitivity",
)  # fmt: skip
DEFAULTS = TrainConfig().to_dict()


def recipe_fields(config: dict[str, object]) -> dict[str, object]:
    """The training recipe part of a resolved configuration (JSON-normalised)."""
    return json.loads(json.dumps({k: v for k, v in config.items() if k not in NOT_RECIPE}))


def kept_cv(cv_keep: Path, config: dict[str, object]) -> tuple[str, list[dict[str, str]]] | None:
    """(name, pooled predictions) of the kept cross-validation trained with `config`'s recipe, if any."""
    wanted = recipe_fields(config)
    for info_path in sorted(cv_keep.glob("*.json")):
        saved = (json.loads(info_path.read_text()).get("setup") or {}).get("config")
        csv_path = info_path.with_suffix(".csv")
        if saved and csv_path.is_file() and same_config(recipe_fields(saved), wanted, DEFAULTS):
            return info_path.stem, read_rows(csv_path)
    return None


def decide(
    results: dict[str, list[dict]],
    configs: dict[str, dict[str, object]],
    cv_keep: Path,
    current: str = CURRENT,
) -> dict[str, object]:
    """Each recipe's standing against `current` under the three rules and the targets; the winner (or None).
    `configs` holds each recipe's resolved TrainConfig (as a dict) at any seed."""
    if current not in results:
        raise SystemExit(f"decision: the current default {current!r} must be among --recipes")
    cur_cv = kept_cv(cv_keep, configs[current])
    rows: dict[str, dict[str, object]] = {}
    for name, rs in results.items():
        row = recipe_row(rs)
        r: dict[str, object] = {
            "seeds": len(rs),
            "auc": row["auc"],
            "minutes_max": row["minutes_max"],
        }
        r["targets"] = {k: row[k] for k in TARGETS}
        r["met"] = {
            k: (row[k] >= goal if k in ("auc", "balanced_accuracy") else row[k] <= goal)
            for k, goal in TARGETS.items()
        }
        if name == current:
            rows[name] = {**r, "qualifies": None, "why": "the current default"}
            continue
        why = []
        r["test_diff"] = seed_mean_auc_diff(rs, results[current], None)
        if len(rs) < MIN_SEEDS:
            why.append(f"{len(rs)} seed(s) < {MIN_SEEDS}")
        if r["test_diff"]["ci95"][0] <= 0:
            why.append("test CI vs default not above 0")
        cv = kept_cv(cv_keep, configs[name])
        if cv is None or cur_cv is None:
            missing = name if cv is None else current
            why.append(f"no kept {cv_keep.name} CV of {missing}'s recipe")
        else:
            r["cv_name"], d = cv[0], paired(cv[1], cur_cv[1])["auc"]
            r["cv"] = {"a": d["a"], "b": d["b"], "diff": d["diff"], "ci95": d["ci95"]}
            if d["diff"] < 0:
                why.append(f"{cv_keep.name} AUC below default's")
        if r["minutes_max"] > MAX_MINUTES:
            why.append(f"train {r['minutes_max']:.0f} min > {MAX_MINUTES:.0f}")
        rows[name] = {**r, "qualifies": not why, "why": "; ".join(why) or "all three rules hold"}
    winners = sorted((r["auc"], n) for n, r in rows.items() if r["qualifies"])
    return {"rows": rows, "winner": winners[-1][1] if winners else None, "current": current}


def decision_table(name: str, decision: dict[str, object], cv_name: str) -> str:
    """The decision as markdown: the three rules per recipe, the targets met or not, and the verdict."""
    cur = decision["current"]
    lines = [
        f"### {name}: the default decision (issue 18, point 3), computed by benchmarks/external_decision.py",
        "",
        f"Rules: (1) paired 95 % CI of seed-mean test AUC minus {cur}'s above 0, ≥ {MIN_SEEDS} seeds; (2) pooled "
        f"AUC in {cv_name}'s 5-fold patient-grouped CV not below {cur}'s recipe there (each at its own budget; "
        f"paired CI over patients shown); (3) slowest seed trains in ≤ {MAX_MINUTES:.0f} min. Targets (reported, "
        "not rules): AUC ≥ 0.965, balanced accuracy ≥ 0.90, spread over seeds ≤ 0.01, worst seed's ECE ≤ 0.03.",
        "",
        f"| recipe | seeds | (1) test AUC − {cur} [CI] | (2) {cv_name} AUC − {cur} [CI] | (3) train min "
        "| AUC | bal. acc. | spread | ECE max | qualifies |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def mark(r: dict, k: str, fmt: str) -> str:
        return f"{r['targets'][k]:{fmt}} {'✓' if r['met'][k] else '✗'}"

    for recipe, r in decision["rows"].items():
        test = "–"
        if "test_diff" in r:
            d = r["test_diff"]
            test = f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        cv = "–" if recipe == cur else "no kept CV"
        if "cv" in r:
            c = r["cv"]
            cv = f"{c['a']:.3f} − {c['b']:.3f} = {c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
        verdict = "current" if r["qualifies"] is None else ("yes" if r["qualifies"] else f"no: {r['why']}")
        lines.append(
            f"| {recipe} | {r['seeds']} | {test} | {cv} | {r['minutes_max']:.0f} | {mark(r, 'auc', '.3f')} | "
            f"{mark(r, 'balanced_accuracy', '.3f')} | {mark(r, 'spread', '.3f')} | {mark(r, 'ece_max', '.3f')} | "
            f"{verdict} |"
        )
    win = decision["winner"]
    verdict = (
        f"**{win}** qualifies with the highest test AUC: it becomes the default."
        if win
        else (f"No recipe qualifies: **{cur}** stays the default.")
    )
    return "\n".join(lines + ["", verdict, ""])
