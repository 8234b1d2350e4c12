"""The token backend's neural codec: EnCodec architecture with a trainable residual VQ.

    wave [B, C, T] --SEANet encoder--> z [B, D, S] --RVQ--> codes [B, K, S]      (S = ceil(T / hop))
    codes [B, K', S] --sum of codewords--> [B, D, S] --SEANet decoder--> wave [B, C, S * hop]

Encoder and decoder are transformers' `EncodecEncoder` / `EncodecDecoder` (SEANet with an LSTM; the
LSTM needs >= 1 layer there); the quantizer is our `ResidualVQ` (transformers' is inference-only:
codebooks are buffers, argmax quantization, no straight-through gradient). The module names match
`EncodecModel`, so `NeuralCodec.state_dict()` is an `EncodecModel` state dict key for key:
- a transformers EnCodec folder (config.json `model_type: "encodec"`, e.g. facebook/encodec_24khz,
  facebook/encodec_32khz) loads through `NeuralCodec.from_pretrained` as it is;
- `soundsmith.pipelines.convert_encodec.export_transformers` writes ours as such a folder.

Default: 16 kHz mono, hop 320 (50 frames/s), 8 levels x 1024 codes = 4 kbps. Levels are
selectable at encode time (`n_levels`): quantizer dropout in training makes every prefix of levels
decode to audio, and the token backend splits them into coarse (first 3) and fine (last 5).

Inference runs the transformers modules in their own order but computes the convolution padding
with Python integers (transformers does it with 0-d tensors per layer) and computes each weight-norm
weight once per call (`parametrize.cached`); the result equals `EncodecModel`'s (tests).
"""

from __future__ import annotations

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

from .rvq import ResidualVQ

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
PAD_MODES = ("reflect", "constant", "replicate", "circular")
NORM_TYPES = ("weight_norm", "time_group_norm")


