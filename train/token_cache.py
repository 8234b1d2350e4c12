"""Token caches for training the token LMs: every clip of a corpus split as conditioning tokens, semantic
tokens and codec codes, computed once and shared by the three LM trainings (and their resumes).

    parts = TokenParts.load(clap="models/clap", cond_rvq="...", kmeans="...", codec="...")  # what a stage needs
    cache = token_cache("data/corpus", "train", parts, ("cond", "semantic", "codes"), root="runs/token-cache")
    cache["codes"].clip(i)  # [K, F_i]

Kinds (one safetensors file per kind and split):
    cond      `audio [N, Q]`: the clip's CLAP *audio* embedding through the conditioning RVQ (MuLan: the LMs
              learn on audio conditions, no captions needed), and `text [N, M, Q]`: M captions per clip (the
              stored caption, then captions redrawn from our corpus's labels) through CLAP's *text* tower and
              the same RVQ: what inference feeds, so training can mix them in (`text_cond_prob`)
    semantic  `tokens [sum S_i]` + `offsets [N + 1]`: k-means ids at ~25 Hz
    codes     `codes [K, sum F_i]` + `offsets [N + 1]`: codec codes at the codec's frame rate (25 Hz for the mel
              RVQ, 50 Hz for the EnCodec-architecture codec), all K levels

Layout: ROOT/<corpus key>/<kind>-<part fingerprints>/<split>.safetensors. The corpus key hashes the
metadata file(s); a kind's folder name holds the fingerprints of the parts that made it (CLAP and RVQ,
k-means, codec), so a retrained part makes a new cache and an old one is never read by mistake. Each
file is written atomically, so a killed run leaves whole files only and a rerun computes what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

KINDS = ("cond", "semantic", "codes")
NEEDS = {"cond": ("clap", "cond_rvq"), "semantic": ("kmeans",), "codes": ("codec",)}


# ---------------------------------------------------------------------------------------------- parts


@dataclass
class TokenParts:
    """The tokenizers a cache is made with (any may be None when no kind needs it)."""

    clap: Any = None  # SoundsmithClap or TransformersClap
    cond_rvq: Any = None  # ConditioningQuantizer
    kmeans: Any = None  # SemanticTokenizer
    codec: Any = None  # MelRVQCodec or NeuralCodec

    @classmethod
    def load(cls, *, clap: str | os.PathLike | None = None, cond_rvq: str | os.PathLike | None = None,
             kmeans: str | os.PathLike | None = None, codec: str | os.PathLike | None = None) -> TokenParts:
        """Load the parts given as folders; the RVQ and the k-means are checked against the CLAP."""
        from soundsmith.codecs.mel_rvq import load_acoustic_codec
        from soundsmith.core.weights import weights_fingerprint
        from soundsmith.gen.clap import load_clap
        from soundsmith.gen.cond_tokens import ConditioningQuantizer
        from soundsmith.pipelines.tokens import load_kmeans

        parts = cls()
        if clap is not None:
            parts.clap = load_clap(_folder(clap, "clap")).eval()
        if cond_rvq is not None:
            if parts.clap is None:
                raise ValueError("the conditioning RVQ needs its CLAP: give clap= as well")
            parts.cond_rvq = ConditioningQuantizer.from_pretrained(_folder(cond_rvq, "cond_rvq"),
                                                                   clap_fingerprint=weights_fingerprint(parts.clap))
        if kmeans is not None:
            parts.kmeans = load_kmeans(_folder(kmeans, "kmeans"), parts.clap)
        if codec is not None:
            parts.codec = load_acoustic_codec(_folder(codec, "codec"))  # MelRVQCodec or NeuralCodec
        return parts

    def fingerprints(self) -> dict[str, str]:
        from soundsmith.core.weights import weights_fingerprint
        from soundsmith.pipelines.tokens import codec_fingerprint

        found = {}
        if self.clap is not None:
            found["clap"] = weights_fingerprint(self.clap)
        if self.cond_rvq is not None:
            found["cond_rvq"] = self.cond_rvq.fingerprint()
        if self.kmeans is not None:
            found["kmeans"] = self.kmeans.fingerprint()
        if self.codec is not None:
            found["codec"] = codec_fingerprint(self.codec)
        return found

    @property
    def sample_rate(self) -> int:
        """The rate clips are read at: the codec's, else the CLAP's (the others resample as needed)."""
        if self.codec is not None:
            return self.codec.sample_rate
        return int(self.clap.sample_rate) if self.clap is not None else 16_000

    def check(self, kinds: Sequence[str]) -> None:
        for kind in kinds:
            if kind not in KINDS:
                raise ValueError(f"unknown token kind {kind!r} (kinds: {', '.join(KINDS)})")
            missing = [p for p in NEEDS[kind] if getattr(self, p) is None]
            if missing:
                raise ValueError(f"{kind} tokens need the {missing[0]} part; set it in the config")


def _folder(path: str | os.PathLike, name: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{name}: no model folder at {folder} (config field '{name}')")
    return folder


# ---------------------------------------------------------------------------------------------- cache


@dataclass
class Ragged:
    """Variable-length token rows stored end to end: `values [..., sum L_i]`, `offsets [N + 1]`."""

    values: Tensor
    offsets: Tensor

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def clip(self, i: int) -> Tensor:
        """Row i, `[..., L_i]` int64."""
        return self.values[..., int(self.offsets[i]):int(self.offsets[i + 1])].long()


@dataclass
class CondTokens:
    audio: Tensor  # [N, Q] int64
    text: Tensor  # [N, M, Q] int64

    def __len__(self) -> int:
        return self.audio.shape[0]


def corpus_key(data: str | os.PathLike) -> str:
    """A short hash of a corpus's metadata file(s) (what `AudioCaptionDataset` reads)."""
    from soundsmith.train.datasets import _metadata_files

    root = Path(data)
    h = hashlib.sha256()
    files = [root] if root.is_file() else _metadata_files(root)
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def cache_folder(root: str | os.PathLike, data: str | os.PathLike, kind: str, fingerprints: dict[str, str],
                 n_captions: int) -> Path:
    tag = "-".join(fingerprints[p][:8] for p in NEEDS[kind])
    if kind == "cond":
        tag += f"-m{n_captions}"
    return Path(root) / corpus_key(data) / f"{kind}-{tag}"


