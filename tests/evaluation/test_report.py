"""Report: the most confident errors, figures, and one self-contained, escaped HTML file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from histoscan.evaluation.metrics import compute_metrics
from histoscan.evaluation.report import confident_errors, write_figures, write_report
from histoscan.run import RunDir


def test_confident_errors_order_and_limit() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    p = np.array([0.9, 0.6, 0.2, 0.1, 0.45, 0.8, 0.99, 0.3])
    fp, fn = confident_errors(y, p, 0.5)
    assert fp.tolist() == [6, 0, 1]  # false positives, most confident (highest p) first
    assert fn.tolist() == [3, 7, 4]  # false negatives, lowest p first
    fp2, fn2 = confident_errors(y, p, 0.5, k=1)
    assert (fp2.tolist(), fn2.tolist()) == ([6], [3])


def _case(n: int = 40) -> tuple[np.ndarray, np.ndarray, list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.25, n), 0, 1)
    ids = [f"patch{i}" for i in range(n)]
    ids[0], p[0] = "<script>alert(1)</script>", 0.95  # a confident false positive: shown in the grid
    groups = [f"pt{i % 5}" for i in range(n)]
    images = rng.integers(0, 255, (n, 12, 12, 3), dtype=np.uint8)
    return y, p, ids, groups, images


def test_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    y, p, ids, groups, images = _case()
    m = compute_metrics(y, p, 0.5, groups, n_boot=100)
    m.update(model="simple-cnn", data="/data/x", subset="all", threshold_source="threshold.json", tta=8)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text(
        "epoch,train_loss,val_loss,val_auc\n0,0.7,0.69,0.6\n1,0.5,0.6,\n"
    )
    figs = write_figures(tmp_path, y, p, m, RunDir(tmp_path / "run"))
    assert set(figs) == {"roc", "pr", "confusion", "calibration", "curves"}
    asked = []
    html = write_report(
        tmp_path,
        m,
        y,
        p,
        ids,
        groups,
        lambda pos: asked.append(list(pos)) or images[pos],
        {"model": "simple-cnn", "lr": 0.001},
        ["a <b>note</b>"],
        figs,
    ).read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html and "a &lt;b&gt;note&lt;/b&gt;" in html
    srcs = re.findall(r"src='([^']*)'", html)
    n_err = int((y == 0).__and__(p >= 0.5).sum() + (y == 1).__and__(p < 0.5).sum())
    assert len(srcs) == 5 + min(n_err, 32) and all(s.startswith("data:image/png;base64,") for s in srcs)
    fp, fn = confident_errors(y, p, 0.5)
    assert asked == [fp.tolist(), fn.tolist()]
    lo, hi = m["ci95"]["auc"]
    assert f"{m['auc']:.4f}" in html and f"{lo:.4f} – {hi:.4f}" in html
    assert "5 groups" in html and "lr: 0.001" in html
    assert f"<td>tumour (1)</td><td>{int(y.sum())}</td>" in html


def test_no_curves_without_metrics_csv_and_bare_checkpoint(tmp_path: Path) -> None:
    y, p, ids, _, images = _case(10)
    m = compute_metrics(y, p, 0.5, n_boot=0)
    figs = write_figures(tmp_path, y, p, m, None)
    assert "curves" not in figs and not (tmp_path / "curves.png").exists()
    html = write_report(tmp_path, m, y, p, ids, None, lambda pos: images[pos], None, (), figs).read_text()
    assert "No training curves" in html and "not available (bare checkpoint)" in html
    assert "No patient/slide groups" in html and "no bootstrap" in html
