"""`histoscan stain fit` / `apply` on files: fit a reference on patch files, write normalised copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from histoscan.data.images import collect_images, decode_image
from histoscan.stain.normalise import fit_stain, load_stain, normaliser_from_config, save_stain
from histoscan.utils.fs import guard_output, staged_folder


def fit_files(
    images: list[str], out: str | Path, method: str = "macenko", max_images: int = 500, seed: int = 0,
    force: bool = False,
) -> tuple[dict[str, Any], int, Path]:  # fmt: skip
    """Fit `method` on the patches in `images` (files or folders; a seeded sample of `max_images`) and save it.

    Returns (the fitted parameters, the number of images fitted on, the file written).
    """
    files = collect_images(images, recursive=True)
    guard_output(out, force, "file")
    if len(files) > max_images:
        pick = np.random.default_rng(seed).choice(len(files), max_images, replace=False)
        files = [files[i] for i in sorted(pick)]
    cfg = fit_stain([decode_image(f, str(f))[0] for f in files], method)
    cfg["reference"]["sources"] = list(images)
    return cfg, len(files), save_stain(cfg, out, force=force)


def apply_files(
    images: list[str], stain: str | Path, out: str | Path, force: bool = False
) -> tuple[int, int]:
    """Write a stain-normalised PNG copy of every patch in `images` into folder `out` (all or nothing).

    Returns (images written, images left unchanged for too little tissue).
    """
    import torch
    from PIL import Image

    norm = normaliser_from_config(load_stain(stain))
    files = collect_images(images, recursive=True)
    guard_output(out, force, "folder")
    with staged_folder(out, force) as dest, torch.inference_mode():
        for i in range(0, len(files), 256):  # batches of same-sized images through the batched normaliser
            chunk = files[i : i + 256]
            imgs = [decode_image(f, str(f))[0] for f in chunk]
            for shape in sorted({im.shape for im in imgs}):
                idx = [j for j, im in enumerate(imgs) if im.shape == shape]
                x = torch.from_numpy(np.stack([imgs[j] for j in idx])).permute(0, 3, 1, 2).float() / 255.0
                y = (norm(x).permute(0, 2, 3, 1) * 255.0).round().byte().numpy()
                for j, im in zip(idx, y, strict=True):
                    Image.fromarray(im).save(dest / f"{chunk[j].stem}.png")
    return len(files), norm.n_skipped
