"""Semantic tokens: k-means cluster ids of self-supervised frame features at ~25 Hz (AudioLM, MusicLM).

Feature models (one small contract, like fadtk's embedders: `frame_features(wave, sample_rate) ->
[B, S, D]`, `frame_rate`, `dim`, `fingerprint()`, `spec()`):

- `ClapFrameFeatures`: our CLAP audio tower's 25 Hz frame features (`SoundsmithClap.audio_frame_features`),
  the default: it ships with the suite and the token backend already loads that CLAP.
- `HubertFeatures`: one hidden layer of a transformers `HubertModel` folder (HuBERT, or MERT-v0 which
  uses the same layout), 50 Hz native, average-pooled x`pool` (default 2 -> 25 Hz, MusicLM's rate).
  The encoder is cut after the chosen layer, so the layers above it cost nothing.

`SemanticTokenizer` holds the centroids: `fit(features)` runs k-means (faiss when installed, else
scikit-learn's MiniBatchKMeans; both are far faster than our torch Lloyd loop in codecs/rvq.py at
hundreds of thousands of frames), `tokenize(wave, sample_rate) -> [B, S]` assigns each frame to its
nearest centroid (in torch, the same distance as the RVQ uses). Frames are standardised per
dimension before clustering (AudioLM normalises w2v-BERT features the same way), so no single
high-variance dimension decides the clusters.

Default `n_clusters = 512`, not MusicLM's 1024: our standard corpus's train split has ~290k frames at
25 Hz (2,300 clips x 5 s), so 512 clusters see ~560 frames each (1024 would see ~280), and the semantic
LM trained on that small corpus learns a 512-way softmax from twice as many examples per token. The
CLAP frame features come from a tower trained on ~30 sound/music/speech classes, which does not need
1024 clusters to be told apart. Measured on 300 train clips of the standard corpus (19,200 frames; held-out
valid split): 512 clusters give token-label NMI 0.623 and 19.3% unexplained variance, 1024 give 0.628 and
17.5% - twice the vocabulary for 0.005 NMI. Users with HuBERT/MERT and a large corpus can pass 1024.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from soundsmith.core.weights import config_from_dict
from torch import Tensor

log = logging.getLogger(__name__)

MODEL_TYPE = "soundsmith-semantic-kmeans"
WEIGHTS_NAME = "centroids.safetensors"
KMEANS_BACKENDS = ("auto", "faiss", "sklearn")


class FrameFeatures(Protocol):
    """What the semantic tokenizer needs from a feature model."""

    frame_rate: float
    dim: int

    def frame_features(self, wave: Any, sample_rate: int) -> Tensor: ...  # [B, C, T] / [C, T] -> [B, S, D]

    def fingerprint(self) -> str: ...

    def spec(self) -> dict[str, Any]: ...  # JSON-ready: enough to rebuild it (kind, path, layer, ...)


# ------------------------------------------------------------------------------------ feature models


class ClapFrameFeatures:
    """Our CLAP's audio-tower frame features: `[B, S, D']` at 25 Hz (S = samples at 16 kHz // 640).

    Args:
        clap: a loaded `SoundsmithClap` (shared with the conditioner, so it is loaded once).
        path: the folder it came from, recorded in the tokenizer's config (informational).
    """

    kind = "clap"

    def __init__(self, clap: Any, *, path: str | os.PathLike | None = None):
        from soundsmith.gen.clap import SoundsmithClap

        if not isinstance(clap, SoundsmithClap):
            raise ValueError(f"ClapFrameFeatures needs our SoundsmithClap (it has audio_frame_features), got "
                             f"{type(clap).__name__}; for other models use HubertFeatures")
        self.clap = clap.eval()
        self.path = None if path is None else str(path)
        self.frame_rate = float(clap.config.frame_rate)
        self.dim = int(clap.config.frame_dim)
        self.sample_rate = int(clap.sample_rate)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ClapFrameFeatures:
        from soundsmith.gen.clap import SoundsmithClap

        return cls(SoundsmithClap.from_pretrained(folder), path=folder)

    @torch.no_grad()
    def frame_features(self, wave: Any, sample_rate: int) -> Tensor:
        """`[B, C, T]` or `[C, T]` at `sample_rate` -> float32 `[B, S, D']`."""
        return self.clap.audio_frame_features(wave, sample_rate).float()

    def fingerprint(self) -> str:
        from soundsmith.core.weights import weights_fingerprint

        return weights_fingerprint(self.clap)

    @torch.no_grad()
    def pool(self, frames: Tensor) -> Tensor:
        """Frame features `[B, S, D']` -> CLAP's L2-normalised clip embedding `[B, D]` (its audio head)."""
        weight = self.clap.audio_projection[0].weight
        return self.clap.pool_frames(frames.to(weight.device, weight.dtype)).float()

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "frame_rate": self.frame_rate, "dim": self.dim}

    def to(self, device: Any = None, dtype: Any = None) -> ClapFrameFeatures:
        self.clap.to(device=device, dtype=dtype)
        return self


