"""Tolerances derived from float arithmetic, for tests that compare one computation done two ways.

Two float32 evaluations of the same network (another batch size, kernel, thread count or runtime: PyTorch vs ONNX
Runtime) differ only by the rounding of sums the backend orders its own way. Reordering a sum of n terms changes
it by at most about n x eps x (the sum of the terms' magnitudes); through a network the relative error grows with
depth and fan-in. These helpers bound a difference by eps x `terms` x the magnitudes involved, never by how much
another input changes the output (that depends on the data and on the machine's rounding: such a bound failed on
another CPU for the P4M invariance test).

`terms` is an allowance for the accumulated reorderings: 2^10 for the small networks of these tests (a few
layers of <= 600-term sums, errors adding like a random walk), 2^14 where an image filter (stain normalisation,
Grad-CAM upsampling) adds its own chain of float32 steps. A real defect (a wrong channel order, a missing
preprocessing step, another image) moves outputs by 1e-2 or more, orders of magnitude above every bound here.
"""

from __future__ import annotations

import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7
F64_EPS = float(np.finfo(np.float64).eps)  # 2.22e-16


def f32_tol(*values: object, terms: int = 2**10) -> float:
    """Allowed |a - b| between two float32 evaluations of outputs whose magnitude is that of `values`."""
    magnitude = max((float(np.max(np.abs(np.asarray(v, dtype=np.float64)))) for v in values), default=0.0)
    return F32_EPS * terms * (1.0 + magnitude)


def prob_tol(logits: object, terms: int = 2**10) -> float:
    """Allowed |p_a - p_b| for probabilities sigmoid(logit): the logit bound times sigmoid's slope (<= 1/4),
    plus one rounding of p itself."""
    return f32_tol(logits, terms=terms) / 4 + F32_EPS
