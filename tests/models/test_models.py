"""Model registry: one logit out, torchvision key layout, --weights round trip, Grad-CAM layer names."""

from __future__ import annotations

import pytest
import torch

from histoscan.errors import HistoscanInputError
from histoscan.models import (
    OPTIONS,
    REGISTRY,
    check_model_options,
    create_model,
    model_options,
    target_layer_name,
)
from histoscan.models.p4m import GroupConv, LiftingConv


@pytest.mark.parametrize("name", ["simple-cnn", "resnet18", "resnet50-head"])
@pytest.mark.parametrize("size", [50, 96])
def test_one_logit_per_image(name, size):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1)
    assert torch.isfinite(out).all()


def test_resnet_keys_match_torchvision_layout():
    keys = set(create_model("resnet50").state_dict())
    # a handful of keys as torchvision names them (resnet50 IMAGENET1K weights)
    for k in [
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer4.2.conv3.weight",
        "layer4.2.bn3.num_batches_tracked",
        "fc.weight",
        "fc.bias",
    ]:
        assert k in keys
    assert len([k for k in keys if k.endswith(".weight")]) == 107  # 53 conv + 53 bn + fc


def test_weights_round_trip(tmp_path):
    src = create_model("resnet18")
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    dst = create_model("resnet18", weights=tmp_path / "r18.pth")
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_imagenet_style_weights_drop_the_1000_class_fc(tmp_path):
    state = create_model("resnet18").state_dict()
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "imagenet.pth")
    model = create_model("resnet18", weights=tmp_path / "imagenet.pth")
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert model.fc.weight.shape == (1, 512)


def test_torchvision_weights_load_into_the_head_models_trunk(tmp_path):
    trunk = create_model("resnet50").state_dict()
    torch.save(trunk, tmp_path / "r50.pth")
    model = create_model("resnet50-head", weights=tmp_path / "r50.pth")
    assert torch.equal(model.state_dict()["backbone.layer3.1.conv2.weight"], trunk["layer3.1.conv2.weight"])


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    torch.save(create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(HistoscanInputError, match="r18.pth.*does not fit"):
        create_model("resnet50", weights=tmp_path / "r18.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(HistoscanInputError, match="junk.pth"):
        create_model("resnet18", weights=tmp_path / "junk.pth")
    with pytest.raises(HistoscanInputError, match="missing.pth: file not found"):
        create_model("resnet18", weights=tmp_path / "missing.pth")


def test_unknown_and_missing_optional_models():
    with pytest.raises(HistoscanInputError, match="unknown model"):
        create_model("vgg99")
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(HistoscanInputError, match="histoscan\\[vision\\]"):
            create_model("timm:resnet18")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_target_layer_is_a_spatial_stage_after_a_conv(name):
    """The default Grad-CAM layer gives a spatial map (N x C x H x W, H and W >= 2 at 50 px) after a conv.

    Not necessarily the last stage: for simple-cnn the fidelity benchmark chose features.3.2 (docs/benchmarks.md).
    """
    model = create_model(name).eval()
    names = [n for n, _ in model.named_modules()]
    layer_name = target_layer_name(name, model)
    layer = dict(model.named_modules())[layer_name]
    seen = {}
    layer.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    with torch.no_grad():
        model(torch.rand(1, 3, 50, 50))
    assert len(seen["shape"]) == 4 and min(seen["shape"][-2:]) >= 2
    convs = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, LiftingConv, GroupConv))]
    # a convolution is inside the target layer or before it (the map is of conv features, not of the head)
    assert any(c.startswith(layer_name + ".") or names.index(c) < names.index(layer_name) for c in convs)


def _dropouts(model: torch.nn.Module) -> list[float]:
    return [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]


def test_each_model_declares_the_options_it_honours():
    """A declared option reaches the network; every other model has no dropout layer to give it to."""
    for name, spec in REGISTRY.items():
        assert set(spec.options) <= set(OPTIONS), name
        if "dropout" in spec.options:
            assert _dropouts(create_model(name, dropout=0.25)) == [0.25], name
            assert _dropouts(create_model(name)) == [0.5], name  # the model's own default
        else:
            assert _dropouts(create_model(name)) == [], name
    assert model_options("resnet50-head") == ("dropout",) and model_options("resnet18") == ()
    assert model_options("timm:resnet18") == ()  # external families: no histoscan options


@pytest.mark.parametrize("name", ["resnet18", "resnet10-small", "timm:resnet18"])
def test_an_option_the_model_ignores_is_refused(name):
    refused = rf"^--dropout 0.3: model {name} has no dropout \(takes no options\); leave --dropout at 0.5$"
    with pytest.raises(HistoscanInputError, match=refused):
        create_model(name, dropout=0.3)
    check_model_options(name, dropout=0.5)  # the default (what every config carries) is no request
    check_model_options(name, dropout=None)
    with pytest.raises(HistoscanInputError, match="^model option width: unknown"):
        check_model_options("simple-cnn", width=3)


def test_a_config_with_an_ignored_option_fails_to_build_but_old_runs_still_load(tmp_path):
    """build_classifier refuses resnet18 with --dropout 0.3; a run saved that way before (tune searched
    dropout for every model) loads with the option back at its default: its network never had dropout."""
    from run_fixtures import make_run

    from histoscan.config import TrainConfig
    from histoscan.inference.predictor import load_predictor
    from histoscan.models.classifier import build_classifier, saved_model_config

    with pytest.raises(HistoscanInputError, match="^--dropout 0.3: model resnet18 has no dropout"):
        build_classifier(TrainConfig(model="resnet18", dropout=0.3), weights=False)
    cfg = TrainConfig(model="simple-cnn", dropout=0.3)
    assert saved_model_config(cfg) is cfg  # simple-cnn honours it: kept
    assert saved_model_config(TrainConfig(model="resnet18", dropout=0.3)).dropout == 0.5
    run = make_run(tmp_path / "old", model="resnet10-small", image_size=32)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    ckpt["hyper_parameters"]["config"]["dropout"] = 0.3  # as tune saved it before models refused it
    torch.save(ckpt, run / "checkpoints" / "best.ckpt")
    predictor = load_predictor(run, device="cpu")
    assert predictor.card.config.dropout == 0.3  # the card says what the run was trained with
    assert predictor.predict_logits(torch.zeros(2, 32, 32, 3, dtype=torch.uint8).numpy()).shape == (2,)