class HubertFeatures:
    """Hidden layer `layer` of a transformers `HubertModel` (HuBERT / MERT-v0 layout) as frame features.

    `layer` indexes transformers' `hidden_states` (0 = the transformer's input, i = output of layer i;
    HuBERT-base layer 9 and MERT layer 7 are the usual choices). Audio is mixed to mono, resampled
    to the model's rate and normalised by the folder's `Wav2Vec2FeatureExtractor`, exactly as
    transformers would prepare it. Frames (50 Hz for a 320-sample stride) are average-pooled in
    groups of `pool` (default 2 -> 25 Hz; 1 keeps the native rate).
    """

    kind = "hubert"

    def __init__(self, model: Any, feature_extractor: Any, *, layer: int, pool: int = 2,
                 path: str | os.PathLike | None = None):
        num_layers = int(model.config.num_hidden_layers)
        if not isinstance(layer, int) or not 0 <= layer <= num_layers:
            raise ValueError(f"layer must be an integer in [0, {num_layers}] (the model's hidden layers), got {layer!r}")
        if not isinstance(pool, int) or pool < 1:
            raise ValueError(f"pool must be an integer >= 1, got {pool!r}")
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.layer, self.pool = layer, pool
        self.path = None if path is None else str(path)
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.hop = int(np.prod(model.config.conv_stride))
        self.frame_rate = self.sample_rate / self.hop / pool
        self.dim = int(model.config.hidden_size)
        self._fingerprint: str | None = None
        # Cut the encoder after the layer we read (hidden_states[layer] is unchanged by the layers above
        # it, checked in tests/test_semantic.py for both layer-norm variants): up to 3x less compute.
        keep = min(layer + 1, num_layers)
        if keep < num_layers:
            self.model.encoder.layers = self.model.encoder.layers[:keep]

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, layer: int, pool: int = 2) -> HubertFeatures:
        """A folder saved by `HubertModel.save_pretrained` (+ `preprocessor_config.json` if it has one)."""
        from transformers import HubertModel, Wav2Vec2FeatureExtractor

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"HuBERT model folder not found (no config.json): {folder}")
        model = HubertModel.from_pretrained(str(folder), local_files_only=True)
        if (folder / "preprocessor_config.json").is_file():
            feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        else:  # HuBERT's published preprocessing: 16 kHz, zero-mean unit-variance per clip
            log.warning("%s has no preprocessor_config.json; using Wav2Vec2FeatureExtractor defaults "
                        "(16 kHz, do_normalize=True)", folder)
            feature_extractor = Wav2Vec2FeatureExtractor()
        return cls(model, feature_extractor, layer=layer, pool=pool, path=folder)

    @torch.no_grad()
    def frame_features(self, wave: Any, sample_rate: int) -> Tensor:
        """`[B, C, T]` or `[C, T]` at `sample_rate` -> float32 `[B, S, D]` at `frame_rate`."""
        from soundsmith.gen.clap import prepare_audio

        min_samples = 400 * self.pool  # HuBERT's conv front-end needs 400 samples for its first frame
        mono = prepare_audio(wave, sample_rate, self.sample_rate, min_samples)  # [B, T] at the model's rate
        inputs = self.feature_extractor([m.numpy() for m in mono.cpu()], sampling_rate=self.sample_rate,
                                        return_tensors="pt")
        device = next(self.model.parameters()).device
        values = inputs["input_values"].to(device, next(self.model.parameters()).dtype)
        states = self.model(values, output_hidden_states=True).hidden_states[self.layer].float()  # [B, S50, D]
        if self.pool > 1:
            usable = states.shape[1] - states.shape[1] % self.pool  # a trailing partial group is dropped
            states = F.avg_pool1d(states[:, :usable].transpose(1, 2), self.pool).transpose(1, 2)  # [B, S, D]
        return states

    def fingerprint(self) -> str:
        from soundsmith.core.weights import weights_fingerprint

        if self._fingerprint is None:
            self._fingerprint = f"{weights_fingerprint(self.model)}-L{self.layer}-p{self.pool}"
        return self._fingerprint

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "layer": self.layer, "pool": self.pool,
                "frame_rate": self.frame_rate, "dim": self.dim}

    def to(self, device: Any = None, dtype: Any = None) -> HubertFeatures:
        self.model.to(device=device, dtype=dtype)
        return self


