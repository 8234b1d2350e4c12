"""Diffusion samplers by name: our short names over diffusers' scheduler classes, built on a model's
noise schedule (the `scheduler_config.json` its UNet was trained with).

    sampler = make_scheduler("dpmsolver++", noise_schedule)     # a fresh diffusers scheduler
    sampler.set_timesteps(16)

A scheduler keeps state between steps (multistep solvers remember past predictions), so one sampling
run needs one fresh scheduler: `fresh(sampler)` copies a scheduler that has not stepped yet.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

# sampler name -> (diffusers class, settings applied over the model's noise schedule)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
}
# diffusers classes that sample a model trained with discrete DDPM noise (betas over 1000 timesteps), as ours and
# AudioLDM's are: diffusers' KarrasDiffusionSchedulers less EDMEulerScheduler (EDM sigmas, not DDPM timesteps).
# Others run the wrong process: flow matching, consistency / LCM (distilled models), inversion.
DIFFUSERS_SAMPLERS = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler",
)


def make_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """A fresh diffusers scheduler `name` over the model's noise schedule `base_config`."""
    import diffusers

    key = str(name).strip().lower()
    if key in SCHEDULERS:
        cls_name, overrides = SCHEDULERS[key]
    elif str(name) in DIFFUSERS_SAMPLERS and hasattr(diffusers, str(name)):
        cls_name, overrides = str(name), {}
    else:
        why = " (it samples another process than the DDPM noise these models learned)" if \
            str(name).endswith("Scheduler") and hasattr(diffusers, str(name)) else ""
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)} or a diffusers class among "
                         f"{', '.join(DIFFUSERS_SAMPLERS)}; got {name!r}{why}")
    cls = getattr(diffusers, cls_name)
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    known = set(inspect.signature(cls.__init__).parameters)
    # from_config keeps only what the class takes; passing the rest would only log noise
    try:
        return cls.from_config({k: v for k, v in config.items() if k in known}, **overrides)
    except ImportError as err:  # DPMSolverSDEScheduler needs torchsde
        raise ValueError(f"scheduler {name!r} needs a package that is not installed ({err})") from None


def fresh(scheduler: Any) -> Any:
    """A copy of a scheduler that has not stepped yet: what a new `make_scheduler` would give, without
    building it again (the copy carries the same tensors, so sampling with it is bit-identical)."""
    return copy.deepcopy(scheduler)


def scheduler_name(scheduler_or_class: Any) -> str:
    """Our short name for a diffusers scheduler (or its class name when we have none)."""
    cls_name = scheduler_or_class if isinstance(scheduler_or_class, str) else type(scheduler_or_class).__name__
    return next((name for name, (cls, _) in SCHEDULERS.items() if cls == cls_name), cls_name)


def default_noise_schedule(prediction_type: str = "epsilon") -> dict[str, Any]:
    """AudioLDM's training noise schedule (1000 steps, scaled-linear betas 0.0015 -> 0.0195), with
    "trailing" timestep spacing so a few-step sampler starts from the noisiest step."""
    return {"num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0195, "beta_schedule": "scaled_linear",
            "prediction_type": prediction_type, "timestep_spacing": "trailing", "steps_offset": 0,
            "clip_sample": False, "set_alpha_to_one": False}


def skipped_steps(steps: int, strength: float | None, order: int) -> int:
    """Timesteps skipped at the start of an audio-to-audio run (SDEdit): `strength` 1 skips none, smaller
    strengths start part-way down the schedule (`order` timesteps per step, as diffusers counts them)."""
    if strength is None:
        return 0
    return max(steps - min(int(steps * strength), steps), 0) * order


def num_evaluations(scheduler: Any, steps: int, strength: float | None = None) -> int:
    """Model evaluations of one run with `steps` steps (Heun-like samplers evaluate twice per step), for
    the progress bar. Sets the timesteps of `scheduler`: give it a `fresh` copy."""
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps) - skipped_steps(steps, strength, scheduler.order)
