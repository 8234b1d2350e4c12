"""The latent cache the latent-diffusion UNet trains on: every clip of a split encoded once.

For each clip: the mel VAE posterior's mean and std (scaled by the VAE's scaling_factor, as the UNet
sees latents), the CLAP audio embedding, and the CLAP text embeddings of its captions (the stored one
plus some drawn from its labels). Written to `OUT/cache/<split>.safetensors` + `<split>.json` and
reused while the VAE, the CLAP and the corpus metadata are unchanged.

Its own module because two modules need it: train/train_unet.py caches the corpus's splits, and
train/mixup.py caches rendered mixtures with the same encoder and keys its beat index by the same
data fingerprint; neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .metrics_log import progress_bar

log = logging.getLogger(__name__)

CACHE_FORMAT = "soundsmith-latent-cache/1"


@dataclass
class LatentCache:
    """Every clip of one split, encoded once. Latents are scaled (x scaling_factor) like the UNet sees them.

    mean, std: `[C, total_frames, F']` float16, clip i at frames offsets[i]:offsets[i+1];
    audio_emb: `[N, D]`; text_emb: `[M, D]` with text_owner `[M]` (the clip of each caption); captions: M texts.
    """

    mean: Tensor
    std: Tensor
    offsets: Tensor
    audio_emb: Tensor
    text_emb: Tensor
    text_owner: Tensor
    captions: list[str]

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def frames(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def caption_rows(self, i: int) -> list[int]:
        """Rows of `text_emb` / `captions` that belong to clip i."""
        if not hasattr(self, "_rows"):
            rows: dict[int, list[int]] = {}
            for row, owner in enumerate(self.text_owner.tolist()):
                rows.setdefault(owner, []).append(row)
            self._rows = rows
        return self._rows[i]


def fingerprint_data(root: Path) -> str:
    """A short hash of the corpus's metadata files (names, sizes, modification times): what a cache
    built from `root` is keyed by, so a changed corpus rebuilds it without reading the audio."""
    h = hashlib.sha256()
    for meta in sorted(root.glob("*.jsonl")) + sorted(root.glob("*.csv")):
        st = meta.stat()
        h.update(f"{meta.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def build_cache(codec: Any, conditioner: Any, data: Path, split: str, folder: Path, *, captions_per_clip: int,
                seed: int, dataset: Any = None, name: str | None = None, extra_key: dict | None = None
                ) -> LatentCache:
    """Encode (or reuse) the cache of `split`; a change of VAE, CLAP or data metadata rebuilds it.

    `dataset` (items like AudioCaptionDataset's), `name` (file stem, default the split) and `extra_key`
    (more fields that must match for reuse) let other clip sets share this encoder (train/mixup.py).
    """
    from safetensors.torch import load_file, save_file
    from soundsmith.core.files import write_json
    from soundsmith.core.weights import weights_fingerprint

    from .datasets import AudioCaptionDataset

    key = {"format": CACHE_FORMAT, "split": split, "vae": weights_fingerprint(codec.vae),
           "clap": conditioner.fingerprint(), "data": fingerprint_data(Path(data)),
           "captions_per_clip": captions_per_clip, "seed": seed, **(extra_key or {})}
    tensors_path, meta_path = folder / f"{name or split}.safetensors", folder / f"{name or split}.json"
    if tensors_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") == key:
            t = load_file(str(tensors_path))
            log.info("latent cache %s: reused (%d clips)", tensors_path, t["offsets"].numel() - 1)
            return LatentCache(t["mean"], t["std"], t["offsets"], t["audio_emb"], t["text_emb"], t["text_owner"],
                               meta["captions"])
        log.info("latent cache %s is stale (parts or data changed); rebuilding", tensors_path)
    if dataset is None:
        dataset = AudioCaptionDataset(data, sample_rate=codec.sample_rate, crop_seconds=None, random_crop=False,
                                      split=split)
    rng = np.random.default_rng([seed, 17])
    means, stds, audio_emb, captions, owners, offsets = [], [], [], [], [], [0]
    bar = progress_bar(len(dataset), desc=f"cache {split}", unit="clip")
    pending: list[dict] = []

    @torch.no_grad()
    def flush() -> None:  # encode clips of one length as one batch (a corpus of 5 s clips: 16 at a time)
        wave = torch.stack([item["wave"] for item in pending])  # [b, C, T]
        mel = codec.wave_to_mel(wave, codec.sample_rate)  # [b, F, S]
        posterior = codec.vae.encode(mel)
        scale = codec.scaling_factor
        emb = (conditioner.model.embed_audio(wave, codec.sample_rate).float().cpu() if conditioner.has_audio_tower
               else torch.zeros(len(pending), conditioner.dim))
        for k, item in enumerate(pending):
            means.append((posterior.mean[k] * scale).half())  # [C, S/4, F/4]
            stds.append((posterior.std[k] * scale).half())
            offsets.append(offsets[-1] + means[-1].shape[1])
            audio_emb.append(emb[k])
            for text in _captions(item, dataset, captions_per_clip, rng):
                captions.append(text)
                owners.append(item["index"])
        bar.update(len(pending))
        pending.clear()

    for i in range(len(dataset)):
        item = dataset[i]
        if pending and (item["wave"].shape != pending[0]["wave"].shape or len(pending) == 16):
            flush()
        pending.append(item)
    if pending:
        flush()
    bar.close()
    text_emb = torch.cat([conditioner.embed_text(captions[k:k + 256]).cpu() for k in range(0, len(captions), 256)])
    cache = LatentCache(torch.cat(means, 1), torch.cat(stds, 1), torch.tensor(offsets), torch.stack(audio_emb),
                        text_emb.float(), torch.tensor(owners), captions)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"mean": cache.mean.contiguous(), "std": cache.std.contiguous(), "offsets": cache.offsets,
               "audio_emb": cache.audio_emb, "text_emb": cache.text_emb, "text_owner": cache.text_owner},
              str(tensors_path))
    write_json(meta_path, {"key": key, "captions": captions})
    log.info("latent cache %s: %d clips, %d latent frames", tensors_path, len(cache), cache.mean.shape[1])
    return cache


def _captions(item: dict, dataset: Any, k: int, rng: np.random.Generator) -> list[str]:
    """The clip's stored caption plus up to k - 1 more drawn from its labels (our corpus), distinct."""
    texts = [item["caption"]]
    labels = item.get("labels") or {}
    if labels.get("domain") and k > 1:
        from soundsmith.core.captions import caption

        for _ in range(4 * k):
            if len(texts) >= k:
                break
            try:
                text = caption(labels, rng, style="train")
            except (KeyError, ValueError, TypeError):
                break  # labels of another corpus: keep the stored caption only
            if text not in texts:
                texts.append(text)
    return texts
