"""Fit the semantic tokenizer (gen/semantic.py): k-means over frame features of the corpus.

    soundsmith train kmeans --data data/corpus --out runs/kmeans [--features clap|hubert:PATH:LAYER]
                            [--clap models/clap] [--resume] [--max-steps ITERS]

Steps:
    1. frame features of every train clip (whole clips; our CLAP's 25 Hz frames by default, or a
       HuBERT/MERT layer pooled to 25 Hz), `frames_per_clip` of them kept per clip at seeded random
       positions, written in shards of `shard_clips` clips to `OUT/cache/` (atomically; `--resume`
       reuses the shards already written, so a killed extraction continues where it stopped);
    2. standardise each dimension and run k-means (faiss, else scikit-learn) for `iters` iterations
       (`--max-steps` overrides `iters`);
    3. validate on the valid split's frames: the share of feature variance the centroids leave
       unexplained, cluster usage (perplexity, clusters used), and, on a labelled corpus, the normalised
       mutual information between a frame's token and its clip's label set (how much the tokens say
       about what is sounding);
    4. export the centroids in fp16 to `OUT/export/` (config names the feature model and its fingerprint).

Run folder: config.json, metrics.jsonl, tensorboard/, cache/, export/.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from soundsmith.core.run_lock import check_output_dir_arg, releases_folder_locks
from torch import Tensor

from .config import CONFIGS, Config, bounded, load_config
from .metrics_log import MetricsLogger
from .run_folder import RunFolder

log = logging.getLogger(__name__)

COMPONENT = "kmeans"
DEFAULT_CONFIG = CONFIGS / f"{COMPONENT}.json"


@dataclass
class KMeansTrainConfig(Config):
    """Everything a k-means run needs besides the data and run folders."""

    seed: int = bounded(0, 0, 2**31 - 1)
    features: str = "clap"  # "clap" (our CLAP's frame features) or "hubert:PATH:LAYER"; `--features` sets it
    clap: str = "models/clap"  # the CLAP folder for "clap"; `--clap` sets it
    hubert_pool: int = bounded(2, 1, 16)  # HuBERT frames averaged per token (2: 50 Hz -> 25 Hz)
    n_clusters: int = bounded(512, 2)  # vocabulary size (see gen/semantic.py for why 512)
    iters: int = bounded(25, 1)  # k-means iterations (faiss) / passes (scikit-learn)
    backend: str = bounded("auto", choices=("auto", "faiss", "sklearn"))
    normalize: bool = True  # standardise each dimension before clustering
    frames_per_clip: int = bounded(64, 0)  # frames kept per train clip at seeded random positions; 0: all
    max_train_clips: int = bounded(0, 0)  # 0: every train clip; N: the first N (quick runs)
    shard_clips: int = bounded(256, 1)  # clips per cache shard (the unit a resumed extraction restarts from)
    num_valid_clips: int = bounded(288, 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        from soundsmith.gen.semantic import parse_features

        parse_features(self.features)  # one-line error for a malformed spec


@releases_folder_locks
def train(config: str | os.PathLike | None = None, data: str | os.PathLike = "data/corpus",
          out: str | os.PathLike = "runs/kmeans", resume: bool = False, max_steps: int | None = None,
          overrides: Any = None, features_model: Any = None, force_change: bool = False) -> Path:
    """Fit the semantic tokenizer; return the export folder `OUT/export`.

    Args:
        config: JSON config file (default: `train/configs/kmeans.json`; on resume: the run's config.json).
        data: corpus folder (train split for fitting, valid split for validation).
        out: run folder.
        resume: reuse the feature shards already in `OUT/cache/` (a fresh run refuses a folder holding some).
        max_steps: k-means iterations (default: the config's `iters`).
        overrides: "key=value" strings or a dict applied on top of the config file (`features=...`, `clap=...`).
        force_change: on resume, accept settings that change the run (logged in OUT/config_changes.jsonl).
        features_model: an already loaded feature model (`ClapFrameFeatures` / `HubertFeatures`) instead of
            the one `config.features` names.
    """
    from soundsmith.gen.semantic import SemanticTokenizer, load_features, parse_features

    from .datasets import AudioCaptionDataset

    # 1. config, run folder, feature model ----------------------------------------------------------
    out = check_output_dir_arg(out)
    cache_dir = out / "cache"
    has_cache = cache_dir.is_dir() and any(cache_dir.glob("frames-*.safetensors"))
    if resume and not has_cache:
        raise FileNotFoundError(f"--resume: no feature shards in {cache_dir}")
    if not resume and (has_cache or (out / "export").exists()):
        raise ValueError(f"{out} already holds a k-means run; pass --resume to continue it or choose another --out")
    if config is None:
        config = out / "config.json" if resume and (out / "config.json").is_file() else DEFAULT_CONFIG
    cfg = load_config(KMeansTrainConfig, config, overrides)
    run = RunFolder(out, cfg, data=data, resume=resume, force_change=force_change)
    iters = cfg.iters if max_steps is None else int(max_steps)
    if features_model is None:
        spec = parse_features(cfg.features)
        if spec["kind"] == "hubert":
            spec["pool"] = cfg.hubert_pool
        features_model = load_features(spec, clap=cfg.clap)
    run.open()  # creates and locks OUT (the feature shards go into it): after the data is checked
    tokenizer = SemanticTokenizer(features_model, n_clusters=cfg.n_clusters, normalize=cfg.normalize)
    log.info("kmeans: %s features, %d-d at %g Hz, %d clusters", tokenizer.config.features["kind"],
             features_model.dim, features_model.frame_rate, cfg.n_clusters)

    # 2. frame features of the train clips, cached in shards ----------------------------------------
    sr = getattr(features_model, "sample_rate", 16_000)
    train_set = AudioCaptionDataset(data, sample_rate=sr, crop_seconds=None, split="train")
    n_train = len(train_set) if cfg.max_train_clips == 0 else min(cfg.max_train_clips, len(train_set))
    key = {"features_fingerprint": features_model.fingerprint(), "data": str(Path(data).resolve()),
           "seed": str(cfg.seed), "frames_per_clip": str(cfg.frames_per_clip)}
    t0 = time.perf_counter()
    frames = []
    for start in range(0, n_train, cfg.shard_clips):
        indices = range(start, min(start + cfg.shard_clips, n_train))
        frames.append(_shard(cache_dir / f"frames-{start // cfg.shard_clips:05d}.safetensors", features_model,
                             train_set, indices, key, cfg.seed, cfg.frames_per_clip))
    frames_all = torch.cat(frames).float()  # [N, D]
    log.info("kmeans: %d frames from %d clips (%.0f s)", len(frames_all), n_train, time.perf_counter() - t0)

    # 3. k-means ---------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    tokenizer.fit(frames_all, iters=iters, seed=cfg.seed, backend=cfg.backend)
    fit_seconds = time.perf_counter() - t0

    # 4. validate, export ------------------------------------------------------------------------------
    try:
        valid_set = AudioCaptionDataset(data, sample_rate=sr, crop_seconds=None, split="valid")
    except ValueError as err:
        log.warning("no validation split (%s); validating on training clips", err)
        valid_set = train_set
    metrics = validate(tokenizer, valid_set, cfg.num_valid_clips)
    metrics.update({"train/frames": float(len(frames_all)), "train/fit_seconds": fit_seconds,
                    "train/unexplained_variance": unexplained_variance(tokenizer, frames_all)})
    logger = MetricsLogger(out, enabled=True)
    logger.log(iters, metrics)
    logger.close()
    export = tokenizer.save_pretrained(out / "export")
    log.info("exported %s: %s", export, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return export


# ------------------------------------------------------------------------------------------ helpers


def _shard(path: Path, features_model: Any, dataset: Any, indices: range, key: dict[str, str], seed: int,
           frames_per_clip: int) -> Tensor:
    """Frames `[n, D]` (fp16) of the clips `indices`: read from `path` if it holds them, else extracted."""
    from soundsmith.core.weights import read_state_dict, save_safetensors

    shard_key = {**key, "clips": f"{indices.start}-{indices.stop}"}
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            stored = f.metadata() or {}
        if all(stored.get(k) == v for k, v in shard_key.items()):
            return read_state_dict(path)["frames"]
        raise ValueError(f"{path} was extracted with other settings or another feature model; use a new --out")
    kept = []
    for i in indices:
        feats = features_model.frame_features(dataset[i]["wave"], dataset.sample_rate)[0]  # [S, D]
        if 0 < frames_per_clip < len(feats):
            rng = np.random.default_rng([seed, i])
            pick = np.sort(rng.choice(len(feats), frames_per_clip, replace=False))
            feats = feats[torch.from_numpy(pick)]
        kept.append(feats.cpu().to(torch.float16))
    frames = torch.cat(kept)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors({"frames": frames}, path, metadata={"format": "pt", **shard_key})
    return frames


@torch.no_grad()
def unexplained_variance(tokenizer: Any, frames: Tensor) -> float:
    """Mean squared distance of standardised frames to their centroid over their total variance (0 = exact)."""
    x = tokenizer._standardise(frames.float())  # [N, D]
    codes = tokenizer.tokenize_features(frames)  # [N]
    residual = (x - tokenizer.centroids[codes]).pow(2).sum(-1).mean()
    total = (x - x.mean(0)).pow(2).sum(-1).mean()
    return float(residual / total.clamp(min=1e-12))


@torch.no_grad()
def validate(tokenizer: Any, dataset: Any, num_clips: int) -> dict[str, float]:
    """Held-out frames: unexplained variance, cluster usage, and token-label NMI on a labelled corpus."""
    from sklearn.metrics import normalized_mutual_info_score
    from soundsmith.eval.clap_metrics import label_key  # (domain,) for a corpus without our labels

    count = min(num_clips, len(dataset))
    picks = sorted({round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)})
    feats, tokens, labels = [], [], []
    for i in picks:
        f = tokenizer.features.frame_features(dataset[i]["wave"], dataset.sample_rate)[0]  # [S, D]
        feats.append(f)
        tokens.append(tokenizer.tokenize_features(f))
        labels += [repr(label_key(dataset.records[i].labels))] * len(f)
    codes = torch.cat(tokens)
    usage = torch.bincount(codes, minlength=tokenizer.n_clusters).float()
    p = usage / usage.sum()
    out = {"valid/unexplained_variance": unexplained_variance(tokenizer, torch.cat(feats)),
           "valid/perplexity": math.exp(-(p * p.clamp(min=1e-12).log()).sum().item()),
           "valid/clusters_used": float((usage > 0).sum())}
    if len(set(labels)) > 1:
        out["valid/token_label_nmi"] = float(normalized_mutual_info_score(labels, codes.numpy()))
    return out

