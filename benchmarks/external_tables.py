"""The tables of benchmarks/compare_external.py from kept results: each recipe as shipped (its own TTA,
temperature and threshold rule, fitted on its validation logits), or at one view of the kept logits; the paired
bootstrap CI of seed-mean AUC differences; calibration and threshold-rule rows."""

from __future__ import annotations

import numpy as np
from paired_bootstrap import _resample_weights, weighted_auc

from histoscan.scoring.calibration import calibration_report, fit_decision, fit_temperature
from histoscan.scoring.metrics import compute_metrics, select_threshold
from histoscan.utils.numeric import sigmoid

# the paired columns: the PyTorch seed, the 8-epoch default the decision was made against, and the default since
# (onecycle-30; tests/training/test_decision.py holds it equal to the CLI's defaults) that later candidates face
BASELINES = ("pytorch-seed", "default-54db6fc", "onecycle-30")
LABEL = {"onecycle-30": "onecycle-30 (default now)"}


def seed_mean_auc_diff(
    a: list[dict], b: list[dict], key: str | None, n_boot: int = 2000
) -> dict[str, object]:
    """Seed-mean AUC of recipe a minus recipe b over the same test patches, with a paired bootstrap 95 % CI."""
    ids = a[0]["test"]["id"]
    for r in a + b:
        if not np.array_equal(r["test"]["id"], ids):
            raise SystemExit("kept predictions of different test sets cannot be paired")
    y = a[0]["test"]["label"]
    w = _resample_weights(len(y), None, n_boot, 0)

    def mean_auc(rs: list[dict]) -> np.ndarray:
        return np.mean([weighted_auc(y, r["test"][key or view_key(r)], w) for r in rs], axis=0)

    d = mean_auc(a) - mean_auc(b)
    lo, hi = np.percentile(d[1:], [2.5, 97.5])
    return {"diff": float(d[0]), "ci95": [float(lo), float(hi)]}


def view_key(r: dict) -> str:
    """The kept logits a result is scored with as shipped: its recipe's `tta` (0 or 8 views are kept)."""
    tta = int(r["decision"]["tta"])
    if tta not in (0, 8):
        raise SystemExit(f"tta {tta}: the kept logits hold 1 and 8 views only")
    return "logit_tta8" if tta == 8 else "logit"


