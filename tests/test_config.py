"""TrainConfig: one place for defaults, ranges and help; the same checks from Python, files and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import pytest

from histoscan.config import TrainConfig, add_config_options, config_from_options, option_name
from histoscan.errors import HistoscanInputError


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "--epochs 0: must be at least 1"),
        ("epochs", -1, "--epochs -1: must be at least 1"),
        ("lr", -1.0, "--lr -1.0: must be above 0"),
        ("lr", 0.0, "--lr 0.0: must be above 0"),
        ("lr", math.nan, "--lr nan: must be a number"),
        ("batch_size", 0, "--batch-size 0: must be at least 1"),
        ("batch_size", 2.5, "--batch-size 2.5: must be a whole number"),
        ("dropout", 1.0, "--dropout 1.0: must be below 1"),
        ("val_fraction", 0.0, "--val-fraction 0.0: must be above 0"),
        ("test_fraction", 1.0, "--test-fraction 1.0: must be below 1"),
        ("optimizer", "sgd", "--optimizer sgd: choose from adam, adamw"),
        ("image_size", 4, "--image-size 4: must be at least 8"),
        ("mpp", 0.0, "--mpp 0.0: must be above 0"),
        ("weight_decay", -0.1, "--weight-decay -0.1: must be at least 0"),
        ("target_sensitivity", 1.5, "--target-sensitivity 1.5: must be at most 1"),
        ("limit_batches", 0, "--limit-batches 0: must be at least 1"),
        ("epochs", "10", "--epochs '10': must be a number"),
    ],
)
def test_out_of_range_values_name_the_option(field: str, value: object, message: str) -> None:
    with pytest.raises(HistoscanInputError) as e:
        TrainConfig(**{field: value})
    assert str(e.value) == message


def test_cross_field_rules() -> None:
    with pytest.raises(HistoscanInputError, match="must sum to less than 1"):
        TrainConfig(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(HistoscanInputError, match="unknown op bogus"):
        TrainConfig(augment=["d4", "bogus"])
    with pytest.raises(HistoscanInputError, match="--fold 3: must be in 0..2"):
        TrainConfig(folds=3, fold=3)
    cfg = TrainConfig()
    cfg.epochs = 0  # mutated after construction: validate() catches it (train() calls it)
    with pytest.raises(HistoscanInputError, match="--epochs 0"):
        cfg.validate()


def test_defaults_are_valid_and_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(data="d", out="o", lr=3e-4, augment=["d4", "hed"], mpp=0.972)
    cfg.save(tmp_path / "config.yaml")
    assert TrainConfig.load(tmp_path / "config.yaml") == cfg
    assert list(tmp_path.iterdir()) == [tmp_path / "config.yaml"]  # atomic write leaves no temp file


def test_bad_config_file_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("lr: -1\n")
    with pytest.raises(HistoscanInputError, match=rf"^{p}: --lr -1: must be above 0$"):
        TrainConfig.load(p)
    p.write_text("colour: red\n")
    with pytest.raises(HistoscanInputError, match="unknown field"):
        TrainConfig.load(p)
    p.write_text("- a list\n")
    with pytest.raises(HistoscanInputError, match="not a mapping"):
        TrainConfig.load(p)


def test_cli_options_come_from_the_fields() -> None:
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    options = {a.dest: a for a in parser._actions if a.dest != "help"}
    visible = [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]
    assert set(options) == {f.name for f in visible}
    for f in visible:
        action = options[f.name]
        assert option_name(f.name) in action.option_strings
        assert action.default is None  # "not given": the dataclass default applies
        if f.default not in (None, dataclasses.MISSING) and f.type != "bool":
            assert f"(default {f.default})" in action.help  # the help states the one default
        if f.metadata.get("choices") and f.metadata.get("range") is None:
            assert tuple(action.choices) == f.metadata["choices"]
        elif f.metadata.get("choices"):  # numeric choices (tta): parsed by the range, named by validation
            assert action.metavar == "{" + ",".join(map(str, f.metadata["choices"])) + "}"
    args = parser.parse_args(["--lr", "0.001", "--augment", "none", "--balanced"])
    cfg = config_from_options(vars(args))
    assert (cfg.lr, cfg.augment, cfg.balanced, cfg.epochs) == (0.001, [], True, TrainConfig().epochs)
    with pytest.raises(HistoscanInputError, match="^--batch-size 0: must be at least 1$"):
        config_from_options({"batch_size": 0})
    with pytest.raises(SystemExit):  # the same range, checked as the option is parsed
        parser.parse_args(["--batch-size", "0"])
