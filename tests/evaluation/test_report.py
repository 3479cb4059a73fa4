"""Report: the most confident errors, figures, and one self-contained, escaped HTML file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from histoscan.config import TrainConfig
from histoscan.evaluation.plots import curves_figure
from histoscan.evaluation.report import (
    GRID,
    confident_errors,
    evaluated_mark,
    training_curves,
    write_figures,
    write_report,
)
from histoscan.run import RunDir
from histoscan.scoring.metrics import compute_metrics


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


def test_file_names_and_config_values_are_escaped(tmp_path: Path) -> None:
    """A data file, model name, group or config value with `<`, `&` or quotes shows as text, never as markup."""
    y, p, ids, groups, images = _case(20)
    groups = [f"pt{i % 2}&<b>" for i in range(20)]
    m = compute_metrics(y, p, 0.5, groups, n_boot=0)
    m.update(model="net<i>", data="/data/tumour&normal <2024>.h5", backend="torch", threshold_source="a'b\"c")
    config = {"data": "/data/tumour&normal <2024>.h5", "note": "</pre><script>x</script>"}
    html = write_report(tmp_path, m, y, p, ids, groups, lambda pos: images[pos], config).read_text()
    assert "<title>histoscan evaluation — net&lt;i&gt;</title>" in html
    assert "<h1>histoscan evaluation: net&lt;i&gt; on tumour&amp;normal &lt;2024&gt;.h5</h1>" in html
    assert "<td>pt0&amp;&lt;b&gt;</td><td>10</td>" in html and "<b>" not in html and "<i>" not in html
    assert "note: &lt;/pre&gt;&lt;script&gt;x&lt;/script&gt;" in html and "<script>" not in html
    assert "source: a&#39;b&#34;c" in html and "tumour&normal" not in html


def test_no_curves_without_metrics_csv_and_bare_checkpoint(tmp_path: Path) -> None:
    y, p, ids, _, images = _case(10)
    m = compute_metrics(y, p, 0.5, n_boot=0)
    figs = write_figures(tmp_path, y, p, m, None)
    assert "curves" not in figs and not (tmp_path / "curves.png").exists()
    html = write_report(tmp_path, m, y, p, ids, None, lambda pos: images[pos], None, (), figs).read_text()
    assert "No training curves" in html and "not available (bare checkpoint)" in html
    assert "No patient/slide groups" in html and "no bootstrap" in html


def _run_with_curves(root: Path, monitor: str, first: int = 1) -> RunDir:
    """A run folder whose best val_auc (3rd epoch) and best val_loss (2nd epoch) differ; `first`: the number of
    its first metrics.csv row (1 as training writes it; 0 in runs written before epochs were 1-based)."""
    root.mkdir()
    TrainConfig(out=str(root), model="simple-cnn", monitor=monitor).save(root / "config.yaml")
    values = ["0.7,0.6,0.69,0.61", "0.5,0.7,0.52,0.70", "0.4,0.8,0.58,0.74", "0.3,0.9,0.66,0.72"]
    (root / "metrics.csv").write_text(
        "epoch,train_loss,train_auc,val_loss,val_auc\n"
        + "".join(f"{first + i},{v}\n" for i, v in enumerate(values))
    )
    return RunDir(root)


@pytest.mark.parametrize("first", [1, 0])
def test_evaluated_epoch_is_marked_on_the_curves(tmp_path: Path, first: int) -> None:
    """1-based epochs, as training prints them, also for an old 0-based metrics.csv."""
    by_auc = _run_with_curves(tmp_path / "auc", "val_auc", first)
    by_loss = _run_with_curves(tmp_path / "loss", "val_loss", first)
    assert evaluated_mark(by_auc) == (3, "best val_auc 0.740")
    assert evaluated_mark(by_loss, str(tmp_path / "loss" / "checkpoints" / "best.ckpt")) == (
        2,
        "best val_loss 0.520",
    )
    assert evaluated_mark(by_auc, str(tmp_path / "auc" / "checkpoints" / "last.ckpt")) == (4, "last epoch")
    assert evaluated_mark(None) is None and evaluated_mark(RunDir(tmp_path / "none")) is None
    fig = curves_figure(training_curves(by_auc), evaluated_mark(by_auc))
    for ax in fig.axes:  # a vertical line at epoch 3 in every panel, named in its legend, on an axis 1..4
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "evaluated: epoch 3"]
        assert list(line.get_xdata()) == [3, 3]
        assert "evaluated: epoch 3" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 2, 3, 4]  # the train loss
    plt.close(fig)

    y, p, ids, groups, images = _case()
    m = compute_metrics(y, p, 0.5, groups, n_boot=0)
    m.update(model="simple-cnn", run=str(by_loss.path), checkpoint=str(by_loss.path / "best.ckpt"))
    m.update(backend="onnxruntime", tta=1, threshold_source="threshold.json (youden)")
    figs = write_figures(tmp_path, y, p, m, by_loss)
    html = write_report(tmp_path, m, y, p, ids, groups, lambda pos: images[pos], None, (), figs).read_text()
    assert "Dashed line: the evaluated weights, epoch 2 (best val_loss 0.520)" in html
    assert "<td>evaluated epoch</td><td style='text-align:left'>2 (best val_loss 0.520)</td>" in html


def test_header_names_tta_backend_and_threshold_source(tmp_path: Path) -> None:
    y, p, ids, groups, images = _case(20)
    m = compute_metrics(y, p, 0.42, groups, n_boot=0)
    m.update(model="simple-cnn", backend="torch", tta=8, threshold_source="threshold.json (youden)")
    html = write_report(tmp_path, m, y, p, ids, groups, lambda pos: images[pos]).read_text()
    summary = re.search(r"<p class=summary>(.*?)</p>", html).group(1)
    assert summary == (
        "simple-cnn via torch · TTA 8 dihedral views, logits averaged · threshold 0.42 (threshold.json (youden))"
    )
    assert "<td>backend</td><td style='text-align:left'>torch</td>" in html
    assert "<td style='text-align:left'>0.42 — source: threshold.json (youden)</td>" in html
    assert "trained with" not in html and "limit-batches" not in html  # a full run says nothing of it
    m.update(tta=1)  # `--tta 0`: the patch as it is
    html = write_report(tmp_path, m, y, p, ids, groups, lambda pos: images[pos]).read_text()
    assert "simple-cnn via torch · TTA off · threshold 0.42" in html
    assert (
        "<td>test-time augmentation</td><td style='text-align:left'>off</td>" in html and "1 view" not in html
    )


def test_header_shows_a_run_trained_with_limit_batches(tmp_path: Path) -> None:
    y, p, ids, groups, images = _case(20)
    m = compute_metrics(y, p, 0.5, groups, n_boot=0)
    m.update(model="simple-cnn", backend="torch", tta=8, threshold_source="threshold.json (youden)")
    config = TrainConfig(limit_batches=2).to_dict()
    html = write_report(tmp_path, m, y, p, ids, groups, lambda pos: images[pos], config).read_text()
    assert (
        "<td>trained with</td><td style='text-align:left'>--limit-batches 2: at most 2 train and 2 val batches "
        "per epoch (a smoke run)</td>"
    ) in html
    summary = re.search(r"<p class=summary>(.*?)</p>", html).group(1)
    assert summary.endswith(" · trained with --limit-batches 2")


CHROMIUM = Path(os.environ.get("HISTOSCAN_CHROMIUM", "/usr/bin/chromium"))


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} not installed")
@pytest.mark.timeout(120)
def test_error_captions_do_not_overlap_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    n = 80
    rng = np.random.default_rng(1)
    y = np.arange(n) % 2
    p = np.where(y == 1, 0.1, 0.9) + rng.uniform(-0.05, 0.05, n)  # every patch an error: two full grids
    ids = [f"{rng.bytes(20).hex()}" for _ in range(n)]  # Kaggle HCD ids: 40 characters, no break
    ids[3], p[3] = "a-much-longer-identifier/with/slashes/" + "x" * 60, 0.0  # the first false negative
    images = rng.integers(0, 255, (n, 12, 12, 3), dtype=np.uint8)
    m = compute_metrics(y, p, 0.5, None, n_boot=0)
    html = write_report(tmp_path, m, y, p, ids, None, lambda pos: images[pos])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # the report is self-contained: nothing but the file itself may load
            page.route("**/*", lambda r: r.continue_() if r.request.url == html.as_uri() else r.abort())
            page.goto(html.as_uri())
            boxes = page.eval_on_selector_all(
                ".grid figcaption",
                """els => els.map(e => {
                    const r = e.getBoundingClientRect(), f = e.parentElement.getBoundingClientRect();
                    return {x: r.left, y: r.top, r: r.right, b: r.bottom, fx: f.left, fr: f.right,
                            overflow: e.scrollWidth - e.clientWidth, text: e.textContent};
                })""",
            )
        finally:
            browser.close()
    assert len(boxes) == 2 * GRID
    for i, a in enumerate(boxes):
        assert a["overflow"] <= 0 and a["fx"] - 0.5 <= a["x"] and a["r"] <= a["fr"] + 0.5, a
        for b in boxes[i + 1 :]:
            apart = a["r"] <= b["x"] or b["r"] <= a["x"] or a["b"] <= b["y"] or b["b"] <= a["y"]
            assert apart, (a, b)
    assert any(ids[3] in b["text"] for b in boxes)  # the full id is shown, wrapped, not cut