def parse_features(spec: str) -> dict[str, Any]:
    """A `--features` string -> a spec dict: "clap" or "hubert:PATH:LAYER" (PATH may hold ':')."""
    text = str(spec).strip()
    if text == "clap":
        return {"kind": "clap"}
    if text.startswith("hubert:"):
        path, sep, layer = text[len("hubert:"):].rpartition(":")
        if not sep or not path or not layer.strip().lstrip("-").isdigit():
            raise ValueError(f"features must be 'clap' or 'hubert:PATH:LAYER' (LAYER an integer), got {spec!r}")
        return {"kind": "hubert", "path": path, "layer": int(layer)}
    raise ValueError(f"features must be 'clap' or 'hubert:PATH:LAYER', got {spec!r}")


def load_features(spec: dict[str, Any], *, clap: str | os.PathLike | None = None,
                  base: str | os.PathLike | None = None) -> FrameFeatures:
    """Build the feature model a spec names. `clap`: the CLAP folder when the spec has no path;
    `base`: a folder that relative paths are tried against first (a model folder's own location)."""

    def resolve(path: str | os.PathLike) -> Path:
        p = Path(path)
        if not p.is_absolute() and base is not None and (Path(base) / p).exists():
            return Path(base) / p
        return p

    kind = spec.get("kind")
    if kind == "clap":
        path = spec.get("path") or clap
        if path is None:
            raise ValueError("the CLAP frame features need a CLAP folder: pass clap= (e.g. models/clap)")
        return ClapFrameFeatures.from_pretrained(resolve(path))
    if kind == "hubert":
        return HubertFeatures.from_pretrained(resolve(spec["path"]), layer=int(spec["layer"]),
                                              pool=int(spec.get("pool", 2)))
    raise ValueError(f"unknown feature model kind {kind!r}; expected 'clap' or 'hubert'")


# ---------------------------------------------------------------------------------------- k-means


