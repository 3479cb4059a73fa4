#!/usr/bin/env bash
# Issue 20's benchmark: a model trained on tiles cut from annotated truth mosaics of hcd-train patches vs the
# patch-trained default, both mapped over truth mosaics of hcd-test patches and scored against their ASAP XML
# outlines (tile AUC, Dice, FROC). The tiling grid is half a cell off the patch cells (--offset 48), so tiles are
# not the original patches.  Usage: bash benchmarks/annotated_slides.sh PATCH_RUN [OUT]
#   PATCH_RUN: a run trained on hcd-train patches (e.g. runs/external/default-54db6fc/s42); OUT: runs/ann-bench
set -euo pipefail
RUN=${1:?a patch-trained run folder}; OUT=${2:-runs/ann-bench}; DATA=${HISTOSCAN_SHARED_DATA:-../shared/data}
mkdir -p "$OUT"
python benchmarks/make_mosaic.py "$OUT/train-mosaics" --data "$DATA/hcd-train" --n 6 --size 16 --offset 48 --seed 1
python benchmarks/make_mosaic.py "$OUT/test-mosaics" --data "$DATA/hcd-test" --n 4 --size 16 --offset 48 --seed 2
histoscan tiles "$OUT"/train-mosaics/*.tif --annotations "$OUT/train-mosaics" --out "$OUT/tiles" --force --no-progress
histoscan train --data "$OUT/tiles" --out "$OUT/run-tiles" --force
histoscan slides "$OUT/run-tiles" "$OUT/test-mosaics" --out "$OUT/maps-tiles" --truth "$OUT/test-mosaics" --force --no-progress
histoscan slides "$RUN" "$OUT/test-mosaics" --out "$OUT/maps-patches" --truth "$OUT/test-mosaics" --force --no-progress
