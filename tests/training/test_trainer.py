"""Trainer assembly: fine-tuning that recognises parameters by identity, patience kept on resume, placement."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import BackboneFinetuning

from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.training.trainer import EarlyStop, Finetuning, early_stopping_wait, placement, precision


def test_finetuning_adds_trunk_parameters_whose_values_equal_head_ones() -> None:
    head_bn, trunk_bn = torch.nn.Parameter(torch.ones(8)), torch.nn.Parameter(torch.ones(8))
    opt = torch.optim.AdamW([head_bn], lr=1e-3)
    # Lightning compares values: the trunk's BatchNorm weight (all ones) is taken for the head's and skipped
    with pytest.warns(UserWarning, match="HINT"):
        assert BackboneFinetuning.filter_on_optimizer(opt, [trunk_bn]) == []
    assert Finetuning.filter_on_optimizer(opt, [trunk_bn, head_bn]) == [trunk_bn]  # by identity: added, once


def test_early_stopping_keeps_the_configured_patience_on_resume() -> None:
    es = EarlyStop("val_auc", patience=10, mode="max")
    es.load_state_dict({"wait_count": 4, "stopped_epoch": 0, "best_score": torch.tensor(0.9), "patience": 5})
    assert es.patience == 10 and es.wait_count == 4
    assert early_stopping_wait({"callbacks": {"EarlyStop{'monitor': 'val_auc'}": {"wait_count": 4}}}) == 4
    assert early_stopping_wait({}) == 0


def test_placement_and_precision_on_this_machine() -> None:
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectations")
    assert placement(TrainConfig()) == ("cpu", 1)
    assert placement(TrainConfig(accelerator="cpu", devices=2)) == ("cpu", 2)
    assert (
        precision(TrainConfig(), "cpu") == "32-true"
        and precision(TrainConfig(precision="32"), "cpu") == "32-true"
    )
    with pytest.raises(HistoscanInputError, match="--accelerator gpu: no CUDA GPU"):
        placement(TrainConfig(accelerator="gpu"))


def test_precise_bn_uses_clean_batch_statistics() -> None:
    """Running statistics become the exact mean/variance of the clean batches, whatever training left there."""
    from types import SimpleNamespace

    from histoscan.models.classifier import PatchClassifier
    from histoscan.training.trainer import PreciseBN

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Flatten()
    )
    module = torch.nn.Module()
    module.classifier = PatchClassifier(net)
    module.device = torch.device("cpu")
    bn = net[1]
    bn.running_mean.fill_(5.0)  # what heavy augmentation left behind
    batches = [(torch.randint(0, 256, (6, 8, 8, 3), dtype=torch.uint8), torch.zeros(6)) for _ in range(3)]
    trainer = SimpleNamespace(train_dataloader=batches, sanity_checking=False)
    PreciseBN(batches=2).on_validation_epoch_start(trainer, module)
    with torch.no_grad():
        feats = torch.cat([net[0]((module.classifier.prepare(x) - module.classifier.mean) / module.classifier.std)
                           for x, _ in batches[:2]])  # fmt: skip
    torch.testing.assert_close(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    assert bn.momentum == 0.1 and not module.training


def test_ctrl_c_swallowed_by_a_finaliser_still_stops_the_fit() -> None:
    """A SIGINT whose KeyboardInterrupt is raised inside a __del__ is lost to CPython ("Exception ignored");
    the CtrlC callback still stops at the next batch end, and the previous handler comes back afterwards."""
    import gc
    import os
    import signal

    from histoscan.training.trainer import CtrlC

    class SignalsInFinaliser:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here: its KeyboardInterrupt is swallowed

    guard = CtrlC()
    before = signal.getsignal(signal.SIGINT)
    with guard.armed():
        obj = SignalsInFinaliser()
        del obj
        gc.collect()
        assert guard.hit  # the interrupt itself was lost, the flag was not
        with pytest.raises(KeyboardInterrupt):
            guard.on_train_batch_end(None, None, None, None, 0)
    assert signal.getsignal(signal.SIGINT) is before
    fresh = CtrlC()
    fresh.on_train_batch_end(None, None, None, None, 0)  # no Ctrl-C: nothing happens