def fit_kmeans(x: Tensor, n_clusters: int, *, iters: int = 25, seed: int = 0, backend: str = "auto") -> Tensor:
    """k-means centroids `[n_clusters, D]` of `x [N, D]` with faiss (default when installed) or scikit-learn.

    faiss: k-means++ seeds (scikit-learn's `kmeans_plusplus` on 16 random frames per centroid: faiss's
    own random seeding merges clusters, and k-means++ on all frames takes minutes), then `iters` Lloyd
    iterations on at most 256 frames per centroid (faiss's default sample). scikit-learn:
    MiniBatchKMeans (k-means++ seeds) for `iters` passes over the data in batches of 4096.
    """
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(KMEANS_BACKENDS)}, got {backend!r}")
    if x.dim() != 2:
        raise ValueError(f"k-means needs frames [N, D], got shape {list(x.shape)}")
    if x.shape[0] < n_clusters:
        raise ValueError(f"k-means needs at least n_clusters={n_clusters} frames, got {x.shape[0]}")
    data = np.ascontiguousarray(x.detach().cpu().float().numpy())
    if backend in ("auto", "faiss"):
        try:
            import faiss
        except ImportError:
            if backend == "faiss":
                raise ValueError("backend='faiss' but faiss is not installed (pip install faiss-cpu)") from None
            backend = "sklearn"
        else:
            from sklearn.cluster import kmeans_plusplus

            rng = np.random.default_rng(seed)
            sample = data[rng.choice(len(data), min(len(data), 16 * n_clusters), replace=False)]
            init, _ = kmeans_plusplus(sample, n_clusters, random_state=int(seed) % 2**32)
            km = faiss.Kmeans(data.shape[1], n_clusters, niter=iters, seed=int(seed) % 2**31, verbose=False)
            km.train(data, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
            return torch.from_numpy(np.array(km.centroids, dtype=np.float32))
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=n_clusters, batch_size=4096, max_iter=iters, n_init=1,
                         random_state=int(seed) % 2**32)
    km.fit(data)
    return torch.from_numpy(km.cluster_centers_.astype(np.float32))


# ------------------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class SemanticTokenizerConfig:
    n_clusters: int = 512  # see the module docstring for why not 1024
    dim: int = 256  # feature size D (the CLAP frame features' 256)
    frame_rate: float = 25.0  # tokens per second (the feature model's frame rate)
    normalize: bool = True  # standardise each feature dimension (training-set mean/std) before clustering
    features: dict | None = None  # the feature model's spec (kind, path, layer, pool, ...)
    features_fingerprint: str | None = None  # its weights fingerprint; loading with other weights is refused

    def __post_init__(self) -> None:
        if self.n_clusters < 2 or self.dim < 1 or not self.frame_rate > 0:
            raise ValueError(f"SemanticTokenizerConfig needs n_clusters >= 2, dim >= 1, frame_rate > 0; got "
                             f"{self.n_clusters}, {self.dim}, {self.frame_rate}")

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> SemanticTokenizerConfig:
        return config_from_dict(cls, data, where, ignore=("model_type",), metadata_prefix=None)


