"""Tiny corpora and configs for the training-loop tests (seconds on a 2-core CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from soundsmith.codecs.audio import write_audio

# tiny VAE: 16 mel bins, 3 blocks of 8/16/16 channels
TINY_VAE = {"max_steps": 4, "batch_size": 2, "crop_seconds": 0.32, "warmup_steps": 1, "log_every": 1,
            "eval_every": 2, "save_every": 2, "num_valid_clips": 2, "valid_seconds": 0.32, "num_samples": 1,
            "num_workers": 0, "scale_batches": 2, "keep_last": 5,
            "model": {"n_mels": 16, "latent_channels": 4, "block_out_channels": [8, 16], "norm_num_groups": 4,
                      "mid_block_add_attention": False}}

# tiny vocoder: 16 mel bins, narrow generator and discriminators
TINY_VOCODER = {"max_steps": 4, "batch_size": 2, "crop_seconds": 0.16, "warmup_steps": 1, "log_every": 1,
                "eval_every": 2, "save_every": 2, "num_valid_clips": 2, "valid_seconds": 0.16, "num_samples": 1,
                "num_workers": 0, "keep_last": 5, "stft_weight": 1.0, "disc_start_step": 1,
                "mpd_periods": [2, 3], "mpd_channels": [4, 8, 8], "msd_scales": 2, "msd_channels": [4, 4, 8, 8, 8, 8, 8],
                "model": {"model_in_dim": 16, "upsample_initial_channel": 32, "resblock_kernel_sizes": [3],
                          "resblock_dilation_sizes": [[1, 3]]}}


def write_corpus(root: Path, num_train: int = 8, num_valid: int = 2, seconds: float = 0.5, sr: int = 16000) -> Path:
    """A soundsmith-layout corpus of tones and noise bursts: metadata.jsonl + {train,valid}/*.wav."""
    rng = np.random.default_rng(0)
    rows = []
    t = np.arange(int(seconds * sr)) / sr
    for split, count in (("train", num_train), ("valid", num_valid)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            f0 = float(rng.uniform(100, 2000))
            wave = 0.3 * np.sin(2 * np.pi * f0 * t) * np.exp(-t * rng.uniform(1, 8))
            wave += 0.02 * rng.standard_normal(t.size)
            name = f"{split}/{i:06d}.wav"
            write_audio(root / name, wave[None].astype(np.float32), sr)
            rows.append({"file_name": name, "caption": f"a tone at {f0:.0f} Hz", "domain": "sfx",
                         "labels": {"domain": "sfx", "class": "tone"}, "duration": seconds, "sample_rate": sr,
                         "seed": i, "split": split})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_config(path: Path, values: dict) -> Path:
    path.write_text(json.dumps(values))
    return path
