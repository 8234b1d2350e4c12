"""Overlapping windows for long-form generation: a model trained on a fixed crop runs on windows of it, and
the windows' outputs are blended where they overlap (MultiDiffusion), so memory stays that of one window.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


def overlapping_windows(length: int, window: int, overlap: int) -> list[int]:
    """Starts of the fewest `window`-long windows covering `length` with at least `overlap` in common."""
    if length <= window:
        return [0]
    count = math.ceil((length - overlap) / max(1, window - overlap))
    return sorted({int(round(s)) for s in np.linspace(0, length - window, count)})


def blend_ramp(window: int, overlap: int, device: torch.device) -> Tensor:
    """Blend weights `[window]`: rising over `overlap` positions at each end, 1 in between, never 0 (so
    the sum of the weights of every covered position can divide)."""
    pos = torch.arange(window, device=device, dtype=torch.float32)
    return torch.clamp((torch.minimum(pos, window - 1 - pos) + 1) / (overlap + 1), max=1.0)


def blend_windows(run: Callable[[int], Tensor], length: int, window: int, overlap: int, *, dim: int,
                  scale: int = 1) -> Tensor:
    """MultiDiffusion's blend: `run(start)` maps the window [start, start + window) of `length` positions to
    an output `window * scale` long along `dim`; the outputs are summed with `blend_ramp` weights and divided
    by the summed weights -> float32, `length * scale` long along `dim`."""
    total = weight = ramp = None
    for s in overlapping_windows(length, window, overlap):
        out = run(s)
        along = [-1 if d == dim % out.dim() else 1 for d in range(out.dim())]  # weights broadcast along `dim`
        if total is None:
            shape = list(out.shape)
            shape[dim] = length * scale
            total = torch.zeros(shape, device=out.device)
            weight = torch.zeros(length * scale, device=out.device)
            ramp = blend_ramp(window * scale, overlap * scale, out.device)
        total.narrow(dim, s * scale, window * scale).add_(out * ramp.view(along))
        weight[s * scale:(s + window) * scale] += ramp
    return total / weight.view(along)