@dataclass(frozen=True)
class NeuralCodecConfig:
    """Architecture (transformers `EncodecConfig` names) plus the RVQ's training settings."""

    sample_rate: int = 16_000
    audio_channels: int = 1
    # Decoder order; the encoder strides by the reverse, (4, 4, 4, 5); hop = 320. EnCodec's (8, 5, 4, 2) runs
    # a second wide stage at 8 kHz; this order leaves 16 kHz to the outermost stage only (1.4x faster).
    upsampling_ratios: tuple[int, ...] = (5, 4, 4, 4)
    # Width of the first conv; doubles per downsampling (EnCodec 24 kHz: 32). 8 rather than 16: ~2.7x faster
    # to train and to run, and at an equal CPU budget it reconstructed better (multi-scale mel L1 1.76 vs
    # 2.18 after ~6 min each on the corpus); it also runs at >= 50x real time on this CPU.
    num_filters: int = 8
    # D, latent and codeword size (EnCodec: 128, with up to 32 levels). transformers has no projection
    # around the codebooks, so D is also the VQ dimension: 10 bits per level spread over 128 dimensions
    # cut the latent error by ~10% per level (measured: 11% -> 6% over 8 levels), over 32 by ~25%
    # (17% -> 2.6%), as rate-distortion predicts; DAC projects to 8 dimensions for the same reason.
    hidden_size: int = 32
    num_residual_layers: int = 1
    num_lstm_layers: int = 1  # transformers' EncodecLSTM needs >= 1; it costs 8 * (16 * nf)^2 weights per side
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    compress: int = 2
    use_causal_conv: bool = False  # non-causal: we never stream, and centred padding sounds better
    use_conv_shortcut: bool = True
    pad_mode: str = "reflect"
    norm_type: str = "weight_norm"
    trim_right_ratio: float = 1.0
    n_levels: int = 8  # K, RVQ levels
    codebook_size: int = 1024  # codes per level (a power of 2, transformers requires it)
    # Bandwidths (kbps) transformers' `EncodecModel.encode(bandwidth=...)` offers for exported models;
    # None: one per number of levels 1..K (0.5, 1.0, ... 4.0 kbps by default). Its last entry fixes K there.
    target_bandwidths: tuple[float, ...] | None = None
    # RVQ training (see soundsmith.codecs.rvq): EMA codebooks, k-means init, dead codes, quantizer dropout
    ema_decay: float = 0.95  # EnCodec: 0.99 at ~12x our vectors per step; 0.95 tracks the drifting latents of a short run
    kmeans_init: bool = True
    kmeans_iters: int = 50  # EnCodec
    dead_code_threshold: float = 0.1  # refresh codes used < 0.1 x the average code
    quantizer_dropout: float = 0.5  # probability of a random 1..K levels per training batch (DAC: 0.5)

    def __post_init__(self) -> None:
        tup = object.__setattr__
        tup(self, "upsampling_ratios", tuple(int(r) for r in self.upsampling_ratios))
        if self.target_bandwidths is not None:
            tup(self, "target_bandwidths", tuple(float(b) for b in self.target_bandwidths))
        if self.audio_channels not in (1, 2):
            raise ValueError(f"NeuralCodecConfig.audio_channels must be 1 or 2, got {self.audio_channels}")
        if not self.upsampling_ratios or min(self.upsampling_ratios) < 1:
            raise ValueError(f"NeuralCodecConfig.upsampling_ratios must be integers >= 1, got {self.upsampling_ratios}")
        for name in ("sample_rate", "num_filters", "hidden_size", "num_residual_layers", "num_lstm_layers",
                     "kernel_size", "last_kernel_size", "residual_kernel_size", "dilation_growth_rate", "compress",
                     "n_levels"):
            if getattr(self, name) < 1:
                raise ValueError(f"NeuralCodecConfig.{name} must be >= 1, got {getattr(self, name)}"
                                 + (" (transformers' EncodecLSTM needs at least one layer)"
                                    if name == "num_lstm_layers" else ""))
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"NeuralCodecConfig.codebook_size must be a power of 2 >= 2, got {self.codebook_size}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"NeuralCodecConfig.pad_mode must be one of {', '.join(PAD_MODES)}, got {self.pad_mode!r}")
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"NeuralCodecConfig.norm_type must be one of {', '.join(NORM_TYPES)}, "
                             f"got {self.norm_type!r}")
        if not self.use_causal_conv and self.trim_right_ratio != 1.0:
            raise ValueError("NeuralCodecConfig.trim_right_ratio != 1 needs use_causal_conv=true")
        if not 0.0 <= self.quantizer_dropout <= 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("NeuralCodecConfig needs quantizer_dropout in [0, 1] and ema_decay in [0, 1)")
        if self.target_bandwidths is not None:
            k = self._levels_for_bandwidth(max(self.target_bandwidths))
            if k != self.n_levels:
                raise ValueError(f"NeuralCodecConfig.target_bandwidths: the largest, {max(self.target_bandwidths)} "
                                 f"kbps, means {k} levels in transformers, but n_levels={self.n_levels}")

    @property
    def hop_length(self) -> int:
        """Samples per code frame: the product of the ratios (320)."""
        return math.prod(self.upsampling_ratios)

    @property
    def frame_rate(self) -> float:
        """Code frames per second (50.0)."""
        return self.sample_rate / self.hop_length

    @property
    def bits_per_level(self) -> int:
        return int(math.log2(self.codebook_size))

    def _levels_for_bandwidth(self, kbps: float) -> int:
        # transformers' EncodecConfig.num_quantizers (frame rate rounded up, as there)
        return int(1000 * kbps // (math.ceil(self.sample_rate / self.hop_length) * self.bits_per_level))

    def bandwidths(self) -> tuple[float, ...]:
        """kbps per selectable number of levels, as transformers' `target_bandwidths`."""
        if self.target_bandwidths is not None:
            return self.target_bandwidths
        per_level = math.ceil(self.sample_rate / self.hop_length) * self.bits_per_level / 1000
        return tuple(round(k * per_level, 6) for k in range(1, self.n_levels + 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NeuralCodecConfig:
        """Build from a dict; an unknown key is an error naming it (keys starting with `_` are metadata)."""
        return config_from_dict(cls, data, "NeuralCodecConfig")

    def to_transformers(self) -> Any:
        """The equivalent transformers `EncodecConfig`."""
        from transformers import EncodecConfig

        return EncodecConfig(
            target_bandwidths=list(self.bandwidths()), sampling_rate=self.sample_rate,
            audio_channels=self.audio_channels, normalize=False, chunk_length_s=None, overlap=None,
            hidden_size=self.hidden_size, num_filters=self.num_filters, num_residual_layers=self.num_residual_layers,
            upsampling_ratios=list(self.upsampling_ratios), norm_type=self.norm_type, kernel_size=self.kernel_size,
            last_kernel_size=self.last_kernel_size, residual_kernel_size=self.residual_kernel_size,
            dilation_growth_rate=self.dilation_growth_rate, use_causal_conv=self.use_causal_conv,
            pad_mode=self.pad_mode, compress=self.compress, num_lstm_layers=self.num_lstm_layers,
            trim_right_ratio=self.trim_right_ratio, codebook_size=self.codebook_size, codebook_dim=self.hidden_size,
            use_conv_shortcut=self.use_conv_shortcut,
        )

    @classmethod
    def from_transformers(cls, config: dict[str, Any], source: str | os.PathLike = CONFIG_NAME) -> NeuralCodecConfig:
        """A transformers EnCodec config.json (dict) -> NeuralCodecConfig (the RVQ training fields keep defaults).

        Raises ValueError naming `source` for layouts this API cannot serve: per-clip loudness
        normalisation or chunked encoding (the 48 kHz model), whose codes need side information.
        """
        from transformers import EncodecConfig

        try:
            tc = EncodecConfig.from_dict(dict(config))
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"{source}: not a valid EncodecConfig ({' '.join(str(err).split())[:200]})") from None
        if tc.normalize or tc.chunk_length_s is not None:
            raise ValueError(f"{source}: normalize={tc.normalize}, chunk_length_s={tc.chunk_length_s} (the 48 kHz "
                             "EnCodec layout) is not supported: its codes need per-chunk scales beside them")
        if tc.codebook_dim != tc.hidden_size:
            raise ValueError(f"{source}: codebook_dim={tc.codebook_dim} differs from hidden_size={tc.hidden_size}")
        try:
            return cls(
                sample_rate=int(tc.sampling_rate), audio_channels=int(tc.audio_channels),
                upsampling_ratios=tuple(tc.upsampling_ratios), num_filters=tc.num_filters, hidden_size=tc.hidden_size,
                num_residual_layers=tc.num_residual_layers, num_lstm_layers=tc.num_lstm_layers,
                kernel_size=tc.kernel_size, last_kernel_size=tc.last_kernel_size,
                residual_kernel_size=tc.residual_kernel_size, dilation_growth_rate=tc.dilation_growth_rate,
                compress=tc.compress, use_causal_conv=bool(tc.use_causal_conv),
                use_conv_shortcut=bool(tc.use_conv_shortcut), pad_mode=tc.pad_mode, norm_type=tc.norm_type,
                trim_right_ratio=float(tc.trim_right_ratio), n_levels=tc.num_quantizers,
                codebook_size=tc.codebook_size, target_bandwidths=tuple(tc.target_bandwidths),
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None


@dataclass
class CodecOutput:
    """What `NeuralCodec.forward` (training) returns."""

    audio: Tensor  # [B, C, T] reconstruction, cropped to the input length
    latent: Tensor  # [B, D, S] encoder output before quantization
    codes: Tensor | None  # [B, n_levels, S]; None when run without quantization
    commit_loss: Tensor  # scalar, unweighted (see ResidualVQ)
    n_levels: int  # levels used this batch (quantizer dropout)
    perplexity: Tensor  # [n_levels] code usage per level


class NeuralCodec(nn.Module):
    """wave `[B, C, T]` <-> codes `[B, K, S]`, S = ceil(T / hop); EnCodec architecture, trainable RVQ.

    Args:
        config: the architecture and RVQ settings (default: 16 kHz, hop 320, 8 x 1024).
        n_levels: levels `encode` uses when not told (default: all K of the config).
    """

    def __init__(self, config: NeuralCodecConfig | None = None, *, n_levels: int | None = None):
        super().__init__()
        from transformers.models.encodec.modeling_encodec import EncodecDecoder, EncodecEncoder

        self.config = config = config or NeuralCodecConfig()
        tc = config.to_transformers()
        self.encoder = EncodecEncoder(tc)
        self.decoder = EncodecDecoder(tc)
        self.quantizer = ResidualVQ(dim=config.hidden_size, n_q=config.n_levels, bins=config.codebook_size,
                                    quantizer_dropout=config.quantizer_dropout, decay=config.ema_decay,
                                    kmeans_init=config.kmeans_init, kmeans_iters=config.kmeans_iters,
                                    dead_code_threshold=config.dead_code_threshold)
        self._default_levels = self._check_levels(config.n_levels if n_levels is None else n_levels)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He-normal convolutions (std sqrt(2 / fan_in), fan_in of a transposed conv = C_in * k / stride) with
        zero biases; weight-norm gains set to |v| so the weights equal v.

        torch's default (std 1 / sqrt(3 fan_in)) shrinks the signal at every layer; after ~20 layers the
        latent is the biases' constant plus a 1000x smaller signal, on which k-means codebooks go stale
        at once and the autoencoder barely learns in a CPU-sized run (measured: per-dimension latent
        spread 0.0015 vs 1.1 with this init, on the same clips).
        """
        from transformers.models.encodec.modeling_encodec import EncodecResnetBlock

        # residual branches start small, so each block starts near the identity and the signal does not
        # double in variance per block; the decoder's last conv starts quiet (output std ~0.1, not ~40)
        small = {id(b.block[-1].conv): 0.1 for b in self.modules() if isinstance(b, EncodecResnetBlock)}
        small[id(self.decoder.layers[-1].conv)] = 0.01
        for module in self.modules():
            if not isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
                continue
            wn = module.parametrizations.weight if hasattr(module, "parametrizations") else None
            v = wn.original1 if wn is not None else module.weight
            k, stride = module.kernel_size[0], module.stride[0]
            fan_in = module.in_channels * k / (stride if isinstance(module, nn.ConvTranspose1d) else 1)
            v.normal_(0.0, small.get(id(module), 1.0) * math.sqrt(2.0 / fan_in))
            if wn is not None:  # torch's weight_norm(dim=0): one gain per slice of dim 0
                wn.original0.copy_(torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True))
            if module.bias is not None:
                module.bias.zero_()

    # ------------------------------------------------------------------------------- properties

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return self.config.audio_channels

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> float:
        """Code frames per second (50.0 by default)."""
        return self.config.frame_rate

    @property
    def n_levels(self) -> int:
        """Levels `encode` returns by default (all K unless chosen at load time)."""
        return self._default_levels

    @property
    def max_levels(self) -> int:
        """K, the levels the model has."""
        return self.config.n_levels

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def num_frames(self, num_samples: int) -> int:
        """Code frames `encode` gives for `num_samples` samples at the codec's rate."""
        return -(-num_samples // self.hop_length)

    def _check_levels(self, n: int | None) -> int:
        if n is None:
            return self._default_levels
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.config.n_levels:
            raise ValueError(f"n_levels must be an integer in [1, {self.config.n_levels}], got {n!r}")
        return n

    # ------------------------------------------------------------------------------------ codec

    def _prepare(self, wave: Tensor, sample_rate: int | None) -> Tensor:
        """Check `[B, C, T]`, resample to the codec's rate and match its channels (both logged)."""
        from .audio import check_sample_rate, check_wave, resample, to_channels

        if not isinstance(wave, Tensor):
            raise ValueError(f"wave must be a torch.Tensor [B, C, T], got {type(wave).__name__}")
        if wave.dim() != 3:
            raise ValueError(f"wave must be shaped [batch, channels, samples], got {list(wave.shape)}")
        check_wave(wave, "wave")
        sr = self.sample_rate if sample_rate is None else check_sample_rate(sample_rate)
        if sr != self.sample_rate:
            log.warning("resampling the input from %d Hz to the codec's %d Hz", sr, self.sample_rate)
            wave = resample(wave.float().cpu(), sr, self.sample_rate).to(wave.device)
        if wave.shape[1] != self.channels:
            log.info("converting %d channels to the codec's %d", wave.shape[1], self.channels)
            wave = to_channels(wave, self.channels)
        return wave.to(self._dtype())

    def _dtype(self) -> torch.dtype:
        return self.quantizer.layers[0].codebook.embed.dtype

    @torch.no_grad()
    def encode(self, wave: Tensor, sample_rate: int | None = None, n_levels: int | None = None) -> Tensor:
        """wave `[B, C, T]` in [-1, 1] -> codes `[B, n_levels, ceil(T' / hop)]` (int64, in [0, codebook_size)).

        Args:
            wave: audio; other channel counts are mixed down (or mono duplicated) to the codec's.
            sample_rate: the wave's rate (default: the codec's); other rates are resampled (logged).
            n_levels: RVQ levels to return, 1..K (default: `self.n_levels`).
        """
        n = self._check_levels(n_levels)
        x = self._prepare(wave, sample_rate)
        with _cached_weights():
            z = _run(self.encoder.layers, x)  # [B, D, S]
        return self.quantizer.encode(z, n)

    @torch.no_grad()
    def decode(self, codes: Tensor, *, num_samples: int | None = None) -> Tensor:
        """codes `[B, n, S]` (any first 1 <= n <= K levels) -> wave `[B, C, S * hop]`, cropped to `num_samples`."""
        self.check_codes(codes)
        with _cached_weights():
            wave = _run(self.decoder.layers, self.quantizer.decode(codes.long()))  # [B, C, S * hop]
        if num_samples is not None:
            if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 0 < num_samples <= wave.shape[-1]:
                raise ValueError(f"num_samples must be an integer in [1, {wave.shape[-1]}], got {num_samples!r}")
            wave = wave[..., :num_samples]
        return wave.float()

    def check_codes(self, codes: Any) -> None:
        """Raise a one-line ValueError unless `codes` is an integer tensor `[B, 1..K, S]` in [0, codebook_size)."""
        k, bins = self.config.n_levels, self.codebook_size
        if not isinstance(codes, Tensor):
            raise ValueError(f"codes must be a torch.Tensor [B, K, S], got {type(codes).__name__}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= k or codes.shape[0] < 1 or codes.shape[2] < 1:
            raise ValueError(f"codes must be shaped [batch, levels 1..{k}, frames >= 1], got {list(codes.shape)}")
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= bins:
            bad = low if low < 0 else high
            raise ValueError(f"codes must be in [0, {bins - 1}] (codebook size {bins}), found {bad}")

    def reconstruct(self, wave: Tensor, sample_rate: int | None = None, n_levels: int | None = None) -> Tensor:
        """encode then decode, cropped to the input length at the codec's rate: `[B, C, T]` -> `[B, C', T']`."""
        from .audio import resampled_length

        sr = self.sample_rate if sample_rate is None else sample_rate
        length = resampled_length(wave.shape[-1], sr, self.sample_rate)
        return self.decode(self.encode(wave, sr, n_levels), num_samples=length)

    def forward(self, wave: Tensor, n_levels: int | None = None, *, quantize: bool = True) -> CodecOutput:
        """Training pass: `[B, C, T]` at the codec's rate -> reconstruction, codes and commitment loss.

        Args:
            n_levels: RVQ levels; None lets the quantizer pick (quantizer dropout in training, all K in eval).
            quantize: False decodes the latent itself (autoencoder warm-up before the codebooks start).
        """
        t = wave.shape[-1]
        z = _run(self.encoder.layers, wave)  # [B, D, S]
        if not quantize:
            audio = _run(self.decoder.layers, z)[..., :t]
            return CodecOutput(audio=audio, latent=z, codes=None, commit_loss=z.new_zeros(()), n_levels=0,
                               perplexity=z.new_zeros(0))
        q = self.quantizer(z, None if n_levels is None else self._check_levels(n_levels))
        audio = _run(self.decoder.layers, q.quantized)[..., :t]  # [B, C, T]
        return CodecOutput(audio=audio, latent=z, codes=q.codes, commit_loss=q.commit_loss, n_levels=q.n_q,
                           perplexity=q.perplexity)

    # ---------------------------------------------------------------------------------------- I/O

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        """Write `config.json` (ours) + `model.safetensors` (EncodecModel key names); dtype=torch.float16 to ship."""
        from soundsmith.core.files import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_safetensors(state, folder / WEIGHTS_NAME)
        write_json(folder / CONFIG_NAME, {"_class_name": "NeuralCodec", **self.config.to_dict(),
                                          "_frame_rate": self.frame_rate, "_hop_length": self.hop_length})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, n_levels: int | None = None) -> NeuralCodec:
        """Load our folder or a transformers EnCodec folder (model_type "encodec"); CPU, float32, eval mode.

        Args:
            folder: the model folder.
            n_levels: levels `encode` returns by default (default: all the model has).
        """
        folder = Path(folder)
        raw = read_config(folder)
        kind = raw.get("_class_name")
        if kind == "NeuralCodec":
            try:
                config = NeuralCodecConfig.from_dict(raw)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{folder / CONFIG_NAME}: {err}") from None
            weights = find_weights(folder, (WEIGHTS_NAME,))
        elif kind is None and (raw.get("model_type") == "encodec" or "EncodecModel" in (raw.get("architectures") or ())):
            config = NeuralCodecConfig.from_transformers(raw, folder / CONFIG_NAME)
            weights = find_weights(folder, TRANSFORMERS_WEIGHTS)
        else:
            raise ValueError(f"{folder / CONFIG_NAME}: neither a soundsmith 'NeuralCodec' nor a transformers EnCodec "
                             f"config (_class_name={kind!r}, model_type={raw.get('model_type')!r})")
        model = cls(config, n_levels=n_levels)
        state = rename_legacy_weight_norm(read_state_dict(weights))
        load_strict(model, state, weights, what="NeuralCodec")
        return model.float().eval()

    def num_parameters(self) -> dict[str, int]:
        """Weights per part; `codebooks` counts codeword entries (buffers learned by EMA)."""
        return {"encoder": sum(p.numel() for p in self.encoder.parameters()),
                "decoder": sum(p.numel() for p in self.decoder.parameters()),
                "codebooks": sum(layer.codebook.embed.numel() for layer in self.quantizer.layers)}


def rename_legacy_weight_norm(state: dict[str, Any]) -> dict[str, Any]:
    """`X.weight_g` / `X.weight_v` (old `torch.nn.utils.weight_norm`, as in the Hub's EnCodec files) ->
    `X.parametrizations.weight.original0` / `original1` (the parametrization transformers builds)."""
    out = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            key = key[: -len("weight_g")] + "parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key[: -len("weight_v")] + "parametrizations.weight.original1"
        out[key] = value
    return out


# ------------------------------------------------------------------------------ inference path


def _cached_weights() -> Any:
    """Compute each weight-norm weight once per call instead of once per use (a no-op when training)."""
    from torch.nn.utils import parametrize

    return parametrize.cached()


def _run(layers: nn.ModuleList, x: Tensor) -> Tensor:
    """transformers' `EncodecEncoder.forward` / `EncodecDecoder.forward`, with integer padding arithmetic,
    reflect padding by concatenation, and (without autograd) in-place ELUs on tensors nothing else reads."""
    from transformers.models.encodec.modeling_encodec import EncodecConv1d, EncodecResnetBlock

    inplace = not torch.is_grad_enabled()
    for layer in layers:
        if isinstance(layer, EncodecConv1d):
            x = _conv1d(layer, x)
        elif isinstance(layer, EncodecResnetBlock):
            y = x
            for i, sub in enumerate(layer.block):
                if isinstance(sub, EncodecConv1d):
                    y = _conv1d(sub, y)
                elif isinstance(sub, nn.ELU):
                    y = F.elu(y, sub.alpha, inplace=inplace and i > 0)  # the first reads x, which the skip needs
                else:
                    y = sub(y)
            shortcut = layer.shortcut
            x = (_conv1d(shortcut, x) if isinstance(shortcut, EncodecConv1d) else shortcut(x)) + y
        elif isinstance(layer, nn.ELU):
            x = F.elu(x, layer.alpha, inplace=inplace)  # x is a fresh output of the previous layer
        else:  # EncodecLSTM, EncodecConvTranspose1d (already integer arithmetic)
            x = layer(x)
    return x


def _conv1d(m: nn.Module, x: Tensor) -> Tensor:
    """`EncodecConv1d.forward`: pad so that the output has ceil(T / stride) frames, then convolve."""
    conv = m.conv
    stride = conv.stride[0]
    kernel = (conv.kernel_size[0] - 1) * conv.dilation[0] + 1  # effective kernel size with dilation
    padding_total = kernel - stride
    length = x.shape[-1]
    n_frames = math.ceil((length - kernel + padding_total) / stride + 1) - 1
    extra = n_frames * stride + kernel - padding_total - length
    if m.causal:
        left, right = padding_total, extra
    else:  # asymmetric for odd totals, as in EnCodec
        right = padding_total // 2
        left, right = padding_total - right, right + extra
    if m.pad_mode == "reflect" and max(left, right) < length:
        x = _reflect_pad(x, left, right)
    elif left or right:
        x = m._pad1d(x, (left, right), mode=m.pad_mode)
    x = conv(x)
    if m.norm_type == "time_group_norm":
        x = m.norm(x)
    return x


def _reflect_pad(x: Tensor, left: int, right: int) -> Tensor:
    """`F.pad(x, (left, right), mode="reflect")` as one concatenation (torch's CPU reflect kernel is slow)."""
    if not left and not right:
        return x
    parts = [x[..., 1: left + 1].flip(-1)] if left else []
    parts.append(x)
    if right:
        parts.append(x[..., -right - 1: -1].flip(-1))
    return torch.cat(parts, dim=-1)
