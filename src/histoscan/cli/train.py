"""`histoscan train`: parse options into a TrainConfig and run training."""

from __future__ import annotations

import argparse
import dataclasses

from histoscan.config import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand. Option defaults come from TrainConfig (None here means: keep its default)."""
    p = sub.add_parser(
        "train",
        help="train a tumour/normal classifier on a labelled source or store",
        description="Train with a patient/slide-grouped split; writes a run folder.",
    )
    add_train_options(p)
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from checkpoints/last.ckpt"
    )
    p.set_defaults(func=run)


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `train` and `cv`."""
    d = TrainConfig()
    p.add_argument(
        "--data", required=True, help="labelled source (PCam, Kaggle HCD, manifest CSV, folders) or STORE"
    )
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--model", help=f"model name (default {d.model}); see histoscan.models")
    p.add_argument("--epochs", type=int, help=f"maximum epochs (default {d.epochs})")
    p.add_argument("--image-size", type=int, help="patch size in px (default: the source's native size)")
    p.add_argument("--fit", choices=["pad", "resize"], help=f"fit images of another size (default {d.fit})")
    p.add_argument("--mpp", type=float, help="patch resolution in µm/px (default: from the source)")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, help=f"learning rate (default {d.lr})")
    p.add_argument("--optimizer", choices=["adam", "adamw"], help=f"default {d.optimizer}")
    p.add_argument("--weight-decay", type=float, help=f"default {d.weight_decay}")
    p.add_argument("--dropout", type=float, help=f"default {d.dropout}")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--patience", type=int, help=f"early-stopping patience in epochs (default {d.patience})")
    p.add_argument("--monitor", choices=["val_auc", "val_loss"], help=f"default {d.monitor}")
    p.add_argument("--val-fraction", type=float, help=f"default {d.val_fraction}")
    p.add_argument("--test-fraction", type=float, help=f"held-out test share (default {d.test_fraction})")
    p.add_argument("--balanced", action="store_true", default=None, help="class-balanced sampling")
    p.add_argument(
        "--target-sensitivity",
        type=float,
        help="choose the decision threshold for this sensitivity on the validation split (default: Youden's J)",
    )
    p.add_argument(
        "--augment", help=f"comma list of d4,affine,color,hed or 'none' (default {','.join(d.augment)})"
    )
    p.add_argument("--freeze-epochs", type=int, help="epochs with the trunk frozen before fine-tuning")
    p.add_argument("--weights", help="local state dict (torchvision key layout) to start from")
    p.add_argument("--stain", help="stain normaliser JSON from `histoscan stain fit`")
    p.add_argument(
        "--limit-batches", type=int, help="at most N train and N val batches per epoch (smoke runs)"
    )
    p.add_argument("--num-workers", type=int, help=f"data-loader workers (default {d.num_workers})")
    p.add_argument("--precision", choices=["auto", "32", "bf16-mixed", "16-mixed"], help="default auto")
    p.add_argument("--skip-bad", action="store_true", default=None, help="skip unreadable images (counted)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run folder")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig with every option the user gave replacing its default."""
    values = {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    if isinstance(values.get("augment"), str):
        values["augment"] = [] if values["augment"] == "none" else values["augment"].split(",")
    if values.get("stain"):
        from histoscan.stain.normalise import load_stain  # lazy: only runs that use stain normalisation

        values["stain"] = load_stain(values["stain"])
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    """Train and print where the run went."""
    from histoscan.training.train import train

    run_dir = train(config_from_args(args), force=args.force, resume=args.resume)
    print(f"run: {run_dir}")
    for name in ("config.yaml", "split.csv", "metrics.csv", "threshold.json", "checkpoints/best.ckpt"):
        print(f"  {run_dir / name}")
    return 0
