"""Editing an input clip in the latent of a diffusion model: audio-to-audio (SDEdit) and inpainting /
outpainting.

- audio-to-audio: the clip's latent noised to `strength` is the start of sampling (fewer steps run).
- inpainting / outpainting: frames in the given spans, and past the clip's end up to the requested
  length, are generated; during sampling the kept frames are replaced, step by step, by the clip's latent
  noised to the next step's level (as diffusers' 4-channel inpainting does). The decoder smears a little
  across frame borders, so the clip's own samples are pasted back where they were kept, with a one-frame
  fade into the new audio.

`plan_edit` decides what a call does with its clip; the pipeline's sampling loop applies `keep`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LatentEdit:
    """What a call does with its input clip (nothing: text-to-audio)."""

    mode: str  # "text-to-audio", "audio-to-audio", "inpaint", "outpaint" or "inpaint+outpaint"
    duration_s: float  # of the outputs
    x0: Tensor | None = None  # the clip's latent [P, C, S, F'] (scaled, float32)
    strength: float | None = None  # audio-to-audio: the noise level sampling starts from
    keep: Tensor | None = None  # [S], 1 on the frames that keep the clip (inpainting / outpainting)
    spans: list[list[float]] | None = None  # the regenerated spans (start_s, end_s)
    clip: Tensor | None = None  # [P, 1, T] the clip, pasted back where it is kept


def plan_edit(codec: Any, clip: Tensor | None, *, duration_s: float | None, default_s: float,
              strength: float | None, inpaint: Any, frame_s: float, latent_frames: Callable[[float], int],
              device: torch.device) -> LatentEdit:
    """The edit of the clip `[P, 1, T]` at the codec's rate (None: text-to-audio, `duration_s` or
    `default_s` long), encoded on `device`. `frame_s`: seconds per latent frame; `latent_frames(s)`: the
    frames a length needs. Lengths that do not fit the mode are one-line errors."""
    if clip is None:
        return LatentEdit("text-to-audio", default_s if duration_s is None else duration_s)
    clip_s = clip.shape[-1] / codec.sample_rate
    if strength is not None:
        if duration_s is not None and abs(duration_s - clip_s) > 1e-3:
            raise ValueError(f"audio-to-audio keeps the clip's length ({clip_s:.3f} s); leave duration_s unset "
                             f"(got {duration_s})")
        return LatentEdit("audio-to-audio", clip_s, x0=codec.encode(clip.to(device), codec.sample_rate).float(),
                          strength=float(strength))
    total_s = clip_s if duration_s is None else float(duration_s)
    spans = check_spans(inpaint, total_s)
    if total_s < clip_s:
        raise ValueError(f"duration_s must be >= the clip's {clip_s:.3f} s when extending it, got {total_s}")
    if not spans and total_s - clip_s < frame_s:
        raise ValueError("nothing to regenerate: give strength= (audio-to-audio), inpaint=[(start_s, end_s)] "
                         f"spans, or a duration_s past the clip's {clip_s:.3f} s (outpainting)")
    frames = latent_frames(total_s)
    padded = F.pad(clip, (0, frames * codec.samples_per_latent_frame - clip.shape[-1]))
    x0 = codec.encode(padded.to(device), codec.sample_rate).float()[:, :, :frames]
    mode = "inpaint" if spans else "outpaint"
    if spans and total_s - clip_s >= frame_s:
        mode = "inpaint+outpaint"
    return LatentEdit(mode, total_s, x0=x0, keep=keep_mask(frames, clip_s, spans, frame_s),
                      spans=[list(s) for s in spans], clip=clip)


def check_spans(inpaint: Any, total_s: float) -> list[tuple[float, float]]:
    """`inpaint` (one `(start_s, end_s)` pair or a list of them, or None) -> the spans, each inside
    [0, total_s]; else a one-line ValueError naming the span."""
    if inpaint is None:
        return []
    spans = [inpaint] if len(inpaint) == 2 and all(isinstance(v, (int, float)) for v in inpaint) else list(inpaint)
    out = []
    for span in spans:
        if len(span) != 2:
            raise ValueError(f"inpaint spans must be (start_s, end_s) pairs, got {span!r}")
        a, b = float(span[0]), float(span[1])
        if not (math.isfinite(a) and math.isfinite(b) and 0 <= a < b <= total_s):
            raise ValueError(f"inpaint span ({a}, {b}) must satisfy 0 <= start_s < end_s <= {total_s:.3f} s")
        out.append((a, b))
    return out


def keep_mask(frames: int, clip_s: float, spans: list[tuple[float, float]], frame_s: float) -> Tensor:
    """`[frames]`, 1 where the clip is kept: not in a span (widened to whole frames) and not past the clip's
    end (its last partial frame is regenerated too)."""
    keep = torch.ones(frames)
    keep[int(clip_s / frame_s):] = 0
    for a, b in spans:
        keep[int(math.floor(a / frame_s)):int(math.ceil(b / frame_s))] = 0
    return keep


def paste_back(audios: Tensor, clip: Tensor, keep: Tensor, step: int, source: list[int]) -> Tensor:
    """Put the clip `[P, 1, Tc]` back into `audios` `[B, 1, T]` where `keep` `[S]` (one value per `step`
    samples) kept it, with a one-frame linear fade into the generated spans; output b holds clip `source[b]`."""
    total = audios.shape[-1]
    kept = keep.repeat_interleave(step)[:total].numpy() > 0.5  # per sample
    kept[clip.shape[-1]:] = False
    from scipy.ndimage import distance_transform_edt

    # generated weight: 0 on kept samples, rising linearly over `step` samples into each generated span
    gen = np.clip(distance_transform_edt(~kept) / step, 0.0, 1.0) if kept.any() else np.ones(total)
    g = torch.from_numpy(gen.astype(np.float32))  # [T]
    original = F.pad(clip, (0, max(0, total - clip.shape[-1])))[..., :total][source]  # [B, 1, T]
    return g * audios + (1 - g) * original.to(audios.device)