class SemanticTokenizer:
    """Frame features -> nearest of `n_clusters` k-means centroids: `tokenize(wave, sr) -> [B, S]`.

    Args:
        features: the feature model (`ClapFrameFeatures` or `HubertFeatures`); may be None for a
            tokenizer used on precomputed features only (`tokenize_features`).
        n_clusters: vocabulary size (default 512).
        normalize: standardise each dimension before clustering (default True).
    """

    def __init__(self, features: FrameFeatures | None = None, *, n_clusters: int = 512, normalize: bool = True,
                 config: SemanticTokenizerConfig | None = None):
        if config is None:
            if features is None:
                raise ValueError("SemanticTokenizer needs a feature model (or a config with its spec)")
            config = SemanticTokenizerConfig(n_clusters=n_clusters, dim=features.dim, frame_rate=features.frame_rate,
                                             normalize=normalize, features=features.spec(),
                                             features_fingerprint=features.fingerprint())
        elif features is not None:
            check_features(features, config, "SemanticTokenizer")
        self.config = config
        self.features = features
        self.centroids: Tensor | None = None  # [n_clusters, D], in the normalised space
        self.mean = torch.zeros(config.dim)  # [D]
        self.std = torch.ones(config.dim)  # [D]

    @property
    def n_clusters(self) -> int:
        return self.config.n_clusters

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def is_fitted(self) -> bool:
        return self.centroids is not None

    # --------------------------------------------------------------------------------------- fit

    def fit(self, features: Tensor | list[Tensor], *, iters: int = 25, seed: int = 0, backend: str = "auto"
            ) -> SemanticTokenizer:
        """Cluster frames: `[N, D]`, `[B, S, D]` or a list of `[S, D]` / `[B, S, D]` tensors. Returns self."""
        x = _frames(features, self.config.dim)  # [N, D]
        if self.config.normalize:
            self.mean = x.mean(0)
            self.std = x.std(0).clamp(min=1e-5)
        self.centroids = fit_kmeans(self._standardise(x), self.n_clusters, iters=iters, seed=seed, backend=backend)
        return self

    def _standardise(self, x: Tensor) -> Tensor:
        if not self.config.normalize:
            return x
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    # -------------------------------------------------------------------------------------- tokens

    @torch.no_grad()
    def tokenize_features(self, features: Tensor) -> Tensor:
        """`[B, S, D]` (or `[S, D]`) features -> LongTensor `[B, S]` (or `[S]`) cluster ids."""
        from soundsmith.codecs.rvq import squared_distances

        if self.centroids is None:
            raise ValueError("this SemanticTokenizer is not fitted yet: call fit() or load one with from_pretrained()")
        if features.shape[-1] != self.config.dim:
            raise ValueError(f"features have {features.shape[-1]} dimensions, the tokenizer expects {self.config.dim}")
        x = self._standardise(features.float().reshape(-1, self.config.dim))  # [N, D]
        codes = squared_distances(x, self.centroids.to(x.device)).max(dim=-1).indices  # [N]
        return codes.view(features.shape[:-1])

    @torch.no_grad()
    def tokenize(self, wave: Any, sample_rate: int) -> Tensor:
        """`[B, C, T]` or `[C, T]` audio at `sample_rate` -> LongTensor `[B, S]` at `frame_rate` tokens/s."""
        if self.features is None:
            raise ValueError("this SemanticTokenizer has no feature model; load it with from_pretrained(folder) or "
                             "pass features=")
        return self.tokenize_features(self.features.frame_features(wave, sample_rate))

    @property
    def can_embed(self) -> bool:
        """Whether `audio_embedding` works: the features come with an audio head that pools them (our CLAP)."""
        return self.features is not None and hasattr(self.features, "pool")

    def audio_embedding(self, tokens: Tensor) -> Tensor:
        """Token ids `[B, N]` -> the embedding the feature model's audio head gives their centroids `[B, D]`:
        where a token sequence sits in the joint text-audio space before any audio is made."""
        if not self.can_embed:
            kind = None if self.features is None else self.features.kind
            raise ValueError(f"audio_embedding needs features with an audio head (our CLAP's), got {kind!r}")
        return self.features.pool(self.centroid_features(tokens.to(self.centroids.device)))

    def centroid_features(self, tokens: Tensor) -> Tensor:
        """Token ids `[...]` -> their centroids in feature space `[..., D]` (un-standardised)."""
        if self.centroids is None:
            raise ValueError("this SemanticTokenizer is not fitted yet")
        return F.embedding(tokens, self.centroids) * self.std + self.mean

    def fingerprint(self) -> str:
        """A short hash of centroids, mean and std rounded to fp16 (unchanged by an fp16 export)."""
        from soundsmith.gen.cond_tokens import _fingerprint

        if self.centroids is None:
            raise ValueError("this SemanticTokenizer is not fitted yet")
        return _fingerprint({"centroids": self.centroids, "mean": self.mean, "std": self.std})

    # ------------------------------------------------------------------------------------ folders

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype = torch.float16) -> Path:
        """Write config.json + centroids.safetensors (centroids, mean, std in `dtype`, default fp16)."""
        from soundsmith.core.files import write_json
        from soundsmith.core.weights import save_safetensors

        if self.centroids is None:
            raise ValueError("cannot save an unfitted SemanticTokenizer: call fit() first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"centroids": self.centroids.to(dtype), "mean": self.mean.to(dtype), "std": self.std.to(dtype)}
        save_safetensors(tensors, folder / WEIGHTS_NAME, metadata={"format": "pt", "model_type": MODEL_TYPE})
        write_json(folder / "config.json", self.config.to_dict())
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, features: FrameFeatures | None = None,
                        clap: str | os.PathLike | None = None, load_features_model: bool = True) -> SemanticTokenizer:
        """Load a folder written by `save_pretrained`.

        Args:
            features: the feature model to use (e.g. the pipeline's already loaded CLAP wrapped in
                `ClapFrameFeatures`); its fingerprint must match the one the centroids were fitted on.
            clap: CLAP folder for a "clap" spec saved without a path.
            load_features_model: False loads the centroids only (for `tokenize_features`).
        """
        from soundsmith.core.files import read_config
        from soundsmith.core.weights import read_state_dict

        folder = Path(folder)
        data = read_config(folder)
        if data.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{folder / 'config.json'}: model_type is {data.get('model_type')!r}, expected {MODEL_TYPE!r}")
        config = SemanticTokenizerConfig.from_dict(data, str(folder / "config.json"))
        if features is None and load_features_model:
            if not config.features:
                raise ValueError(f"{folder / 'config.json'}: no feature model recorded; pass features=")
            features = load_features(config.features, clap=clap, base=folder)
        tok = cls(features, config=config)
        state = read_state_dict(folder / WEIGHTS_NAME)
        expected = {"centroids": (config.n_clusters, config.dim), "mean": (config.dim,), "std": (config.dim,)}
        for key, shape in expected.items():
            if key not in state:
                raise ValueError(f"{folder / WEIGHTS_NAME}: missing tensor {key!r}")
            if tuple(state[key].shape) != shape:
                raise ValueError(f"{folder / WEIGHTS_NAME}: {key} has shape {list(state[key].shape)}, config.json "
                                 f"expects {list(shape)}")
        tok.centroids = state["centroids"].float()
        tok.mean, tok.std = state["mean"].float(), state["std"].float()
        return tok