def token_cache(data: str | os.PathLike, split: str, parts: TokenParts, kinds: Sequence[str], *,
                root: str | os.PathLike, n_captions: int = 4, seed: int = 0, batch_size: int = 16,
                progress: bool = True) -> dict[str, Any]:
    """The cached tokens of every clip of `split`: {"cond": CondTokens, "semantic": Ragged, "codes": Ragged}
    for the `kinds` asked, computed (and written under `root`) the first time, read afterwards."""
    from soundsmith.core.weights import read_state_dict

    parts.check(kinds)
    fingerprints = parts.fingerprints()
    out, todo = {}, []
    for kind in kinds:
        path = cache_folder(root, data, kind, fingerprints, n_captions) / f"{split}.safetensors"
        if path.is_file():
            out[kind] = _unpack(kind, read_state_dict(path))
        else:
            todo.append((kind, path))
    if todo:
        computed = _compute(data, split, parts, [k for k, _ in todo], n_captions=n_captions, seed=seed,
                            batch_size=batch_size, progress=progress)
        for kind, path in todo:
            _save(path, computed[kind], {"kind": kind, "split": split, "data": str(Path(data).resolve()),
                                         **{f"fingerprint_{p}": fingerprints[p] for p in NEEDS[kind]}})
            out[kind] = _unpack(kind, computed[kind])
    sizes = {len(v) for v in out.values()}
    if len(sizes) != 1:
        raise ValueError(f"token cache of {data} ({split}) is inconsistent: {sizes} clips across kinds; delete "
                         f"{Path(root) / corpus_key(data)} and rerun")
    return out


def _unpack(kind: str, tensors: dict[str, Tensor]) -> Any:
    if kind == "cond":
        return CondTokens(tensors["audio"].long(), tensors["text"].long())
    key = "tokens" if kind == "semantic" else "codes"
    return Ragged(tensors[key], tensors["offsets"].long())


def _save(path: Path, tensors: dict[str, Tensor], meta: dict[str, str]) -> None:
    from soundsmith.core.weights import save_safetensors

    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, path, metadata={k: str(v) for k, v in meta.items()})
    log.info("cached %s", path)


