"""Fit the mel adapter of the universal HiFi-GAN (codecs/hifigan_universal.py): our log-mel -> its log-mel.

    soundsmith train mel-adapter --data data/corpus --out runs/mel-adapter [--max-steps CLIPS]

Steps:
    1. for `num_clips` train clips (spread over the corpus's domains, seeded): our 64-bin log-mel at
       16 kHz, time-interpolated to the generator's frame grid, and the exact 80-bin log-mel of the same
       clip resampled to 22.05 kHz (the generator's own front-end);
    2. ridge least squares of the exact frames on the interpolated ones (closed form, seconds);
    3. validate on valid clips: mean |adapted - exact| log-mel (natural log);
    4. export the adapter to `OUT/export/` (fp16 safetensors + config.json with the fit's figures); copy it
       into a mel codec folder as `hifigan-universal-adapter/` to ship it.

A closed-form fit has no optimizer state to resume: `--resume` reruns it with the run's saved config.
Run folder: config.json, metrics.jsonl, tensorboard/, export/.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from soundsmith.core.run_lock import releases_folder_locks
from torch import Tensor

from .config import Config, bounded
from .metrics_log import MetricsLogger, progress_bar
from .run_folder import RunFolder, refit_config

log = logging.getLogger(__name__)


@dataclass
class MelAdapterTrainConfig(Config):
    seed: int = bounded(0, 0, 2**31 - 1)
    num_clips: int = bounded(400, 1)  # train clips the fit sees (frames: ~430 per 5 s clip)
    num_valid_clips: int = bounded(100, 1)
    ridge: float = bounded(1e-2, 0.0)  # L2 penalty per frame (scaled by the frame count)


@releases_folder_locks
def train(config: str | os.PathLike | None = None, data: str | os.PathLike = "data/corpus",
          out: str | os.PathLike = "runs/mel-adapter", resume: bool = False, max_steps: int | None = None,
          overrides: Any = None, force_change: bool = False) -> Path:
    """Fit the adapter; return the export folder `OUT/export`. `max_steps` caps the number of train clips;
    `force_change` lets a --resume (a refit) change the run's settings (logged in OUT/config_changes.jsonl)."""
    from soundsmith.codecs.hifigan_universal import TARGET_MEL, MelAdapter, MelAdapterConfig
    from soundsmith.codecs.mel import MelConfig, MelSpectrogram

    from .datasets import read_records, select_split

    out, cfg = refit_config(out, resume, config, MelAdapterTrainConfig, overrides, "mel-adapter")
    run = RunFolder(out, cfg, data=data, resume=resume, force_change=force_change)
    n_train = cfg.num_clips if max_steps is None else min(cfg.num_clips, int(max_steps))
    _, records = read_records(data)
    rng = np.random.default_rng(cfg.seed)
    train_recs = _spread(select_split(records, "train", Path(data)), n_train, rng)
    valid_recs = _spread(select_split(records, "valid", Path(data)), cfg.num_valid_clips, rng)
    run.open()  # creates and locks OUT: after the data is checked

    source_mel = MelConfig()
    adapter = MelAdapter(MelAdapterConfig(source_mel=source_mel, target_mel=TARGET_MEL))
    ours, theirs = MelSpectrogram(source_mel), MelSpectrogram(TARGET_MEL)

    def pairs(recs: list, desc: str) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        with progress_bar(len(recs), desc=desc) as bar:
            for rec in recs:
                x, y = _aligned_frames(rec.path, adapter, ours, theirs)
                xs.append(x)
                ys.append(y)
                bar.update(1)
        return torch.cat(xs), torch.cat(ys)

    t0 = time.perf_counter()
    with torch.no_grad():
        x_train, y_train = pairs(train_recs, "mel-adapter: train clips")
        fit_l1 = adapter.fit(x_train, y_train, ridge=cfg.ridge)
        x_valid, y_valid = pairs(valid_recs, "mel-adapter: valid clips")
        valid_l1 = float((adapter.proj(x_valid) - y_valid).abs().mean())
    seconds = time.perf_counter() - t0
    logger = MetricsLogger(out)
    logger.log(n_train, {"fit_l1": fit_l1, "valid_l1": valid_l1, "frames": float(len(x_train))})
    logger.close()
    log.info("mel-adapter: %d train frames, fit L1 %.4f, valid L1 %.4f (%.0f s)", len(x_train), fit_l1, valid_l1,
             seconds)
    adapter.config = MelAdapterConfig(source_mel=source_mel, target_mel=TARGET_MEL, fit={
        "data": str(Path(data)), "train_clips": len(train_recs), "valid_clips": len(valid_recs),
        "train_frames": len(x_train), "ridge": cfg.ridge, "fit_l1": round(fit_l1, 4), "valid_l1": round(valid_l1, 4),
        "seconds": round(seconds, 1)})
    return adapter.save_pretrained(out / "export", dtype=torch.float16)


def _aligned_frames(path: Path, adapter: Any, ours: Any, theirs: Any) -> tuple[Tensor, Tensor]:
    """One clip -> (our log-mel interpolated to the generator's frames `[S', 64]`, its exact log-mel `[S', 80]`)."""
    from soundsmith.codecs.audio import read_audio, resample

    wave, sr = read_audio(path, sample_rate=ours.cfg.sample_rate, channels=1)
    wave16 = torch.from_numpy(wave)  # [1, T]
    wave22 = torch.from_numpy(resample(wave, sr, theirs.cfg.sample_rate))  # [1, T']
    source = adapter.resample_frames(ours(wave16))  # [1, 64, S']
    target = theirs(wave22)  # [1, 80, S'']
    n = min(source.shape[-1], target.shape[-1])
    return source[0, :, :n].T, target[0, :, :n].T


def _spread(records: list, count: int, rng: np.random.Generator) -> list:
    """`count` records drawn evenly over the corpus's domains (seeded)."""
    by_domain: dict[str, list] = {}
    for rec in records:
        by_domain.setdefault(rec.domain or "", []).append(rec)
    per = max(1, count // max(1, len(by_domain)))
    chosen = []
    for recs in by_domain.values():
        idx = rng.permutation(len(recs))[:per]
        chosen += [recs[i] for i in sorted(idx)]
    return chosen[:count]
