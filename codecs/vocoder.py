"""HiFi-GAN vocoder: transformers `SpeechT5HifiGan` generator, log-mel `[B, F, S]` -> wave `[B, T]`.

Registry name "hifigan" (codecs/vocoders.py): a HiFi-GAN trained here, or a published AudioLDM /
MusicLDM `vocoder/` folder. The pretrained universal HiFi-GAN runs on this class too
(codecs/hifigan_universal.py).

The weights are a plain `SpeechT5HifiGan` state dict (`conv_pre`, `upsampler.N`, `resblocks.N.convs1/2.M`,
`conv_post`, `mean`, `scale`), so a published transformers `vocoder/` folder (AudioLDM, MusicLDM) loads
as it is. Each transposed convolution upsamples by its rate with padding (kernel - rate) / 2, so S
frames give S * prod(upsample_rates) samples (prod = the mel hop, 160) when every kernel - rate is
even; otherwise the generator makes a few more and `forward` crops them at the end.

`forward` runs the generator's own modules in the reference order (HiFi-GAN V1 generator, as in
transformers) but computes each stage's shared input activation once, uses in-place activations
and sums where autograd allows, and takes the mel channel-first (no transposed copy).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from soundsmith.core.files import read_config
from soundsmith.core.weights import (
    config_from_dict,
    find_weights,
    load_strict,
    read_state_dict,
    save_safetensors,
)
from torch import Tensor, nn

from .mel import MelConfig
from .mel_vocoder import MelVocoder

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors")
TRANSFORMERS_TYPES = ("speecht5_hifigan", "hifigan")  # model_type in transformers >= 5 / < 5


@dataclass(frozen=True)
class VocoderConfig:
    model_in_dim: int = 64  # F, mel bins
    sampling_rate: int = 16_000
    upsample_rates: tuple[int, ...] = (5, 4, 2, 2, 2)  # product = mel hop (160)
    # kernel - rate even gives exactly S * hop samples; AudioLDM's (16, 16, 8, 4, 4) gives 32 more,
    # which `forward` crops at the end, as diffusers' AudioLDM pipeline does
    upsample_kernel_sizes: tuple[int, ...] = (11, 8, 4, 4, 4)
    upsample_initial_channel: int = 128  # AudioLDM: 1024; halves after each upsampling
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_relu_slope: float = 0.1
    normalize_before: bool = False  # (mel - mean) / scale first; SpeechT5 True, AudioLDM False
    mel: MelConfig | None = None  # the front-end it was trained on; None = MelConfig from the fields above

    def __post_init__(self) -> None:
        tup = object.__setattr__
        tup(self, "upsample_rates", tuple(int(r) for r in self.upsample_rates))
        tup(self, "upsample_kernel_sizes", tuple(int(k) for k in self.upsample_kernel_sizes))
        tup(self, "resblock_kernel_sizes", tuple(int(k) for k in self.resblock_kernel_sizes))
        tup(self, "resblock_dilation_sizes", tuple(tuple(int(d) for d in ds) for ds in self.resblock_dilation_sizes))
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes) or not self.upsample_rates:
            raise ValueError(f"VocoderConfig.upsample_rates {self.upsample_rates} and upsample_kernel_sizes "
                             f"{self.upsample_kernel_sizes} must be non-empty and of equal length")
        for r, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if r < 1 or k < r:
                raise ValueError(f"VocoderConfig.upsample_kernel_sizes: kernel {k} for rate {r} must be >= rate >= 1")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes) or not self.resblock_kernel_sizes:
            raise ValueError("VocoderConfig.resblock_kernel_sizes and resblock_dilation_sizes must be non-empty and "
                             "of equal length")
        if any(not ds or min(ds) < 1 for ds in self.resblock_dilation_sizes):
            raise ValueError(f"VocoderConfig.resblock_dilation_sizes must be non-empty lists of dilations >= 1, "
                             f"got {self.resblock_dilation_sizes}")
        if any(k % 2 == 0 for k in self.resblock_kernel_sizes):
            raise ValueError(f"VocoderConfig.resblock_kernel_sizes must be odd, got {self.resblock_kernel_sizes}")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ValueError(f"VocoderConfig.upsample_initial_channel={self.upsample_initial_channel} must be "
                             f"divisible by 2 ** {len(self.upsample_rates)} (it halves per upsampling)")
        if self.model_in_dim < 1 or self.sampling_rate < 1:
            raise ValueError("VocoderConfig.model_in_dim and sampling_rate must be >= 1")
        mel = self.mel
        if mel is None:
            mel = MelConfig(sample_rate=self.sampling_rate, n_mels=self.model_in_dim, hop_length=self.hop_length,
                            f_max=min(8000.0, self.sampling_rate / 2))
        elif isinstance(mel, dict):
            mel = config_from_dict(MelConfig, mel, "VocoderConfig.mel")
        tup(self, "mel", mel)
        if (mel.sample_rate, mel.n_mels, mel.hop_length) != (self.sampling_rate, self.model_in_dim, self.hop_length):
            raise ValueError(f"VocoderConfig.mel (sample_rate={mel.sample_rate}, n_mels={mel.n_mels}, hop_length="
                             f"{mel.hop_length}) must match sampling_rate={self.sampling_rate}, model_in_dim="
                             f"{self.model_in_dim} and prod(upsample_rates)={self.hop_length}")

    @property
    def hop_length(self) -> int:
        """Samples per mel frame = product of the upsampling rates."""
        return math.prod(self.upsample_rates)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VocoderConfig:
        return config_from_dict(cls, data, "VocoderConfig")

    def to_transformers(self) -> Any:
        """The equivalent `SpeechT5HifiGanConfig`."""
        from transformers import SpeechT5HifiGanConfig

        return SpeechT5HifiGanConfig(
            model_in_dim=self.model_in_dim, sampling_rate=self.sampling_rate,
            upsample_initial_channel=self.upsample_initial_channel, upsample_rates=list(self.upsample_rates),
            upsample_kernel_sizes=list(self.upsample_kernel_sizes),
            resblock_kernel_sizes=list(self.resblock_kernel_sizes),
            resblock_dilation_sizes=[list(d) for d in self.resblock_dilation_sizes],
            leaky_relu_slope=self.leaky_relu_slope, normalize_before=self.normalize_before,
        )



def config_from_transformers(config: dict[str, Any], source: str | os.PathLike = "config.json") -> VocoderConfig:
    """A transformers `SpeechT5HifiGan` config.json (AudioLDM/MusicLDM `vocoder/`) -> VocoderConfig."""
    defaults = VocoderConfig.__dataclass_fields__
    keys = [f for f in defaults if f != "mel"]
    values = {k: config[k] for k in keys if k in config}
    missing = [k for k in ("model_in_dim", "upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel")
               if k not in values]
    if missing:
        raise ValueError(f"{source}: missing field {missing[0]!r} for a SpeechT5HifiGan config")
    try:
        return VocoderConfig(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from None


class Vocoder(MelVocoder):
    """log-mel `[B, F, S]` -> wave `[B, S * hop]` in [-1, 1] (HiFi-GAN generator)."""

    name = "hifigan"

    def __init__(self, config: VocoderConfig | None = None):
        super().__init__()
        from transformers import SpeechT5HifiGan

        self.config = config or VocoderConfig()
        self.hifigan = SpeechT5HifiGan(self.config.to_transformers())

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def mel(self) -> MelConfig:
        return self.config.mel

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "path": "vocoder"}

    def forward(self, mel: Tensor) -> Tensor:
        """`[B, F, S]` -> `[B, S * hop]`: `SpeechT5HifiGan.forward(mel.transpose(1, 2))[:, :S * hop]`."""
        g, cfg = self.hifigan, self.config
        self.check_mel(mel)
        if cfg.normalize_before:
            mel = (mel - g.mean[:, None]) / g.scale[:, None]
        slope = cfg.leaky_relu_slope
        n_kernels = len(cfg.resblock_kernel_sizes)
        x = g.conv_pre(mel)  # [B, C0, S]
        for i, up in enumerate(g.upsampler):
            x = up(F.leaky_relu(x, slope))  # [B, C0 / 2^(i+1), S * prod(rates[:i+1])]
            acc = None
            x_act = F.leaky_relu(x, slope)  # every resblock starts with this; transformers computes it per block
            for block in g.resblocks[i * n_kernels:(i + 1) * n_kernels]:
                y = _resblock(block, x, x_act, slope)
                acc = y if acc is None else acc.add_(y)  # y is a fresh tensor; in-place sum is autograd-safe
            x = acc.mul_(1.0 / n_kernels)
        x = g.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as in HiFi-GAN; [B, 1, T']
        return torch.tanh(x[:, 0, : mel.shape[-1] * self.hop_length])  # [B, T = S * hop]

    # ------------------------------------------------------------------------------ weight norm

    def apply_weight_norm(self) -> None:
        """Weight-normalise every convolution (HiFi-GAN trains this way); undo with `remove_weight_norm`."""
        from torch.nn.utils.parametrizations import weight_norm

        for module in self._convs():
            if not _has_weight_norm(module):
                weight_norm(module)

    def remove_weight_norm(self) -> None:
        """Fold weight norm into plain weights (for inference; a no-op where none is applied)."""
        from torch.nn.utils import parametrize

        for module in self._convs():
            if _has_weight_norm(module):
                # torch deletes the `weight` property from the module's generated class, and a deepcopy
                # (an EMA copy) shares that class, which would break the copy; give this module its own.
                cls = module.__class__
                own = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
                module.__class__ = type(cls.__name__, cls.__bases__, own)
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

    def _convs(self) -> list[nn.Module]:
        return [m for m in self.hifigan.modules() if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)]

    def plain_state_dict(self) -> dict[str, Tensor]:
        """The `SpeechT5HifiGan` state dict with any weight norm folded (what `save_pretrained` writes)."""
        # Computed module by module: a deepcopy of a parametrized module breaks the original's `weight`.
        state = {k: v for k, v in self.hifigan.state_dict().items() if ".parametrizations.weight." not in k}
        for name, module in self.hifigan.named_modules():
            if _has_weight_norm(module):
                state[f"{name}.weight"] = module.weight.detach()
        return state

    # ---------------------------------------------------------------------------------------- I/O

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        """Write `config.json` + `model.safetensors` (SpeechT5HifiGan key names, weight norm folded)."""
        from soundsmith.core.files import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self.plain_state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        save_safetensors(state, folder / WEIGHTS_NAME)
        write_json(folder / CONFIG_NAME, {"_class_name": "Vocoder", **self.config.to_dict()})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, mel: MelConfig | None = None) -> Vocoder:
        """Load our folder or a transformers `SpeechT5HifiGan` folder; CPU, float32, eval mode.

        `mel`: the full front-end of the codec that feeds it, where the folder records only rate, bins and
        hop (a transformers folder); it must agree with those three.
        """
        folder = Path(folder)
        raw = read_config(folder)
        kind = raw.get("_class_name")
        if kind == "Vocoder":
            config = VocoderConfig.from_dict(raw)
            weights = find_weights(folder, (WEIGHTS_NAME,))
        elif kind is None and (raw.get("model_type") in TRANSFORMERS_TYPES
                               or "SpeechT5HifiGan" in (raw.get("architectures") or ())):
            config = config_from_transformers(raw, folder / CONFIG_NAME)
            weights = find_weights(folder, TRANSFORMERS_WEIGHTS)
        else:
            raise ValueError(f"{folder / CONFIG_NAME}: neither a soundsmith 'Vocoder' nor a transformers "
                             f"SpeechT5HifiGan config (_class_name={kind!r}, model_type={raw.get('model_type')!r})")
        if mel is not None:
            try:
                config = dataclasses.replace(config, mel=mel)
            except ValueError as err:
                raise ValueError(f"{folder}: this vocoder does not fit the codec's mel ({err})") from None
        model = cls(config)
        load_strict(model.hifigan, read_state_dict(weights), weights, what="Vocoder")
        return model.float().eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _has_weight_norm(module: nn.Module) -> bool:
    from torch.nn.utils import parametrize

    return parametrize.is_parametrized(module, "weight")


def _resblock(block: nn.Module, x: Tensor, x_act: Tensor, slope: float) -> Tensor:
    """transformers' `HifiGanResidualBlock.forward` (HiFi-GAN ResBlock1), given x_act = leaky_relu(x), with
    in-place ops where autograd allows."""
    for m, (conv1, conv2) in enumerate(zip(block.convs1, block.convs2)):
        y = conv1(x_act if m == 0 else F.leaky_relu(x, slope))
        y = conv2(F.leaky_relu(y, slope, inplace=True))  # a conv's backward does not need its output
        x = y.add_(x)  # y is fresh; the caller's x stays intact for the next block
    return x