@torch.no_grad()
def _compute(data: str | os.PathLike, split: str, parts: TokenParts, kinds: list[str], *, n_captions: int,
             seed: int, batch_size: int, progress: bool) -> dict[str, dict[str, Tensor]]:
    """Read every clip of the split once (whole, mono, at `parts.sample_rate`) and tokenize it."""
    from tqdm.auto import tqdm

    from .datasets import AudioCaptionDataset

    sr = parts.sample_rate
    dataset = AudioCaptionDataset(data, sample_rate=sr, crop_seconds=None, random_crop=False, split=split)
    audio_cond, semantic, codes, captions = [], [], [], []
    bar = tqdm(total=len(dataset), disable=not progress, desc=f"token cache ({split})", unit="clip")
    group: list[dict[str, Any]] = []

    def flush() -> None:
        wave = torch.stack([item["wave"] for item in group])  # [b, C, T], one length
        if "cond" in kinds:
            audio_cond.append(parts.cond_rvq.tokenize(parts.clap.embed_audio(wave, sr).float()).cpu())  # [b, Q]
        if "semantic" in kinds:
            semantic.extend(parts.kmeans.tokenize(wave, sr).cpu())  # b x [S]
        if "codes" in kinds:
            codes.extend(parts.codec.encode(wave, sr).cpu())  # b x [K, F]
        bar.update(len(group))
        group.clear()

    for i in range(len(dataset)):
        item = dataset[i]
        if group and (len(group) == batch_size or item["wave"].shape[-1] != group[0]["wave"].shape[-1]):
            flush()
        group.append(item)
        if "cond" in kinds:
            captions.append(_captions(dataset.records[i], i, n_captions, seed))
    if group:
        flush()
    bar.close()
    out: dict[str, dict[str, Tensor]] = {}
    if "cond" in kinds:
        out["cond"] = {"audio": torch.cat(audio_cond).to(torch.int16),
                       "text": _text_tokens(parts, captions).to(torch.int16)}
    if "semantic" in kinds:
        out["semantic"] = {"tokens": torch.cat(semantic).to(torch.int16), "offsets": _offsets(semantic)}
    if "codes" in kinds:
        out["codes"] = {"codes": torch.cat(codes, dim=-1).to(torch.int16), "offsets": _offsets(codes)}
    return out


def _offsets(rows: list[Tensor]) -> Tensor:
    return torch.tensor([0] + np.cumsum([r.shape[-1] for r in rows]).tolist(), dtype=torch.long)


def _captions(record: Any, index: int, n: int, seed: int) -> list[str]:
    """`n` captions of a clip: its stored ones, then (our corpus) captions redrawn from its labels, seeded by
    (seed, index); a corpus without such labels repeats its stored captions."""
    captions = list(record.captions[:n])
    if len(captions) < n and record.labels.get("domain"):
        from soundsmith.core.captions import caption

        rng = np.random.default_rng([seed, index])
        try:
            captions += [caption(record.labels, rng, style="train") for _ in range(n - len(captions))]
        except ValueError:  # labels the caption templates do not know (another corpus): stored captions only
            captions = list(record.captions[:n])
    while len(captions) < n:
        captions.append(captions[len(captions) % len(record.captions)])
    return captions


def _text_tokens(parts: TokenParts, captions: list[list[str]], batch: int = 256) -> Tensor:
    """Captions `[N][M]` -> conditioning tokens `[N, M, Q]` (each distinct caption embedded once)."""
    distinct = list(dict.fromkeys(c for row in captions for c in row))
    tokens = torch.cat([parts.cond_rvq.tokenize(parts.clap.embed_text(distinct[i:i + batch]).float()).cpu()
                        for i in range(0, len(distinct), batch)])  # [U, Q]
    index = {c: i for i, c in enumerate(distinct)}
    return tokens[torch.tensor([[index[c] for c in row] for row in captions])]  # [N, M, Q]


def describe(cache: dict[str, Any]) -> str:
    """One line: clips and tokens per kind (for the training log)."""
    parts = []
    for kind, value in cache.items():
        if isinstance(value, CondTokens):
            parts.append(f"cond {tuple(value.audio.shape)} + text {tuple(value.text.shape)}")
        else:
            parts.append(f"{kind} {value.values.shape[-1]} steps over {len(value)} clips")
    return json.dumps(parts)
