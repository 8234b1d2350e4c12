"""Evaluation embedders: one clip -> per-window embeddings `[S, D]` (Fréchet distances), plus classifier
logits where the model has a head (KL divergence, Inception Score).

    emb = get_embedder("vggish", checkpoint="vggish-10086976.pth").embed(wave [C, T], sample_rate)  # [S, 128]

Each backend runs at its reference implementation's sample rate, window and pooling; `describe()` states
them and is recorded in every result. Every embedder mixes the clip to the model's channels (mono unless
noted), resamples it with `soundsmith.codecs.audio.resample` (soxr HQ) and zero-pads clips shorter than
one window.

| name | weights | rate | window / hop | per window | D |
|---|---|---|---|---|---|
| `clap` (default) | our CLAP folder (models/clap) | 16 kHz | 2.48 s / 1.24 s (62 / 31 frames at 25 Hz) | mean+max of the tower's frames -> projection, L2-normalised | 512 |
| `vggish` | torchvggish state dict | 16 kHz | 0.96 s / 0.96 s patches (torchvggish) | last FC before its ReLU, no PCA (fadtk, gudgud96) | 128 |
| `panns-cnn14-16k`, `panns-cnn14-32k` | PANNs `{"model": state_dict}` | 16 / 32 kHz | 10 s windows, evenly spread; the whole clip when shorter | CNN14's `embedding` (max+mean over time, fc1, ReLU) and 527 logits | 2048 |
| `laion-clap` | transformers ClapModel folder | 48 kHz | 10 s / 1 s, a chunk starts every second, zero-padded (fadtk) | projected, L2-normalised | 512 |
| `encodec` | EnCodec folder (ours or transformers) or original file | codec's | one latent frame (20 ms at 16 kHz / hop 320) | encoder output before the RVQ | D |

Checkpoints are read without unpickling unless `trust_pickle=True` (soundsmith.core.weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from soundsmith.codecs.audio import check_sample_rate, check_wave, resample, to_channels
from soundsmith.core.paths import shipped_models
from torch import Tensor, nn

log = logging.getLogger(__name__)

DEFAULT_CLAP = shipped_models("clap")


# --------------------------------------------------------------------------------------------- windows


def spread_starts(length: int, window: int, hop: int) -> list[int]:
    """Starts of `window`-long windows over `length` with a hop close to `hop`, evenly spread over
    [0, length - window]: the first window starts at 0, the last ends at the end, nothing is padded and
    no window nearly repeats another (as `gen.clap.window_starts`, which this equals for hop == window).
    `[0]` when the clip fits in one window. Needs hop <= window."""
    if length <= window:
        return [0]
    span = length - window
    count = max(math.ceil(span / window), round(span / hop)) + 1  # at least enough windows to cover
    return [int(round(s)) for s in np.linspace(0, span, count)]


# ------------------------------------------------------------------------------------------- the API


class Embedder(ABC):
    """One clip `[C, T]` at any rate -> float32 `[S, D]`, one row per window (S >= 1).

    Attributes: `name`, `sample_rate` (the model's), `dim` (D), `channels` (the model's input channels:
    1 = mono mix), `window_s` / `hop_s` (nominal), `pooling` (what one row is), `min_samples` (shorter
    clips are zero-padded to this, at `sample_rate`), `n_classes` (> 0 when `logits` exists),
    `checkpoint` (where the weights came from), `model` (the torch module that holds them).
    A subclass sets these and implements `_embed`.
    """

    name: str
    sample_rate: int
    dim: int
    channels: int = 1
    window_s: float
    hop_s: float
    pooling: str
    min_samples: int = 1
    n_classes: int = 0
    notes: str = ""
    model: nn.Module

    def __init__(self, *, checkpoint: str | os.PathLike | None, device: str | torch.device = "cpu"):
        from soundsmith.core.runtime import resolve_device

        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.device = resolve_device(device)
        self._weights_fingerprint: str | None = None

    # ------------------------------------------------------------------------------ subclasses

    @abstractmethod
    def _embed(self, x: Tensor) -> Tensor:
        """Prepared audio `[channels, T]` at `sample_rate` on the device -> `[S, D]`."""

    # ---------------------------------------------------------------------------------- public

    def prepare(self, wave: Any, sample_rate: int) -> Tensor:
        """`[C, T]` (numpy or torch) at `sample_rate` -> float32 `[channels, T']` at the model's rate on the
        model's device, zero-padded to `min_samples` (logged). One-line ValueError for a wrong shape, an
        empty clip, NaN/inf samples or a bad sample rate."""
        sample_rate = check_sample_rate(sample_rate)
        if not hasattr(wave, "ndim"):
            raise ValueError(f"audio must be a numpy array or torch tensor, got {type(wave).__name__}")
        if wave.ndim != 2:
            raise ValueError(f"{self.name}: audio must be one clip shaped [channels, samples], "
                             f"got shape {tuple(wave.shape)}")
        check_wave(wave)
        x = torch.from_numpy(np.asarray(wave, dtype=np.float32)) if isinstance(wave, np.ndarray) \
            else wave.detach().to("cpu", torch.float32)
        # mono mix first (resampling one channel is cheaper); a stereo model gets mono duplicated
        x = to_channels(x, 1) if self.channels == 1 or x.shape[0] > 2 else x
        x = resample(x, sample_rate, self.sample_rate)
        if self.channels == 2:
            x = to_channels(x, 2)
        if x.shape[-1] < self.min_samples:
            log.info("%s: padding a %.3f s clip with silence to %.3f s (one window)", self.name,
                     x.shape[-1] / self.sample_rate, self.min_samples / self.sample_rate)
            x = F.pad(x, (0, self.min_samples - x.shape[-1]))
        return x.contiguous().to(self.device)

    @torch.no_grad()
    def embed(self, wave: Any, sample_rate: int) -> np.ndarray:
        """One clip `[C, T]` at `sample_rate` -> float32 `[S, D]` (one row per window)."""
        return self._finite(self._embed(self.prepare(wave, sample_rate)), "embeddings")

    def embed_batch(self, waves: Sequence[Any], sample_rate: int) -> list[np.ndarray]:
        """Several clips (any lengths) at one `sample_rate` -> one `[S_i, D]` per clip."""
        return [self.embed(wave, sample_rate) for wave in waves]

    def logits(self, wave: Any, sample_rate: int) -> np.ndarray:
        """One clip -> classifier logits `[S, n_classes]` (before any sigmoid/softmax), one row per window."""
        return self.embed_and_logits(wave, sample_rate)[1]

    def embed_and_logits(self, wave: Any, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """`(embed(...), logits(...))` from one forward pass."""
        with_head = ", ".join(n for n in EMBEDDERS if n.startswith("panns"))
        raise ValueError(f"embedder {self.name!r} has no classifier head; logits come from: {with_head}")

    def weights_fingerprint(self) -> str:
        """Hash of the weights alone (fp16-rounded, `pipelines.base.weights_fingerprint`); computed once."""
        if self._weights_fingerprint is None:
            from soundsmith.core.weights import weights_fingerprint

            self._weights_fingerprint = weights_fingerprint(self.model)
        return self._weights_fingerprint

    def fingerprint(self) -> str:
        """Cache key: hash of the weights AND of the settings (rate, windows, pooling), so changing
        either invalidates cached embeddings."""
        settings = {k: v for k, v in self.describe(with_fingerprint=False).items() if k != "checkpoint"}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self, *, with_fingerprint: bool = True) -> dict[str, Any]:
        """What was computed, for every result: name, checkpoint, fingerprints, rate, windows, pooling, D."""
        out = {"name": self.name, "checkpoint": self.checkpoint, "weights_fingerprint": self.weights_fingerprint(),
               "sample_rate": self.sample_rate, "channels": self.channels, "window_s": round(self.window_s, 6),
               "hop_s": round(self.hop_s, 6), "min_clip_s": round(self.min_samples / self.sample_rate, 6),
               "pooling": self.pooling, "dim": self.dim, "n_classes": self.n_classes, "notes": self.notes}
        if with_fingerprint:
            out["fingerprint"] = self.fingerprint()
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, checkpoint={self.checkpoint!r}, dim={self.dim})"

    def _finite(self, out: Tensor, what: str) -> np.ndarray:
        arr = out.detach().to("cpu", torch.float32).numpy()
        if not np.isfinite(arr).all():
            raise ValueError(f"{self.name}: the model produced non-finite {what} (checkpoint {self.checkpoint}); "
                             "its weights are probably corrupt")
        return arr


# ------------------------------------------------------------------------------------ 1. our CLAP


class ClapEmbedder(Embedder):
    """Our CLAP audio tower (gen/clap.py `SoundsmithClap`), per window in its 512-d joint space.

    The tower runs once over the whole clip (25 Hz frame features, `audio_frame_features`); each window of
    `window_frames` frames is then pooled the way the model pools a clip (`pool_frames`: mean and max over
    time -> projection -> L2 norm). The default window, 62 frames = 2.48 s, is exactly what one 2.5 s
    training crop gives the pooling (train/configs/clap.json `crop_seconds`); hop 31 frames. Running the
    tower once instead of per window makes the 50%-overlapping windows cost nothing extra (~2x faster
    than embedding windows separately); frames near a window's edge then see up to ~0.6 s of context
    beyond it, which a separately embedded window would not. Clips shorter than one window are
    zero-padded to it, as training pads short clips.
    """

    name = "clap"

    def __init__(self, clap: Any, *, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 window_frames: int = 62, hop_frames: int = 31, chunk_s: float = 60.0):
        super().__init__(checkpoint=checkpoint, device=device)
        if not 1 <= hop_frames <= window_frames:
            raise ValueError(f"hop_frames must be in [1, window_frames={window_frames}], got {hop_frames}")
        self.model = clap.to(self.device).eval()
        cfg = clap.config
        self.sample_rate = int(cfg.sample_rate)
        self.dim = int(cfg.embed_dim)
        self.window_frames, self.hop_frames = window_frames, hop_frames
        self.samples_per_frame = cfg.min_samples  # mel hop x time reduction = 640 samples at 16 kHz
        self.window_s = window_frames / cfg.frame_rate
        self.hop_s = hop_frames / cfg.frame_rate
        self.min_samples = window_frames * self.samples_per_frame
        # long clips run through the tower in pieces of about `chunk_s` (whole frames) to bound memory
        self.chunk = max(1, round(chunk_s * self.sample_rate / self.samples_per_frame)) * self.samples_per_frame
        self.pooling = (f"mean+max of {cfg.frame_rate:g} Hz frame features over each window -> audio projection, "
                        "L2-normalised")
        self.notes = "windows evenly spread over the clip (first at 0, last at the end); tower run once per clip"

    def frames(self, x: Tensor) -> Tensor:
        """Prepared mono `[1, T]` -> frame features `[S_f, D']`, in pieces of ~`chunk_s` for long clips."""
        pieces = max(1, round(x.shape[-1] / self.chunk))
        step = math.ceil(x.shape[-1] / pieces / self.samples_per_frame) * self.samples_per_frame
        return torch.cat([self.model.frames(x[:, i:i + step])[0] for i in range(0, x.shape[-1], step)])

    def _embed(self, x: Tensor) -> Tensor:
        frames = self.frames(x)  # [S_f, D']
        starts = spread_starts(frames.shape[0], self.window_frames, self.hop_frames)
        windows = torch.stack([frames[s:s + self.window_frames] for s in starts])  # [S, W, D']
        return self.model.pool_frames(windows)  # [S, 512]


# --------------------------------------------------------------------------------------- 2. VGGish


class VGGish(nn.Module):
    """VGGish in torchvggish's state-dict layout (`features.*`, `embeddings.*`): log-mel patches
    `[B, 1, 96, 64]` -> `[B, 128]`, the last FC layer's output BEFORE its ReLU and without the PCA
    postprocessor (as fadtk and frechet-audio-distance use it).

    Written here because torchvggish offers no way to build the model without downloading weights
    (`vggish()` fetches them; `_vgg` is private) and always ends with the ReLU.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):  # VGG configuration "A"-like
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)  # [B, 1, 96, 64] -> [B, 512, 6, 4]
        self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(inplace=True),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 128))

    def forward(self, patches: Tensor) -> Tensor:
        x = self.features(patches)  # [B, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).flatten(1)  # [B, 6 * 4 * 512], channels last as TF VGGish flattens
        return self.embeddings(x)  # [B, 128]


