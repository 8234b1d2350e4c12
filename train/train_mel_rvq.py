"""Fit the token default's acoustic codec (codecs/mel_rvq.py): residual VQ over the mel VAE's latent.

    soundsmith train mel-rvq --data data/corpus --mel-codec models/mel-codec --out runs/mel-rvq [--resume]
                             [--max-steps N] [--set levels=8 --set ema_steps=500 ...]

Steps:
    1. the VAE latent of every train and valid clip (whole clips, posterior mean, scaled), one 128-d vector
       per 40 ms frame, written in shards of `shard_clips` clips to `OUT/cache/` (fp16, atomically, with the
       clips' frame offsets; `--resume` reuses the shards already written, so a killed extraction continues);
    2. k-means (faiss, else torch Lloyd) per level on the residual the levels before leave, on up to
       `kmeans_vectors` train frames: the codebooks' start (saved as the step-0 checkpoint);
    3. `ema_steps` steps of EMA codebook updates on random batches of `batch_vectors` train frames, with
       dead-code restarts (codes used less than `dead_code_threshold` x the average are re-seeded from the
       batch); every `eval_every` steps the valid frames' unexplained latent variance per level count and
       each level's code perplexity; checkpoints every `save_every` steps (codebooks, EMA state, RNG);
    4. the mel L1 of the VAE-decoded mel against the input mel on `num_mel_clips` valid clips, for the
       VAE alone and for 1..K levels (what the coarse/fine split is chosen from); export the codebooks in
       fp16 to `OUT/export/` (config.json points at the mel codec folder and records its VAE's fingerprint).

Run folder: config.json, metrics.jsonl, tensorboard/, cache/, checkpoints/, export/.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from soundsmith.core.run_lock import releases_folder_locks
from torch import Tensor

from .checkpoint import load_checkpoint, resume_point
from .config import CONFIGS, Config, bounded, load_config
from .loop import save_run_checkpoint
from .metrics_log import MetricsLogger
from .run_folder import RunFolder

log = logging.getLogger(__name__)

COMPONENT = "mel-rvq"
DEFAULT_CONFIG = CONFIGS / f"{COMPONENT}.json"


@dataclass
class MelRVQTrainConfig(Config):
    """Everything a mel-RVQ run needs besides the data and run folders."""

    seed: int = bounded(0, 0, 2**31 - 1)
    mel_codec: str = "models/mel-codec"  # the MelLatentCodec folder whose VAE latent is quantized; `--mel-codec`
    vocoder: dict = field(default_factory=lambda: {"name": "griffin-lim"})  # recorded in the export (decoding)
    levels: int = bounded(8, 1, 64)  # K
    codebook_size: int = bounded(1024, 2)
    kmeans_iters: int = bounded(16, 1)
    kmeans_vectors: int = bounded(98304, 1)  # train frames per level's k-means (a seeded random subset; 96 per code)
    ema_steps: int = bounded(100, 0)  # EMA refinement steps after the k-means start; --max-steps overrides
    batch_vectors: int = bounded(4096, 1)  # train frames per EMA step
    decay: float = bounded(0.99, 0.0, 0.999999)
    dead_code_threshold: float = bounded(0.1, 0.0, 1.0)
    shard_clips: int = bounded(256, 1)  # clips per latent cache shard (the unit a resumed extraction restarts from)
    encode_batch: int = bounded(16, 1)  # clips per VAE call while caching
    max_train_clips: int = bounded(0, 0)  # 0: every train clip
    eval_every: int = bounded(50, 1)
    save_every: int = bounded(50, 1)
    keep_last: int = bounded(3, 1)
    num_mel_clips: int = bounded(32, 0)  # valid clips for the final mel L1 per level count (0: skip)


@releases_folder_locks
def train(config: str | os.PathLike | None = None, data: str | os.PathLike = "data/corpus",
          out: str | os.PathLike = "runs/mel-rvq", resume: bool = False, max_steps: int | None = None,
          overrides: Any = None, force_change: bool = False) -> Path:
    """Fit the mel RVQ codec; return the export folder `OUT/export`.

    Args:
        config: JSON config file (default: the dataclass defaults; on resume: the run's config.json).
        data: corpus folder (train split for fitting, valid split for validation).
        out: run folder.
        resume: continue from the newest checkpoint (and reuse the latent shards in `OUT/cache/`).
        max_steps: EMA steps to stop after (default: the config's `ema_steps`).
        overrides: "key=value" strings or a dict applied on top of the config (`mel_codec=...`, `levels=...`).
        force_change: on resume, accept settings that change the run (logged in OUT/config_changes.jsonl).
    """
    from soundsmith.codecs.mel_codec import MelLatentCodec
    from soundsmith.codecs.mel_rvq import MelRVQCodec, MelRVQConfig, vae_fingerprint

    # 1. config, run folder, mel codec, codec to fit -----------------------------------------------------
    out, ckpt, config_path = resume_point(out, resume, config, DEFAULT_CONFIG)
    cfg = load_config(MelRVQTrainConfig, config_path, overrides)
    run = RunFolder(out, cfg, data=data, resume=resume, checkpoint=ckpt, force_change=force_change)
    stop_at = cfg.ema_steps if max_steps is None else int(max_steps)
    mel_folder = Path(cfg.mel_codec)
    if not (mel_folder / "config.json").is_file():
        raise FileNotFoundError(f"mel_codec: no mel codec folder at {mel_folder} (--mel-codec)")
    mel_codec = MelLatentCodec.from_pretrained(mel_folder, vocoder=cfg.vocoder)
    vae = mel_codec.vae.config
    dim = vae.latent_channels * (vae.n_mels // vae.downsample_factor)
    codec = MelRVQCodec(mel_codec, MelRVQConfig(n_levels=cfg.levels, codebook_size=cfg.codebook_size, dim=dim,
                                                decay=cfg.decay, dead_code_threshold=cfg.dead_code_threshold))
    rvq = codec.quantizer
    run.open()  # creates and locks OUT (the latent shards go into it): after the data is checked
    log.info("mel-rvq: %d levels x %d codes over %d-d latent frames at %g Hz (VAE %s)", cfg.levels,
             cfg.codebook_size, dim, codec.frame_rate, vae_fingerprint(mel_codec))

    # 2. latents of the train and valid clips, cached in shards -----------------------------------------
    t0 = time.perf_counter()
    key = {"vae_fingerprint": vae_fingerprint(mel_codec), "data": str(Path(data).resolve())}
    train_z, _, _ = cached_latents(codec, data, "train", out / "cache", key, cfg.shard_clips, cfg.encode_batch,
                                   cfg.max_train_clips)
    valid_z, valid_offsets, valid_split = cached_latents(codec, data, "valid", out / "cache", key, cfg.shard_clips,
                                                         cfg.encode_batch, cfg.max_train_clips)
    log.info("mel-rvq: %d train and %d valid frames (%.0f s)", len(train_z), len(valid_z), time.perf_counter() - t0)
    logger = MetricsLogger(out, enabled=True, resume_step=None if ckpt is None else _step_of(ckpt))

    # 3. k-means start (the step-0 checkpoint), or the resumed state ----------------------------------
    objects = {"rvq": rvq}
    step = 0
    if ckpt is not None:
        step = load_checkpoint(ckpt, objects)["step"]
        log.info("resumed %s at step %d", ckpt, step)
    else:
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        fit_kmeans_(rvq, train_z, iters=cfg.kmeans_iters, max_vectors=cfg.kmeans_vectors, seed=cfg.seed)
        logger.log(0, {"train/kmeans_seconds": time.perf_counter() - t0, **validate(rvq, valid_z)})
        save_run_checkpoint(out, 0, objects, COMPONENT, cfg)

    # 4. EMA refinement with dead-code restarts --------------------------------------------------------
    rvq.train()
    clock = time.perf_counter()
    while step < stop_at:
        rng = np.random.default_rng([cfg.seed, step])  # the batch is a pure function of (seed, step)
        idx = torch.from_numpy(rng.integers(0, len(train_z), cfg.batch_vectors))
        z = train_z[idx].float().t()[None]  # [1, D, N]
        with torch.no_grad():
            result = rvq(z, cfg.levels)
        step += 1
        if step % 10 == 0 or step == stop_at:
            logger.log(step, {"train/unexplained": float((z - result.quantized).pow(2).mean() / z.var()),
                              "train/perplexity_min": float(result.perplexity.min()),
                              "time/s_per_step": (time.perf_counter() - clock) / 10})
            clock = time.perf_counter()
        if step % cfg.eval_every == 0 or step == stop_at:
            rvq.eval()
            logger.log(step, validate(rvq, valid_z))
            rvq.train()
        if step % cfg.save_every == 0 or step == stop_at:
            save_run_checkpoint(out, step, objects, COMPONENT, cfg)
    rvq.eval()

    # 5. mel L1 per level count on valid clips; export ---------------------------------------------------
    if cfg.num_mel_clips:
        logger.log(step, mel_l1_by_levels(codec, valid_z, valid_offsets, data, valid_split, cfg.num_mel_clips))
    logger.close()
    export = codec.save_pretrained(out / "export", dtype=torch.float16, mel_codec=mel_folder)
    log.info("exported %s", export)
    return export


# ------------------------------------------------------------------------------------------- latents


def cached_latents(codec: Any, data: str | os.PathLike, split: str, cache_dir: Path, key: dict[str, str],
                   shard_clips: int, batch: int, max_clips: int) -> tuple[Tensor, Tensor, str]:
    """Latent frames of every clip of `split`: (`[N, D]` fp16, clip offsets `[clips + 1]`, the split read: the
    train split stands in for a missing valid split), read from the shards in `cache_dir` that hold them, the
    others encoded and written."""
    from .datasets import AudioCaptionDataset

    try:
        dataset = AudioCaptionDataset(data, sample_rate=codec.sample_rate, crop_seconds=None, random_crop=False,
                                      split=split)
    except ValueError as err:
        if split == "train":
            raise
        log.warning("no %s split (%s); validating on the train frames", split, err)
        return cached_latents(codec, data, "train", cache_dir, key, shard_clips, batch, max_clips)
    n = len(dataset) if max_clips == 0 else min(max_clips, len(dataset))
    frames, lengths = [], []
    for start in range(0, n, shard_clips):
        z, offsets = _shard(cache_dir / f"{split}-{start // shard_clips:05d}.safetensors", codec, dataset,
                            range(start, min(start + shard_clips, n)), key, batch)
        frames.append(z)
        lengths += (offsets[1:] - offsets[:-1]).tolist()
    offsets = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.long)
    return torch.cat(frames), offsets, split


@torch.no_grad()
def _shard(path: Path, codec: Any, dataset: Any, indices: range, key: dict[str, str], batch: int
           ) -> tuple[Tensor, Tensor]:
    """Latent frames `[n, D]` (fp16) and offsets of the clips `indices`: read from `path`, else encoded."""
    from soundsmith.core.weights import read_state_dict, save_safetensors

    shard_key = {**key, "clips": f"{indices.start}-{indices.stop}"}
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            stored = f.metadata() or {}
        if all(stored.get(k) == v for k, v in shard_key.items()):
            tensors = read_state_dict(path)
            return tensors["frames"], tensors["offsets"].long()
        raise ValueError(f"{path} was encoded with another VAE or corpus; use a new --out")
    rows: list[Tensor] = []
    group: list[Tensor] = []

    def flush() -> None:
        z = codec.encode_latent(torch.stack(group), codec.sample_rate)  # [b, D, S]
        rows.extend(z.transpose(1, 2).to(torch.float16))  # b x [S, D]
        group.clear()

    for i in indices:
        wave = dataset[i]["wave"]  # [C, T]
        if group and (len(group) == batch or wave.shape[-1] != group[0].shape[-1]):
            flush()
        group.append(wave)
    if group:
        flush()
    offsets = torch.tensor([0, *np.cumsum([len(r) for r in rows]).tolist()], dtype=torch.long)
    frames = torch.cat(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors({"frames": frames, "offsets": offsets}, path, metadata={"format": "pt", **shard_key})
    log.info("cached %s (%d clips)", path, len(indices))
    return frames, offsets


# ------------------------------------------------------------------------------------------- k-means


@torch.no_grad()
def fit_kmeans_(rvq: Any, frames: Tensor, *, iters: int, max_vectors: int, seed: int) -> None:
    """Initialise every level of `rvq` by k-means on the residual of the levels before it (faiss when
    installed, else `codecs.rvq.kmeans`), on up to `max_vectors` of `frames [N, D]`."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(frames), min(max_vectors, len(frames)), replace=False) if len(frames) > max_vectors else None
    x = (frames if pick is None else frames[torch.from_numpy(np.sort(pick))]).float()  # [n, D]
    for k, layer in enumerate(rvq.layers):
        cb = layer.codebook
        t0 = time.perf_counter()
        centroids = _kmeans(x, cb.bins, iters, seed + k)  # [bins, D]
        codes = _nearest(x, centroids)  # [n]
        sizes = torch.bincount(codes, minlength=cb.bins).float()
        cb.embed.copy_(centroids)
        cb.cluster_size.copy_(sizes)
        cb.embed_avg.copy_(centroids * sizes[:, None])
        cb.inited.fill_(1.0)
        x = x - centroids[codes]
        log.info("k-means level %d: %.1f s, residual energy %.4f, %d codes used", k + 1, time.perf_counter() - t0,
                 float(x.pow(2).sum(1).mean()), int((sizes > 0).sum()))


def _kmeans(x: Tensor, bins: int, iters: int, seed: int) -> Tensor:
    try:
        import faiss
    except ImportError:  # faiss-cpu is a dependency; the torch fallback is slower, not different in kind
        from soundsmith.codecs.rvq import kmeans

        torch.manual_seed(seed)
        return kmeans(x, bins, iters)[0]
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    km = faiss.Kmeans(x.shape[1], bins, niter=iters, seed=seed, verbose=False, max_points_per_centroid=1 << 20)
    km.train(np.ascontiguousarray(x.numpy(), dtype=np.float32))
    return torch.from_numpy(km.centroids.copy())


def _nearest(x: Tensor, centroids: Tensor, chunk: int = 16384) -> Tensor:
    from soundsmith.codecs.rvq import squared_distances

    return torch.cat([squared_distances(x[i:i + chunk], centroids).max(-1).indices for i in range(0, len(x), chunk)])


# ------------------------------------------------------------------------------------------ validation


@torch.no_grad()
def validate(rvq: Any, frames: Tensor, chunk: int = 16384) -> dict[str, float]:
    """Valid frames `[N, D]`: the latent variance left unexplained after 1..K levels, and each level's code
    perplexity (exp entropy of its code histogram)."""
    x = frames.float()
    total = (x - x.mean(0)).pow(2).sum()
    residual = x.clone()
    out: dict[str, float] = {}
    for k, layer in enumerate(rvq.layers):
        cb = layer.codebook
        codes = _nearest(residual, cb.embed, chunk)
        residual = residual - cb.embed[codes]
        p = torch.bincount(codes, minlength=cb.bins).float()
        p = p / p.sum()
        out[f"valid/unexplained_l{k + 1}"] = float(residual.pow(2).sum() / total)
        out[f"valid/perplexity_l{k + 1}"] = math.exp(float(-(p * p.clamp(min=1e-12).log()).sum()))
    return out


@torch.no_grad()
def mel_l1_by_levels(codec: Any, frames: Tensor, offsets: Tensor, data: str | os.PathLike, split: str,
                     num_clips: int) -> dict[str, float]:
    """Mean |log-mel(input) - VAE-decoded log-mel| on `num_clips` clips of `split` spread evenly (`frames` and
    `offsets` their cached latents): the VAE round trip (`valid/mel_l1_vae`) and the RVQ at 1..K levels
    (`valid/mel_l1_lK`), no vocoder involved."""
    from .datasets import AudioCaptionDataset

    mel_codec, rvq = codec.mel_codec, codec.quantizer
    dataset = AudioCaptionDataset(data, sample_rate=codec.sample_rate, crop_seconds=None, random_crop=False,
                                  split=split)
    count = min(num_clips, len(offsets) - 1)
    picks = sorted({round(i * (len(offsets) - 2) / max(count - 1, 1)) for i in range(count)})
    sums = {"vae": 0.0, **{f"l{k}": 0.0 for k in range(1, rvq.n_q + 1)}}
    for i in picks:
        mel = mel_codec.wave_to_mel(dataset[i]["wave"][None], codec.sample_rate)  # [1, F, S']
        z = frames[int(offsets[i]):int(offsets[i + 1])].float().t()[None]  # [1, D, S]
        s = mel.shape[-1]
        decoded = {"vae": z}
        codes = rvq.encode(z)  # [1, K, S]
        for k in range(1, rvq.n_q + 1):
            decoded[f"l{k}"] = rvq.decode(codes[:, :k])
        for name, vectors in decoded.items():
            out = mel_codec.vae.decode(codec.vectors_to_latent(vectors) / mel_codec.scaling_factor)  # [1, F, S']
            sums[name] += float((out[..., :s] - mel[..., : out.shape[-1]]).abs().mean())
    return {f"valid/mel_l1_{name}": total / len(picks) for name, total in sums.items()}


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[-1])
