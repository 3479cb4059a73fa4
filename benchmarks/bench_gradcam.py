"""Grad-CAM fidelity per method and layer: pointing game on real-patch composites, deletion/insertion curves.

Usage (from the repository; a trained simple-cnn at 96 px and one at 50 px, composed from their test splits):
    nice -n 5 python benchmarks/bench_gradcam.py \\
        --model runs/compare-hcd/pytorch-seed/fold-0=../shared/data/hcd-train \\
        --model /tmp/idc50=../shared/data/idc-breast --json /tmp/bench_gradcam.json

Per model: (a) pointing game: normal test patches with the centre S/2 x S/2 of a tumour test patch pasted into a
random quadrant (chance 25 %), and tumour/normal halves (left/right or top/bottom, chance 50 %); among the
composites the model calls tumour, the share whose map peak lies in the tumour part, with a Wilson 95 % CI.
(b) deletion/insertion (Petsiuk et al. 2018) on tumour-predicted test patches, 2 % of the pixels per step, blurred
baseline; the random pixel order is the control. (c) the corner share: how often the map peak of a
tumour-predicted test patch falls in a corner cell of a 4 x 4 grid (area 25 %; the position artefact reported on
50 px patches). (d) flat maps: the share of near-blank patches (near-white noise) and of tumour-predicted test
patches whose map the flat rule (`histoscan.gradcam.cam.FLAT_SPREAD`) shows as "no localised evidence".
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from fidelity import (
    centre_composites,
    deletion_insertion,
    half_composites,
    paired_difference,
    pointing_game,
    quadrant_composites,
    smooth_random_maps,
    wilson_ci,
)

from histoscan.data.store import resolve_store
from histoscan.gradcam.cam import FLAT_SPREAD, cam_maps
from histoscan.gradcam.images import default_explainer
from histoscan.inference.predictor import TorchPredictor, load_predictor
from histoscan.models import create_model
from histoscan.run import RunDir

CANDIDATES = [
    "gradcam@features.4.2",
    "gradcam@features.3.2",
    "gradcam@features.2.2",
    "gradcam++@features.4.2",
    "gradcam++@features.3.2",
    "gradcam@features.3.2+features.4.2",
    "integrated-gradcam@features.4.2",
    "integrated-gradcam@features.3.2",
]


def test_patches(run: Path, data: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the run's held-out "test" rows."""
    split = RunDir(run).read_split()
    store = resolve_store(data)
    if store.size != size:
        store = resolve_store(data, image_size=size)
    rows = np.array([i for i, k in enumerate(store.ids) if split.get(k) == "test"])
    if not len(rows):
        sys.exit(f"{run}: no test rows of {data} in {RunDir.SPLIT}")
    return np.asarray(store.images[rows]), store.labels[rows].astype(int)