@dataclass(frozen=True)
class VGGishFrontEnd:
    """VGGish's log-mel (vggish_params / mel_features): 25 ms periodic-Hann frames every 10 ms, |rfft 512|,
    64 HTK mel bands 125-7500 Hz (triangles in the mel domain), log(x + 0.01); 96-frame patches, no overlap."""

    sample_rate: int = 16_000
    window_length: int = 400
    hop_length: int = 160
    n_fft: int = 512
    n_mels: int = 64
    f_min: float = 125.0
    f_max: float = 7500.0
    log_offset: float = 0.01
    patch_frames: int = 96

    @property
    def min_samples(self) -> int:
        """Samples one full patch needs (0.975 s)."""
        return self.window_length + (self.patch_frames - 1) * self.hop_length

    def mel_matrix(self) -> np.ndarray:
        from transformers.audio_utils import mel_filter_bank

        # mel-domain triangles + HTK scale, no normalisation: equal to torchvggish's spectrogram_to_mel_matrix
        return mel_filter_bank(num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=self.n_mels,
                               min_frequency=self.f_min, max_frequency=self.f_max, sampling_rate=self.sample_rate,
                               norm=None, mel_scale="htk", triangularize_in_mel_space=True)

    def patches(self, mono: Tensor, mel: Tensor) -> Tensor:
        """mono `[T]` -> `[P, 1, 96, 64]` float32; frames and patches without padding, an incomplete tail
        dropped (torchvggish). Computed in float64 like the numpy reference. `mel`: `mel_matrix()` as a tensor."""
        window = torch.hann_window(self.window_length, periodic=True, dtype=torch.float64, device=mono.device)
        frames = mono.double().unfold(-1, self.window_length, self.hop_length) * window  # [N, 400]
        spec = torch.fft.rfft(frames, n=self.n_fft).abs()  # [N, 257]
        log_mel = torch.log(spec @ mel + self.log_offset)  # [N, 64]
        patches = log_mel.unfold(0, self.patch_frames, self.patch_frames)  # [P, 64, 96]
        return patches.transpose(1, 2)[:, None].float()  # [P, 1, 96, 64]


