"""Exponential moving average of a model's weights (the weights we export and sample with).

diffusers' `EMAModel` keeps an unnamed list of shadow tensors; ours keeps them by parameter name, so
a checkpoint of the wrong architecture fails naming the key, and export reads the EMA weights as a
plain state dict.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """Shadow copy `ema = decay * ema + (1 - decay) * weights` of every floating-point parameter.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates (as diffusers and the LDM
    codebase do), so early EMA weights are not stuck at the random initialisation.

    Args:
        model: the (unwrapped) model to follow; its current weights start the average.
        decay: the long-run decay (default 0.999); 0 makes the EMA equal the weights.
        trainable_only: average only the parameters that require grad (a LoRA run: the adapter; the frozen
            base weights need no shadow, and `copy_to` leaves them as they are).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, trainable_only: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().clone().float() for name, p in model.named_parameters()
            if p.dtype.is_floating_point and (p.requires_grad or not trainable_only)
        }

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards the model's current weights (call after optimizer.step)."""
        weight = 1.0 - self.current_decay()
        params = dict(model.named_parameters())
        names = list(self.shadow)
        shadows = [self.shadow[n] for n in names]
        current = [params[n].detach().float() for n in names]
        torch._foreach_lerp_(shadows, current, weight)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the EMA weights into `model` (e.g. a copy used for validation or export)."""
        params = dict(model.named_parameters())
        for name, value in self.shadow.items():
            params[name].copy_(value.to(params[name].dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.shadow) - set(state["shadow"]))
        unexpected = sorted(set(state["shadow"]) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}")
        for name, value in state["shadow"].items():
            if value.shape != self.shadow[name].shape:
                raise KeyError(f"key {name!r} has shape {tuple(value.shape)}, expected {tuple(self.shadow[name].shape)}")
            self.shadow[name] = value.to(self.shadow[name].device, torch.float32).clone()
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {n: t.to(device) for n, t in self.shadow.items()}
        return self
