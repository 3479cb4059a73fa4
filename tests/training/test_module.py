"""Training ingredients: schedules with warm-up, label smoothing, mixup/cutmix, weight EMA — by their numbers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from run_fixtures import idc_store

from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.inference.predictor import load_predictor
from histoscan.training.module import cosine_factor, mix_batch
from histoscan.training.train import train


def test_cosine_with_warmup() -> None:
    f = [cosine_factor(s, 10, 110) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.5) and f[109] < 0.001
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))  # then never rises


def test_mixup_is_a_convex_blend_with_soft_targets() -> None:
    torch.manual_seed(0)
    x = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    y = torch.tensor([0.0, 1.0])
    out, t = mix_batch(x, y, mixup=0.4, cutmix=0.0)
    # each output patch is a constant image whose value equals its soft target (zeros vs ones)
    for i in range(2):
        assert torch.allclose(out[i], torch.full_like(out[i], float(t[i])), atol=1e-6)
    assert bool(((t >= 0) & (t <= 1)).all())


def test_cutmix_target_is_the_pasted_share() -> None:
    torch.manual_seed(3)
    x = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16)])
    y = torch.tensor([0.0, 1.0])
    for _ in range(20):
        out, t = mix_batch(x, y, mixup=0.0, cutmix=1.0)
        for i in range(2):
            share_of_ones = float(out[i, 0].mean())
            assert float(t[i]) == pytest.approx(share_of_ones, abs=1e-6)
    assert mix_batch(x, y, 0.0, 0.0)[0] is x  # off: untouched


def test_warmup_needs_a_step_schedule() -> None:
    with pytest.raises(HistoscanInputError, match="--warmup-epochs 1.0: needs --schedule cosine or onecycle"):
        TrainConfig(schedule="plateau", warmup_epochs=1.0)


def test_warmup_left_unset_is_one_epoch_for_step_schedules_and_none_for_plateau() -> None:
    assert TrainConfig(schedule="plateau").warmup_epochs == 0.0
    assert TrainConfig(schedule="cosine").warmup_epochs == TrainConfig(schedule="onecycle").warmup_epochs == 1.0
    assert TrainConfig(schedule="onecycle", warmup_epochs=0.0).warmup_epochs == 0.0  # an explicit 0 is kept
    saved = TrainConfig(schedule="cosine").to_dict()
    assert TrainConfig.from_dict(saved).warmup_epochs == 1.0  # config.yaml records the warm-up that was used


@pytest.fixture(scope="module")
def store(idc_root: Path, tmp_path_factory: pytest.TempPathFactory):
    return idc_store(idc_root, tmp_path_factory.mktemp("ingredients"), patients=10, per_class=3)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_train_with_every_ingredient(store, tmp_path: Path, schedule: str) -> None:
    cfg = TrainConfig(
        data=str(store.path), out=str(tmp_path / "run"), epochs=2, batch_size=8, limit_batches=3,
        schedule=schedule, warmup_epochs=1.0, label_smoothing=0.1, mixup=0.4, cutmix=1.0, ema=0.9,
    )  # fmt: skip
    run = train(cfg)
    with (run / "metrics.csv").open() as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert len(lrs) == 2 and lrs[0] <= cfg.lr * 1.0001
    if schedule == "cosine":
        assert lrs[-1] < cfg.lr * 0.05  # decayed to ~0 by the last step
    else:
        assert lrs[-1] < lrs[0]  # one-cycle: past its peak, annealing
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert "current_model_state" in ckpt  # EMA: state_dict holds the averaged weights, the raw ones beside
    averaged = {k: v for k, v in ckpt["state_dict"].items() if k.endswith("weight") and v.is_floating_point()}
    raw = {k: ckpt["current_model_state"][k] for k in averaged}
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged)
    p = load_predictor(run, device="cpu").predict_proba(store.images[:4])
    assert p.shape == (4,) and all(0 <= v <= 1 and not math.isnan(v) for v in p)