class VGGishEmbedder(Embedder):
    name = "vggish"

    def __init__(self, model: VGGish, *, checkpoint: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 64):
        super().__init__(checkpoint=checkpoint, device=device)
        self.front = VGGishFrontEnd()
        self.model = model.to(self.device).eval()
        self.sample_rate = self.front.sample_rate
        self.dim = 128
        self.window_s = self.hop_s = self.front.patch_frames * self.front.hop_length / self.sample_rate  # 0.96
        self.min_samples = self.front.min_samples
        self.batch_size = batch_size
        self.mel = torch.from_numpy(self.front.mel_matrix())  # [257, 64] float64; the front end runs on the CPU
        self.pooling = "one 96x64 log-mel patch per row; last FC before its ReLU, no PCA/quantisation"
        self.notes = ("torchvggish front end (no overlap, incomplete last patch dropped); no peak normalisation "
                      "(Google's TF pipeline has one)")

    def patches(self, wave: Any, sample_rate: int) -> Tensor:
        """The log-mel patches `[P, 1, 96, 64]` (CPU) the model sees (for checks against torchvggish)."""
        return self.front.patches(self.prepare(wave, sample_rate)[0].cpu(), self.mel)

    def _embed(self, x: Tensor) -> Tensor:
        # float64 like the numpy reference, on the CPU (mps has no float64); small next to the CNN
        patches = self.front.patches(x[0].cpu(), self.mel).to(self.device)  # [P, 1, 96, 64]
        return torch.cat([self.model(patches[i:i + self.batch_size])
                          for i in range(0, patches.shape[0], self.batch_size)])  # [P, 128]