def check_features(features: FrameFeatures, config: SemanticTokenizerConfig, where: str) -> None:
    """Refuse a feature model other than the one the centroids were fitted on (size, rate, weights)."""
    if features.dim != config.dim:
        raise ValueError(f"{where}: the feature model gives {features.dim}-d frames, the centroids are {config.dim}-d")
    if abs(features.frame_rate - config.frame_rate) > 1e-6:
        raise ValueError(f"{where}: the feature model runs at {features.frame_rate:g} Hz, the centroids were fitted "
                         f"at {config.frame_rate:g} Hz")
    if config.features_fingerprint and features.fingerprint() != config.features_fingerprint:
        raise ValueError(f"{where}: the feature model is not the one the centroids were fitted on (fingerprint "
                         f"{features.fingerprint()} != {config.features_fingerprint}); refit with "
                         "`soundsmith train kmeans`")


def _frames(features: Tensor | list[Tensor], dim: int) -> Tensor:
    parts = features if isinstance(features, (list, tuple)) else [features]
    if not parts:
        raise ValueError("fit needs at least one tensor of frames")
    out = []
    for p in parts:
        p = torch.as_tensor(p)
        if p.shape[-1] != dim:
            raise ValueError(f"frames have {p.shape[-1]} dimensions, the tokenizer expects {dim}")
        out.append(p.reshape(-1, dim).float().cpu())
    return torch.cat(out)