def corner_share(maps: np.ndarray) -> tuple[int, int]:
    """(peaks in a corner cell of a 4 x 4 grid, maps with a peak)."""
    n, h, w = maps.shape
    flat = maps.reshape(n, -1)
    ok = flat.max(1) > flat.min(1)
    r, c = np.unravel_index(flat.argmax(1), (h, w))
    corner = ((r * 4 // h) % 3 == 0) & ((c * 4 // w) % 3 == 0)
    return int((corner & ok).sum()), int(ok.sum())


def bench_model(pred: TorchPredictor, data: str, args: argparse.Namespace, candidates: list[str]) -> dict:
    """All measurements for one model."""
    card, clf = pred.card, pred.classifier
    size, thr = card.image_size, card.threshold
    images, labels = test_patches(Path(card.run_dir or ""), data, size)
    rng = np.random.default_rng(args.seed)
    probs = pred.predict_proba(images)
    tum = images[(labels == 1) & (probs >= thr)]
    nor = images[(labels == 0) & (probs < thr)]
    rng.shuffle(tum)
    rng.shuffle(nor)
    k = args.composites
    tum_k, nor_k = tum[rng.integers(0, len(tum), k)], nor[rng.integers(0, len(nor), k)]
    sets = {
        "quadrant": quadrant_composites(tum_k, nor_k, rng),
        "halves": half_composites(tum_k, nor_k, rng),
        "centre": centre_composites(tum_k, nor_k),
    }
    curve_imgs = tum[: args.curves]
    prior_imgs = tum[args.curves : args.curves + 300]
    curve_base = nor[rng.integers(0, len(nor), len(curve_imgs))]  # deleted pixels become normal tissue
    blank = np.clip(rng.normal(238, 6, (32, size, size, 3)), 0, 255).astype(np.uint8)
    bright = images[np.argsort(-images.reshape(len(images), -1).mean(1))[:32]]  # real near-blank patches
    out: dict = {
        "run": str(card.run_dir),
        "size": size,
        "threshold": thr,
        "n_test": len(images),
        "model": card.model,
        "rows": {},
        "blank_prob_median": float(np.median(pred.predict_proba(blank))),
        "brightest_mean_grey": float(bright.mean()),
    }
    side = feature_side(clf, "features.4.2", size)
    random_maps = smooth_random_maps(len(curve_imgs), size, side, rng)
    rc = deletion_insertion(pred.predict_proba, curve_imgs, random_maps, rng, baseline=curve_base)
    out["random"] = {
        "deletion_auc": rc.deletion_auc,
        "insertion_auc": rc.insertion_auc,
        "n": len(curve_imgs),
        "side": side,
    }
    for cand in candidates:
        method, layer = cand.split("@")
        t0 = time.perf_counter()
        row: dict = {}
        for kind, (comp, masks) in sets.items():
            res = cam_maps(clf, comp, layer, thr, method=method, zero_flat=False)
            pt = pointing_game(res.maps, masks, res.probabilities >= thr)
            row[kind] = {"hits": pt.hits, "n": pt.n, "rate": pt.rate, "ci95": pt.ci95, "chance": pt.chance}
        res = cam_maps(clf, curve_imgs, layer, thr, method=method, zero_flat=False)
        cur = deletion_insertion(pred.predict_proba, curve_imgs, res.maps, rng, baseline=curve_base)
        # the method's position prior: its mean map over other tumour patches, the same for every image
        prior_map = cam_maps(clf, prior_imgs, layer, thr, method=method, zero_flat=False).maps.mean(0)
        prior = deletion_insertion(
            pred.predict_proba,
            curve_imgs,
            np.broadcast_to(prior_map, res.maps.shape),
            rng,
            baseline=curve_base,
        )
        hits, n = corner_share(res.maps)
        row["curves"] = {
            "deletion_auc": cur.deletion_auc,
            "insertion_auc": cur.insertion_auc,
            "n": len(curve_imgs),
            "deletion_vs_random": paired_difference(cur.deletion_aucs, rc.deletion_aucs),
            "insertion_vs_random": paired_difference(cur.insertion_aucs, rc.insertion_aucs),
            "prior_deletion_auc": prior.deletion_auc,
            "prior_insertion_auc": prior.insertion_auc,
            "deletion_mean": cur.deletion.mean(0).round(4).tolist(),
            "insertion_mean": cur.insertion.mean(0).round(4).tolist(),
        }
        row["corner"] = {"hits": hits, "n": n, "ci95": wilson_ci(hits, n)}
        row["spread"] = {
            "blank": cam_maps(clf, blank, layer, thr, method=method).spread.round(4).tolist(),
            "brightest": cam_maps(clf, bright, layer, thr, method=method).spread.round(4).tolist(),
            "tumour": res.spread.round(4).tolist(),
            "normal": cam_maps(clf, nor[: args.curves], layer, thr, method=method).spread.round(4).tolist(),
        }
        row["map_side"] = feature_side(clf, layer.split("+")[-1], size)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        out["rows"][cand] = row
        print(
            f"{size} px {cand}: {json.dumps({k: row[k] for k in ('quadrant', 'halves', 'centre', 'corner')})}"
        )
        print(
            f"   deletion {cur.deletion_auc:.3f} (prior {prior.deletion_auc:.3f}) insertion {cur.insertion_auc:.3f}"
            f" (prior {prior.insertion_auc:.3f}) ({row['seconds']} s)"
        )
    return out


def feature_side(clf: torch.nn.Module, layer: str, size: int) -> int:
    """Side of `layer`'s feature map at `size` px."""
    seen: list[int] = []
    mod = dict(clf.net.named_modules())[layer]
    hook = mod.register_forward_hook(lambda _m, _i, o: seen.append(o.shape[-1]))
    with torch.no_grad():
        clf(torch.zeros(1, size, size, 3, dtype=torch.uint8))
    hook.remove()
    return seen[0]


def markdown(results: list[dict]) -> str:
    """The table for docs/benchmarks.md."""
    lines = [
        "| px | method @ layer | map | pointing: quadrant (chance 25 %) | halves (50 %) | centre (25 %) "
        "| deletion AUC ↓ (Δ random) [prior] | insertion AUC ↑ (Δ random) [prior] | corner peaks (25 %) "
        "| flat maps: blank / brightest / tumour / normal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pt(d: dict) -> str:
        return f"{d['rate']:.0%} [{d['ci95'][0]:.0%}, {d['ci95'][1]:.0%}] ({d['hits']}/{d['n']})"

    def auc(c: dict, kind: str) -> str:
        d = c[f"{kind}_vs_random"]
        return (
            f"{c[f'{kind}_auc']:.3f} ({d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]) [{c[f'prior_{kind}_auc']:.3f}]"
        )

    for res in results:
        s = res["size"]
        default = "@".join(
            default_explainer(res["model"], create_model(res["model"]), s)
        )  # as the code is now
        for cand, row in res["rows"].items():
            c = row["curves"]
            f = {k: np.mean(np.asarray(v) < FLAT_SPREAD) for k, v in row["spread"].items()}
            corner = f"{row['corner']['hits'] / max(row['corner']['n'], 1):.0%}"
            mark = " (default)" if cand == default else ""
            lines.append(
                f"| {s} | {cand}{mark} | {row['map_side']}² | {pt(row['quadrant'])} | {pt(row['halves'])} "
                f"| {pt(row['centre'])} "
                f"| {auc(c, 'deletion')} | {auc(c, 'insertion')} | {corner} "
                f"| {f['blank']:.0%} / {f['brightest']:.0%} / {f['tumour']:.0%} / {f['normal']:.0%} |"
            )
        r = res["random"]
        lines.append(
            f"| {s} | random {r['side']}² maps (control) | – | – | – | – | {r['deletion_auc']:.3f} "
            f"| {r['insertion_auc']:.3f} | – | – |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], help="RUN=DATA (repeatable)")
    ap.add_argument("--composites", type=int, default=300, help="composites of each kind per model")
    ap.add_argument("--curves", type=int, default=60, help="tumour-predicted test patches for the curves")
    ap.add_argument("--candidates", default=",".join(CANDIDATES), help="method@layer[+layer],...")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--table-from", type=Path, help="only print the table of an earlier --json (no models)")
    args = ap.parse_args()
    if args.table_from:
        print(markdown(json.loads(args.table_from.read_text())["results"]))
        return
    torch.set_num_threads(args.threads)
    results = []
    t0 = time.perf_counter()
    for spec in args.model:
        run, _, data = spec.partition("=")
        pred = load_predictor(run, "torch", "cpu")
        assert isinstance(pred, TorchPredictor)
        results.append(bench_model(pred, data, args, args.candidates.split(",")))
    table = markdown(results)
    print(table)
    meta = {
        "flat_spread": FLAT_SPREAD,
        "wall_s": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "argv": sys.argv[1:],
    }
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=1))


if __name__ == "__main__":
    main()
