"""Learning-rate schedules with linear warm-up, as multipliers of the base LR per optimizer step.

transformers' and diffusers' `get_cosine_schedule_with_warmup` decay to exactly 0 and have no floor;
ours decays to `min_ratio * lr` so a long run can be continued. The result is a plain `LambdaLR`,
whose `state_dict` (step counters, base LRs) goes into the checkpoint.
"""

from __future__ import annotations

import functools
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("constant", "cosine", "linear")


def lr_multiplier(step: int, *, kind: str, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimizer step `step` (0-based).

    Warm-up ramps linearly from 1/(warmup_steps+1) to 1 over `warmup_steps` steps; then "constant"
    holds 1, "cosine" follows half a cosine and "linear" a straight line from 1 down to `min_ratio`
    at `total_steps`, and holds `min_ratio` after it.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        shape = 1.0 - progress
    else:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    return min_ratio + (1.0 - min_ratio) * shape


def make_scheduler(optimizer: Optimizer, *, kind: str = "cosine", warmup_steps: int = 0, total_steps: int = 1,
                   min_ratio: float = 0.0) -> LambdaLR:
    """A `LambdaLR` over `optimizer` following `lr_multiplier`; call `.step()` once per optimizer step."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"need warmup_steps >= 0, total_steps >= 1 and 0 <= min_ratio <= 1, got "
                         f"{warmup_steps}, {total_steps}, {min_ratio}")
    fn = functools.partial(lr_multiplier, kind=kind, warmup_steps=warmup_steps, total_steps=total_steps,
                           min_ratio=min_ratio)
    return LambdaLR(optimizer, fn)