def shipped(r: dict, key: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(test labels, test probabilities, threshold) as the run decides: `fit_decision` on its validation logits
    with its recipe's settings, exactly what `histoscan train` writes and evaluate/predict/slide/serve apply."""
    key = key or view_key(r)
    d = r["decision"]
    fitted = fit_decision(
        r["val"]["label"], r["val"][key], d["calibrate"], d["threshold_rule"], d["target_sensitivity"]
    )
    t = fitted["calibration"]["temperature"]
    return r["test"]["label"], sigmoid(r["test"][key] / t), float(fitted["threshold"]["threshold"])


def train_minutes(results: list[dict]) -> list[float]:
    """Each seed's training minutes as the reference CPU takes them alone. The wall clock a kept result records
    counts every pause of a resumed run and every job the machine ran beside it (epochs of one run measured 24 s
    to 1,037 s here), so a seed with per-epoch times (`epoch_seconds`) is timed as: the recipe's fastest first
    epoch (start-up included) + its other epochs x the median non-first epoch over all its seeds. A seed
    without them keeps its wall clock."""
    firsts = [r["epoch_seconds"][0] for r in results if r.get("epoch_seconds")]
    rest = [s for r in results for s in (r.get("epoch_seconds") or [])[1:]]
    out = []
    for r in results:
        if r.get("epoch_seconds") and rest:
            out.append((min(firsts) + (r["epochs_trained"] - 1) * float(np.median(rest))) / 60)
        else:
            out.append(r["seconds"] / 60)
    return out


def recipe_row(results: list[dict], key: str | None = None) -> dict[str, object]:
    """Mean and spread of AUC over seeds; balanced accuracy at each run's threshold; ECE; train minutes. `key`
    None: each result as shipped (its own TTA, calibration and threshold rule)."""
    aucs, bas, eces = [], [], []
    for r in results:
        y, p, t = shipped(r, key)
        m = compute_metrics(y, p, t, n_boot=0)
        aucs.append(m["auc"])
        bas.append(m["balanced_accuracy"])
        eces.append(m["ece"])
    return {
        "seeds": [r["setup"]["seed"] for r in results],
        "auc": float(np.mean(aucs)),
        "auc_each": [round(a, 4) for a in aucs],
        "spread": float(max(aucs) - min(aucs)),
        "balanced_accuracy": float(np.mean(bas)),
        "ece": float(np.mean(eces)),
        "ece_max": float(max(eces)),
        "minutes": float(np.mean(train_minutes(results))),
        "minutes_max": float(max(train_minutes(results))),
        "epochs": [r["epochs_trained"] for r in results],
    }


RULES = ("youden", "sensitivity-0.90", "0.5-calibrated")


def calibration_rows(results: list[dict], key: str | None) -> dict[str, object]:
    """Temperature fitted on each run's validation split, applied to the test set: ECE / Brier / NLL before and
    after (mean over seeds, and the worst seed's ECE), and each threshold rule's test balanced accuracy,
    sensitivity and specificity (thresholds chosen on validation only)."""
    cal, rules = [], {r: [] for r in RULES}
    for r in results:
        k = key or view_key(r)
        t = fit_temperature(r["val"]["label"], r["val"][k])
        cal.append(calibration_report(r["test"]["label"], r["test"][k], t))
        yv, pv = r["val"]["label"], sigmoid(r["val"][k] / t)
        thresholds = {
            "youden": select_threshold(yv, pv, "youden"),
            "sensitivity-0.90": select_threshold(yv, pv, "sensitivity", 0.90),
            "0.5-calibrated": 0.5,
        }
        y, p = r["test"]["label"], sigmoid(r["test"][k] / t)
        for rule, thr in thresholds.items():
            m = compute_metrics(y, p, thr, n_boot=0)
            rules[rule].append((m["balanced_accuracy"], m["recall"], m["specificity"]))
    out: dict[str, object] = {k: float(np.mean([c[k] for c in cal])) for k in cal[0]}
    out["ece_after_max"] = float(max(c["ece_after"] for c in cal))
    out["ece_before_max"] = float(max(c["ece_before"] for c in cal))
    out["rules"] = {rule: [float(v) for v in np.mean(vals, axis=0)] for rule, vals in rules.items()}
    return out


def calibration_table(name: str, results: dict[str, list[dict]], key: str | None) -> str:
    view = _view(key)
    lines = [
        f"### {name} ({view}): temperature scaling fitted on each run's validation split; threshold rules",
        "",
        "ECE of p(tumour), 15 equal-width bins (mean over seeds, worst seed in brackets); Brier and NLL before → "
        "after. Rules (thresholds chosen on validation, applied to the calibrated test probabilities): balanced "
        "accuracy / sensitivity / specificity on the test set.",
        "",
        "| recipe | T | ECE before | ECE after | Brier | NLL | " + " | ".join(RULES) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(RULES),
    ]
    for recipe, rs in results.items():
        c = calibration_rows(rs, key)
        rules = " | ".join("{:.3f} / {:.3f} / {:.3f}".format(*c["rules"][r]) for r in RULES)
        lines.append(
            f"| {recipe} | {c['temperature']:.2f} | {c['ece_before']:.3f} ({c['ece_before_max']:.3f}) | "
            f"{c['ece_after']:.3f} ({c['ece_after_max']:.3f}) | {c['brier_before']:.3f} → {c['brier_after']:.3f} | "
            f"{c['nll_before']:.3f} → {c['nll_after']:.3f} | {rules} |"
        )
    return "\n".join(lines + [""])


def _view(key: str | None) -> str:
    if key is None:
        return "as shipped: each recipe's own TTA, temperature and threshold rule, fitted on its validation split"
    return "8-view TTA" if key == "logit_tta8" else "no TTA"


def table(name: str, results: dict[str, list[dict]], key: str | None, command: str) -> str:
    view = _view(key)
    n = len(next(iter(results.values()))[0]["test"]["label"])
    lines = [
        f"### {name} ({n} patches, {view}): trained on all of the training set, each recipe at its own budget",
        "",
        "No slide ids exist: patches of one slide may sit in both sets, so these figures may be optimistic for new "
        "slides. CIs resample test patches (paired: both recipes on the same resample, AUC averaged over seeds).",
        "",
        "| recipe | seeds | AUC mean (each) | spread | balanced acc. | ECE (max) "
        + "".join(f"| − {LABEL.get(b, b)} [paired 95 % CI] " for b in BASELINES)
        + "| epochs | train time |",
        "|---|---|---|---|---|---|" + "---|" * len(BASELINES) + "---|---|",
    ]
    for recipe, rs in results.items():
        row = recipe_row(rs, key)
        diffs = []
        for b in BASELINES:
            if b == recipe or b not in results:
                diffs.append("–")
                continue
            d = seed_mean_auc_diff(rs, results[b], key)
            diffs.append(f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
        each = ", ".join(f"{a:.3f}" for a in row["auc_each"])
        lines.append(
            f"| {recipe} | {len(rs)} | {row['auc']:.3f} ({each}) | {row['spread']:.3f} | "
            f"{row['balanced_accuracy']:.3f} | {row['ece']:.3f} ({row['ece_max']:.3f}) | "
            + " | ".join(diffs)
            + f" | {','.join(map(str, row['epochs']))} | {row['minutes']:.0f} min |"
        )
    lines += [
        "",
        "Train time: mean over seeds on the machine that trained them, from each run's epoch times with pauses "
        "and other jobs left out (`external_tables.train_minutes`).",
        "",
        f"Command: `{command}`",
        "",
    ]
    return "\n".join(lines)