# -------------------------------------------------------------------------------------- 3. PANNs


@dataclass(frozen=True)
class Cnn14Config:
    """PANNs CNN14 front end (audioset_tagging_cnn): the 32 kHz model `Cnn14_mAP=0.431` by default."""

    sample_rate: int = 32_000
    window_size: int = 1024
    hop_size: int = 320
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 14_000.0  # what the 32 kHz checkpoint was trained with (not 16000)
    classes_num: int = 527  # AudioSet


PANNS_VARIANTS = {
    "panns-cnn14-16k": Cnn14Config(sample_rate=16_000, window_size=512, hop_size=160, fmax=8_000.0),  # Cnn14_16k_mAP=0.438
    "panns-cnn14-32k": Cnn14Config(),  # Cnn14_mAP=0.431
}


class Cnn14Block(nn.Module):
    """Two 3x3 conv-BN-ReLU, then average pooling (PANNs' ConvBlock, same parameter names)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor, pool: tuple[int, int]) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool)


class LogMel(nn.Module):
    """Power STFT (Hann, centred, reflect-padded) -> `melW` -> 10 log10(max(x, 1e-10)): torchlibrosa's
    `Spectrogram` + `LogmelFilterBank(ref=1, amin=1e-10, top_db=None)`, with torch.stft for its Conv1d DFT.
    `melW` (`[n_fft/2 + 1, mel_bins]`, librosa's Slaney filters) is a buffer so a checkpoint's copy loads."""

    def __init__(self, cfg: Cnn14Config):
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        self.n_fft, self.hop = cfg.window_size, cfg.hop_size
        mel = mel_filter_bank(num_frequency_bins=cfg.window_size // 2 + 1, num_mel_filters=cfg.mel_bins,
                              min_frequency=cfg.fmin, max_frequency=cfg.fmax, sampling_rate=cfg.sample_rate,
                              norm="slaney", mel_scale="slaney")  # = librosa.filters.mel(...).T
        self.register_buffer("melW", torch.from_numpy(mel).float())
        self.register_buffer("window", torch.hann_window(cfg.window_size, periodic=True), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True).abs().pow(2)  # [B, n_fft/2 + 1, S]
        mel = spec.transpose(1, 2) @ self.melW  # [B, S, mel_bins]
        return 10.0 * torch.log10(mel.clamp(min=1e-10))[:, None]  # [B, 1, S, mel_bins]


class Cnn14(nn.Module):
    """PANNs CNN14 in audioset_tagging_cnn's state-dict layout (`bn0`, `conv_block1..6`, `fc1`,
    `fc_audioset`, `logmel_extractor.melW`): mono `[B, T]` -> (embedding `[B, 2048]`, logits `[B, 527]`).

    Our own module rather than `panns_inference.models.Cnn14`: importing panns_inference runs `wget` and
    writes ~/panns_data (import-time side effects), and its front end needs torchlibrosa + librosa. The
    checkpoint's `spectrogram_extractor.*` tensors (torchlibrosa's fixed DFT kernels) are checked for size
    and not needed. Inference only (no SpecAugment, mixup or dropout).
    """

    def __init__(self, cfg: Cnn14Config | None = None):
        super().__init__()
        self.config = cfg = cfg or Cnn14Config()
        self.logmel_extractor = LogMel(cfg)
        self.bn0 = nn.BatchNorm2d(cfg.mel_bins)
        widths = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            self.add_module(f"conv_block{i + 1}", Cnn14Block(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(2048, 2048)
        self.fc_audioset = nn.Linear(2048, cfg.classes_num)

    def forward(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        x = self.logmel_extractor(wave)  # [B, 1, S, F]
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # BatchNorm over mel bins
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, (2, 2) if i < 5 else (1, 1))  # [B, C, S/32, F/32] at the end
        x = x.mean(3)  # [B, 2048, S']: mean over frequency
        x = x.amax(2) + x.mean(2)  # [B, 2048]: max + mean over time
        embedding = F.relu(self.fc1(x))
        return embedding, self.fc_audioset(embedding)  # logits before the sigmoid

    def load_checkpoint(self, state: Mapping[str, Any], source: str | os.PathLike) -> None:
        """A PANNs state dict (the `model` entry of a published checkpoint), strictly."""
        from soundsmith.core.weights import load_strict

        state = dict(state)
        bins = self.config.window_size // 2 + 1
        for key in ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight"):
            kernel = state.pop(key, None)
            if kernel is not None and tuple(kernel.shape) != (bins, 1, self.config.window_size):
                raise ValueError(f"{source}: {key} has shape {list(kernel.shape)}, but a {self.config.sample_rate} Hz "
                                 f"CNN14 uses n_fft {self.config.window_size} ({[bins, 1, self.config.window_size]}); "
                                 "wrong variant (panns-cnn14-16k vs panns-cnn14-32k)?")
        load_strict(self, state, source, what=f"PANNs CNN14 ({self.config.sample_rate} Hz)")


class PannsEmbedder(Embedder):
    """CNN14's clip-level outputs per window: the 2048-d embedding and the 527 AudioSet logits.

    Windows: 10 s (AudioSet's clip length, what CNN14 was trained on), as few as cover the clip, evenly
    spread (`spread_starts` with hop = window; a 12 s clip gives windows at 0 and 2 s); a clip of up to
    10 s is one window of its own length (CNN14 pools over time, so no padding is needed), padded only
    below 1 s.
    """

    def __init__(self, model: Cnn14, *, name: str, checkpoint: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", window_s: float = 10.0, batch_size: int = 4):
        super().__init__(checkpoint=checkpoint, device=device)
        self.name = name
        self.model = model.to(self.device).eval()
        cfg = model.config
        self.sample_rate = cfg.sample_rate
        self.dim = 2048
        self.n_classes = cfg.classes_num
        self.window_s = self.hop_s = window_s
        self.window = round(window_s * self.sample_rate)
        self.min_samples = self.sample_rate  # 1 s
        self.batch_size = batch_size
        self.pooling = "CNN14 `embedding` of each window (mean over mel, max+mean over time, fc1, ReLU)"
        self.notes = (f"n_fft {cfg.window_size}, hop {cfg.hop_size}, {cfg.mel_bins} mels {cfg.fmin:g}-{cfg.fmax:g} Hz; "
                      "logits are fc_audioset outputs before the sigmoid; windows evenly spread, whole clip if <= window")

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mono = x[0]
        width = min(mono.shape[-1], self.window)
        windows = torch.stack([mono[s:s + width] for s in spread_starts(mono.shape[-1], width, width)])  # [S, W]
        outs = [self.model(windows[i:i + self.batch_size]) for i in range(0, windows.shape[0], self.batch_size)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])  # [S, 2048], [S, 527]

    def _embed(self, x: Tensor) -> Tensor:
        return self._forward(x)[0]

    @torch.no_grad()
    def embed_and_logits(self, wave: Any, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        emb, logits = self._forward(self.prepare(wave, sample_rate))
        return self._finite(emb, "embeddings"), self._finite(logits, "logits")


# -------------------------------------------------------------------------------- 4. LAION CLAP


class LaionClapEmbedder(Embedder):
    """A transformers ClapModel folder (gen/clap.py `TransformersClap`) windowed as fadtk's `clap-laion-*`:
    a 10 s chunk (the feature extractor's `max_length_s`) starts every `hop_s` = 1 s from 0 to the end of
    the clip, each zero-padded to 10 s, so a 5 s clip gives 5 rows; each row is the projected,
    L2-normalised audio embedding (exactly 10 s per chunk: no random crop, no repeat-pad). fadtk also
    rounds the audio to 16-bit first; we do not."""

    name = "laion-clap"

    def __init__(self, clap: Any, *, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 hop_s: float = 1.0, batch_size: int = 8):
        super().__init__(checkpoint=checkpoint, device=device)
        self.clap = clap.to(self.device).eval()
        self.model = clap.model
        self.sample_rate = int(clap.sample_rate)
        self.dim = int(clap.dim)
        self.window = int(clap.window)  # samples per chunk: nb_max_samples (480000 = 10 s)
        self.hop = round(hop_s * self.sample_rate)
        if not 1 <= self.hop <= self.window:
            raise ValueError(f"hop_s must be in (0, {self.window / self.sample_rate:g}] s, got {hop_s}")
        self.window_s, self.hop_s = self.window / self.sample_rate, self.hop / self.sample_rate
        self.batch_size = batch_size
        self.pooling = "projected audio embedding of each chunk, L2-normalised"
        self.notes = (f"fadtk chunking: a chunk starts every {self.hop_s:g} s, zero-padded to {self.window_s:g} s; "
                      f"feature extractor {type(clap.feature_extractor).__name__}; no int16 rounding")

    def _embed(self, x: Tensor) -> Tensor:
        mono = x[0]
        starts = list(range(0, mono.shape[-1], self.hop))
        out = []
        for i in range(0, len(starts), self.batch_size):  # build chunks batch by batch: 10 s each at 48 kHz
            chunks = [F.pad(mono[s:s + self.window], (0, max(0, s + self.window - mono.shape[-1])))
                      for s in starts[i:i + self.batch_size]]
            out.append(self.clap.embed_audio(torch.stack(chunks)[:, None], self.sample_rate,
                                             batch_size=self.batch_size))  # [b, D], one window each
        return torch.cat(out)


# ------------------------------------------------------------------------------------ 5. EnCodec


class EncodecEmbedder(Embedder):
    """EnCodec encoder latents before quantization, one row per frame, as fadtk's `encodec-emb`: the
    encoder runs on the whole clip at the codec's rate and channels; a model with `chunk_length_s` (the
    48 kHz layout) runs on non-overlapping chunks of that length, without its loudness normalisation
    (fadtk calls the encoder directly)."""

    name = "encodec"

    def __init__(self, encoder: nn.Module, *, sample_rate: int, channels: int, hop_length: int, dim: int,
                 chunk_length: int | None = None, checkpoint: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__(checkpoint=checkpoint, device=device)
        self.model = encoder.to(self.device).eval()
        self.sample_rate, self.channels, self.dim = int(sample_rate), int(channels), int(dim)
        self.hop_length = int(hop_length)
        self.chunk_length = chunk_length
        self.window_s = self.hop_s = self.hop_length / self.sample_rate
        self.min_samples = self.hop_length
        self.pooling = "encoder output per latent frame (before the RVQ)"
        self.notes = ("whole clip" if chunk_length is None
                      else f"non-overlapping {chunk_length / self.sample_rate:g} s chunks, no loudness normalisation")

    def _embed(self, x: Tensor) -> Tensor:
        step = self.chunk_length or x.shape[-1]
        pieces = [x[:, s:s + step] for s in range(0, x.shape[-1], step)]
        pieces = [p if p.shape[-1] >= self.min_samples else F.pad(p, (0, self.min_samples - p.shape[-1]))
                  for p in pieces]
        return torch.cat([self.model(p[None])[0].transpose(0, 1) for p in pieces])  # [S, D]


# ------------------------------------------------------------------------------------------ loading


def _need_checkpoint(name: str, what: str, checkpoint: str | os.PathLike | None) -> Path:
    if checkpoint is None:
        raise ValueError(f"embedder {name!r} needs checkpoint=<{what}>; no weights for it ship with soundsmith")
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{name} checkpoint not found: {path}")
    return path


def _clap(checkpoint: str | os.PathLike | None, device: str | torch.device, trust_pickle: bool) -> Embedder:
    """Our CLAP folder (default: the shipped models/clap)."""
    from soundsmith.gen.clap import SoundsmithClap, load_clap

    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CLAP
    if not path.is_dir():
        raise FileNotFoundError(f"clap checkpoint folder not found: {path}")
    clap = load_clap(path)
    if not isinstance(clap, SoundsmithClap):
        raise ValueError(f"{path} is a transformers ClapModel folder; use the 'laion-clap' embedder for it")
    return ClapEmbedder(clap, checkpoint=path, device=device)


def _vggish(checkpoint: str | os.PathLike | None, device: str | torch.device, trust_pickle: bool) -> Embedder:
    """torchvggish weights (vggish-10086976.pth, or the same keys as .safetensors)."""
    from soundsmith.core.weights import load_strict, read_state_dict

    path = _need_checkpoint("vggish", "torchvggish state dict, e.g. vggish-10086976.pth", checkpoint)
    model = VGGish()
    load_strict(model, read_state_dict(path, trust_pickle=trust_pickle), path, what="VGGish (torchvggish layout)")
    return VGGishEmbedder(model, checkpoint=path, device=device)


def _panns(name: str) -> Callable[..., Embedder]:
    def factory(checkpoint: str | os.PathLike | None, device: str | torch.device, trust_pickle: bool) -> Embedder:
        from soundsmith.core.weights import read_state_dict

        cfg = PANNS_VARIANTS[name]
        published = "Cnn14_16k_mAP=0.438.pth" if cfg.sample_rate == 16_000 else "Cnn14_mAP=0.431.pth"
        path = _need_checkpoint(name, f"PANNs checkpoint, e.g. {published}", checkpoint)
        raw = read_state_dict(path, trust_pickle=trust_pickle)
        state = raw.get("model", raw)
        if not isinstance(state, Mapping) or "fc1.weight" not in state:
            raise ValueError(f"{path}: not a PANNs CNN14 checkpoint (expected a dict with key 'model' holding "
                             f"its state dict; top-level keys: {', '.join(sorted(map(str, raw))[:6])})")
        if "fc_audioset.weight" in state:  # a fine-tuned head may have another number of classes
            cfg = replace(cfg, classes_num=int(state["fc_audioset.weight"].shape[0]))
        model = Cnn14(cfg)
        model.load_checkpoint(state, path)
        return PannsEmbedder(model, name=name, checkpoint=path, device=device)

    factory.__doc__ = f"PANNs CNN14 at {PANNS_VARIANTS[name].sample_rate} Hz."
    return factory


def _laion_clap(checkpoint: str | os.PathLike | None, device: str | torch.device, trust_pickle: bool) -> Embedder:
    """A transformers ClapModel folder (laion/clap-htsat-unfused layout)."""
    from soundsmith.gen.clap import TransformersClap

    path = _need_checkpoint("laion-clap", "transformers ClapModel folder, e.g. laion/clap-htsat-unfused", checkpoint)
    if not path.is_dir():
        raise ValueError(f"laion-clap needs a transformers ClapModel folder, got the file {path} (convert a "
                         "laion_clap .pt first: soundsmith convert laion-clap SRC OUT)")
    return LaionClapEmbedder(TransformersClap.from_pretrained(path), checkpoint=path, device=device)


def _encodec(checkpoint: str | os.PathLike | None, device: str | torch.device, trust_pickle: bool) -> Embedder:
    """An EnCodec folder (ours or transformers') or an original encodec/audiocraft checkpoint file."""
    from soundsmith.codecs.neural_codec import NeuralCodec
    from soundsmith.core.files import read_config

    path = _need_checkpoint("encodec", "EnCodec model folder or original .th file", checkpoint)
    if path.is_file():
        from soundsmith.pipelines.convert_encodec import load_encodec

        codec = load_encodec(path, trust_pickle=trust_pickle)
    elif read_config(path).get("_class_name") == "NeuralCodec":
        codec = NeuralCodec.from_pretrained(path)
    else:  # transformers EncodecModel folders, including the 48 kHz layout NeuralCodec refuses
        from transformers import EncodecModel

        raw = read_config(path)
        if raw.get("model_type") != "encodec":
            raise ValueError(f"{path / 'config.json'}: neither a soundsmith NeuralCodec nor a transformers EnCodec "
                             f"folder (model_type={raw.get('model_type')!r})")
        model = EncodecModel.from_pretrained(str(path), local_files_only=True)
        cfg = model.config
        return EncodecEmbedder(model.encoder, sample_rate=cfg.sampling_rate, channels=cfg.audio_channels,
                               hop_length=math.prod(cfg.upsampling_ratios), dim=cfg.hidden_size,
                               chunk_length=cfg.chunk_length, checkpoint=path, device=device)
    cfg = codec.config
    return EncodecEmbedder(codec.encoder, sample_rate=cfg.sample_rate, channels=cfg.audio_channels,
                           hop_length=cfg.hop_length, dim=cfg.hidden_size, checkpoint=path, device=device)


# name -> factory(checkpoint, device, trust_pickle); heavy imports stay inside the factories
EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "clap": _clap,
    "vggish": _vggish,
    "panns-cnn14-16k": _panns("panns-cnn14-16k"),
    "panns-cnn14-32k": _panns("panns-cnn14-32k"),
    "laion-clap": _laion_clap,
    "encodec": _encodec,
}
DEFAULT_EMBEDDER = "clap"


def get_embedder(name: str = DEFAULT_EMBEDDER, checkpoint: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", *, trust_pickle: bool = False) -> Embedder:
    """Build an evaluation embedder by name.

    Args:
        name: one of `EMBEDDERS` (default "clap", our shipped CLAP).
        checkpoint: the weights (file or folder, see the module docstring); only "clap" has a default
            (models/clap).
        device: "cpu" (default), "cuda[:N]", "mps" or "auto".
        trust_pickle: allow fully unpickling a .pth/.pt checkpoint you trust (default False).
    """
    from soundsmith.core.runtime import resolve_device

    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder {name!r}; known: {', '.join(EMBEDDERS)}")
    return EMBEDDERS[name](checkpoint, resolve_device(device), trust_pickle)  # a bad device fails before loading
