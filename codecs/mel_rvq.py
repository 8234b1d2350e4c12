"""The token default's acoustic codec: residual VQ over the mel VAE's latent (decoding through the same mel path as latent diffusion).

    wave [B, C, T] --MelLatentCodec.encode--> latent [B, 8, S, 16] --one 128-d vector per frame--> z [B, 128, S]
    z --ResidualVQ--> codes [B, K, S]                                         (S = ceil(T / 640), 25 frames/s)
    codes [B, K', S] --sum of codewords--> [B, 128, S] --> latent [B, 8, S, 16] --VAE--> log-mel --vocoder--> wave

Nothing here is a network of its own: the VAE and the vocoder are the latent-diffusion backend's mel path
(`MelLatentCodec`), and the codebooks are the house `ResidualVQ` (codecs/rvq.py), fitted by k-means per
level on cached latents and refined by EMA with dead-code restarts (train/train_mel_rvq.py). Any prefix of
levels decodes (residual k-means makes each level a refinement of the ones before), so the token backend
splits them into coarse (the first levels) and fine (the rest).

Folder: `config.json` ("_class_name": "MelRVQCodec", the RVQ settings, `mel_codec`: the relative path of the
`MelLatentCodec` folder whose VAE it was trained on, `vae_fingerprint`: that VAE's weights, `vocoder`: a
registry spec) + `model.safetensors` (`codebooks [K, bins, 128]`, fp16 when shipped). Loading refuses a VAE
other than the recorded one; the vocoder may be swapped (`from_pretrained(..., vocoder="hifigan-universal")`)
because it does not change the codes, and `fingerprint()` (what the LMs record) leaves it out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from soundsmith.core.files import read_config
from soundsmith.core.paths import model_link, models_tree
from soundsmith.core.weights import config_from_dict, read_state_dict, save_safetensors
from torch import Tensor, nn

from .mel_codec import MelLatentCodec
from .rvq import ResidualVQ
from .vocoders import check_spec_paths

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CLASS_NAME = "MelRVQCodec"


@dataclass(frozen=True)
class MelRVQConfig:
    """The residual VQ over the mel VAE latent, and where that VAE and the vocoder come from."""

    n_levels: int = 8  # K residual levels; the token backend's coarse LM takes the first n_coarse
    codebook_size: int = 1024
    dim: int = 128  # one vector per latent frame: latent channels (8) x frequency rows (16)
    decay: float = 0.99  # EMA decay of the codebooks in training (EnCodec: 0.99)
    dead_code_threshold: float = 0.1  # restart codes used less than this fraction of the average code
    mel_codec: str = "../../mel-codec"  # the MelLatentCodec folder, relative to this folder (or absolute)
    vae_fingerprint: str = ""  # of that folder's VAE when the codebooks were fitted ("" = not checked)
    vocoder: dict[str, Any] = field(default_factory=lambda: {"name": "griffin-lim"})  # registry spec

    def __post_init__(self) -> None:
        if self.n_levels < 1 or self.codebook_size < 2 or self.dim < 1:
            raise ValueError(f"MelRVQConfig needs n_levels >= 1, codebook_size >= 2, dim >= 1; got {self.n_levels}, "
                             f"{self.codebook_size}, {self.dim}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MelRVQCodec(nn.Module):
    """wave `[B, C, T]` <-> codes `[B, K, S]` through the mel VAE latent (S = ceil(T / 640), 25 frames/s).

    Args:
        mel_codec: the `MelLatentCodec` (VAE + vocoder) the codebooks were fitted on.
        config: `MelRVQConfig`; `dim` must be the VAE latent's channels x frequency rows.
        n_levels: levels `encode` returns by default (default: all K).
    """

    def __init__(self, mel_codec: MelLatentCodec, config: MelRVQConfig | None = None, *, n_levels: int | None = None):
        super().__init__()
        config = config or MelRVQConfig()
        vae = mel_codec.vae.config
        rows = vae.n_mels // vae.downsample_factor
        if config.dim != vae.latent_channels * rows:
            raise ValueError(f"MelRVQCodec: dim={config.dim}, but the VAE's latent frame is {vae.latent_channels} "
                             f"channels x {rows} rows = {vae.latent_channels * rows}")
        self.config = config
        self.mel_codec = mel_codec
        self.latent_channels = vae.latent_channels
        self.quantizer = ResidualVQ(dim=config.dim, n_q=config.n_levels, bins=config.codebook_size,
                                    decay=config.decay, dead_code_threshold=config.dead_code_threshold)
        self._default_levels = self._check_levels(n_levels) if n_levels is not None else config.n_levels
        self._mel_codec_folder: Path | None = None  # where the mel codec was loaded from (save_pretrained links it)

    # ------------------------------------------------------------------------------- properties

    @property
    def sample_rate(self) -> int:
        return self.mel_codec.sample_rate

    @property
    def channels(self) -> int:
        return 1

    @property
    def hop_length(self) -> int:
        """Samples per code frame (640: mel hop 160 x the VAE's 4x time downsampling)."""
        return self.mel_codec.samples_per_latent_frame

    @property
    def frame_rate(self) -> float:
        """Code frames per second (25)."""
        return self.mel_codec.frame_rate

    @property
    def n_levels(self) -> int:
        """Levels `encode` returns by default."""
        return self._default_levels

    @property
    def max_levels(self) -> int:
        """K, the levels the codec has."""
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

    # ------------------------------------------------------------------------- latent <-> vectors

    def latent_to_vectors(self, latent: Tensor) -> Tensor:
        """Scaled VAE latent `[B, c, S, f]` -> one vector per frame `[B, c * f, S]`."""
        return rearrange(latent, "b c s f -> b (c f) s")  # [B, 8, S, 16] -> [B, 128, S]

    def vectors_to_latent(self, z: Tensor) -> Tensor:
        """`[B, c * f, S]` -> scaled VAE latent `[B, c, S, f]`."""
        return rearrange(z, "b (c f) s -> b c s f", c=self.latent_channels)  # [B, 128, S] -> [B, 8, S, 16]

    # ------------------------------------------------------------------------------------ codec

    @torch.no_grad()
    def encode_latent(self, wave: Tensor, sample_rate: int | None = None) -> Tensor:
        """wave `[B, C, T]` -> the VAE's scaled latent as vectors `[B, 128, S]` (posterior mean)."""
        if not isinstance(wave, Tensor) or wave.dim() != 3:
            raise ValueError(f"wave must be a torch.Tensor shaped [batch, channels, samples], got "
                             f"{list(wave.shape) if isinstance(wave, Tensor) else type(wave).__name__}")
        return self.latent_to_vectors(self.mel_codec.encode(wave, sample_rate))

    @torch.no_grad()
    def encode(self, wave: Tensor, sample_rate: int | None = None, n_levels: int | None = None) -> Tensor:
        """wave `[B, C, T]` in [-1, 1] -> codes `[B, n_levels, ceil(T' / 640)]` (int64, in [0, codebook_size)).

        Args:
            wave: audio; channels are mixed down to mono.
            sample_rate: the wave's rate (default: the codec's); other rates are resampled.
            n_levels: RVQ levels to return, 1..K (default: `self.n_levels`).
        """
        n = self._check_levels(n_levels)
        return self.quantizer.encode(self.encode_latent(wave, sample_rate), n)  # [B, n, S]

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        """codes `[B, n, S]` -> the scaled VAE latent `[B, 8, S, 16]` (sum of the n levels' codewords)."""
        self.check_codes(codes)
        return self.vectors_to_latent(self.quantizer.decode(codes.long()))

    @torch.no_grad()
    def decode(self, codes: Tensor, *, num_samples: int | None = None) -> Tensor:
        """codes `[B, n, S]` (any first 1 <= n <= K levels) -> wave `[B, 1, S * 640]`, cropped to `num_samples`."""
        latent = self.codes_to_latent(codes)  # [B, 8, S, 16]
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)):
            raise ValueError(f"num_samples must be an integer, got {num_samples!r}")
        return self.mel_codec.decode(latent.float(), num_samples=num_samples).float()

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
            raise ValueError(f"codes must be in [0, {bins - 1}] (codebook size {bins}), found {low if low < 0 else high}")

    def reconstruct(self, wave: Tensor, sample_rate: int | None = None, n_levels: int | None = None) -> Tensor:
        """encode then decode, cropped to the input length at the codec's rate: `[B, C, T]` -> `[B, 1, T']`."""
        from .audio import resampled_length

        sr = self.sample_rate if sample_rate is None else sample_rate
        length = resampled_length(wave.shape[-1], sr, self.sample_rate)
        return self.decode(self.encode(wave, sr, n_levels), num_samples=length)

    def with_vocoder(self, vocoder: Any) -> MelRVQCodec:
        """The same codebooks and VAE decoded by another vocoder (`MelVocoder`); the codes do not change."""
        spec = vocoder.spec()
        other = type(self)(self.mel_codec.with_vocoder(vocoder), dataclasses.replace(self.config, vocoder=spec),
                           n_levels=self._default_levels)
        other.quantizer.load_state_dict(self.quantizer.state_dict())
        other._mel_codec_folder = self._mel_codec_folder
        return other.eval()

    # ------------------------------------------------------------------------------ fingerprints

    def codebooks(self) -> Tensor:
        """`[K, bins, D]`: all the weights this codec adds to the mel path."""
        return self.quantizer.codebooks()

    def fingerprint(self) -> str:
        """Short hash of the codebooks and the VAE, rounded to fp16 (the same after an fp16 export); the vocoder
        is left out, so swapping it keeps the LMs trained on these codes."""
        vae = {f"vae.{k}": v for k, v in self.mel_codec.vae.state_dict().items()}
        return _fp16_hash({"codebooks": self.codebooks(), **vae})

    # ---------------------------------------------------------------------------------------- I/O

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype | None = None,
                        mel_codec: str | os.PathLike | None = None) -> Path:
        """Write `config.json` + `model.safetensors` (`codebooks [K, bins, D]`; dtype=torch.float16 to ship).

        The mel codec is referenced, not copied: config.json records its folder's path relative to `folder`
        (`mel_codec` given here, else the folder it was loaded from) and its VAE's fingerprint. A codec built in
        memory, with no such folder, or loaded from a folder that loading `folder` would not follow (outside the
        tree of the token model `folder` is a part of, and outside the shipped models/: core/paths.py), writes its
        mel codec into `folder/mel-codec/`.
        """
        from soundsmith.core.files import write_json
        from soundsmith.core.paths import SHIPPED_MODELS, is_inside, models_tree

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        source = mel_codec if mel_codec is not None else self._mel_codec_folder
        if mel_codec is None and source is not None and not any(
                is_inside(source, root) for root in (models_tree(folder.parent), SHIPPED_MODELS)):
            source = None  # e.g. a loaded token model saved into another tree: its link would not load
        if source is None:
            source = self.mel_codec.save_pretrained(folder / "mel-codec", dtype=dtype)
        where = os.path.relpath(Path(source).resolve(), folder.resolve())
        config = dataclasses.replace(self.config, mel_codec=where, vae_fingerprint=vae_fingerprint(self.mel_codec),
                                     vocoder=self.mel_codec.vocoder.spec())
        embeds = self.codebooks().detach().cpu()
        save_safetensors({"codebooks": embeds.to(dtype) if dtype is not None else embeds}, folder / WEIGHTS_NAME,
                         metadata={"format": "pt", "model_type": "mel-rvq"})
        write_json(folder / CONFIG_NAME, {"_class_name": CLASS_NAME, **config.to_dict(),
                                          "_frame_rate": self.frame_rate, "_hop_length": self.hop_length})
        self.config = config
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, n_levels: int | None = None,
                        vocoder: str | dict | None = None, mel_codec: MelLatentCodec | None = None,
                        tree: str | os.PathLike | None = None) -> MelRVQCodec:
        """Load a folder written by `save_pretrained`; CPU, float32, eval mode.

        Args:
            n_levels: levels `encode` returns by default (default: all).
            vocoder: a registry name or spec replacing the recorded one (e.g. "hifigan-universal").
            mel_codec: an already loaded mel codec instead of the recorded folder (its VAE is checked too).
            tree: the models tree the recorded mel codec must lie in (core/paths.py). Default: the tree of
                the folder's parent, since this codec is the codec/ part of a token model and its mel codec sits
                beside that model (models/default-tokens/codec -> ../../mel-codec); a pipeline passes its own.
        """
        folder = Path(folder)
        raw = read_config(folder)
        if raw.get("_class_name") != CLASS_NAME:
            raise ValueError(f"{folder / CONFIG_NAME}: _class_name={raw.get('_class_name')!r}, expected {CLASS_NAME!r}")
        config = config_from_dict(MelRVQConfig, raw, str(folder / CONFIG_NAME), ignore=("_class_name", "_frame_rate",
                                                                                         "_hop_length"))
        # the mel codec sits inside the folder or beside it (../mel-codec); a config must not lead elsewhere
        tree = models_tree(folder.parent) if tree is None else tree
        source = model_link(config.mel_codec, folder, tree=tree, where=str(folder / CONFIG_NAME), what="mel_codec")
        if vocoder is None:
            check_spec_paths(config.vocoder, source, tree, where=f"{folder / CONFIG_NAME} 'vocoder'")
        if mel_codec is None:
            if not (source / CONFIG_NAME).is_file():
                raise FileNotFoundError(f"{folder / CONFIG_NAME}: mel_codec {config.mel_codec!r} -> no mel codec folder "
                                        f"at {source}")
            mel_codec = MelLatentCodec.from_parts(source / "vae", vocoder if vocoder is not None else config.vocoder,
                                                  base_dir=source)
        elif vocoder is not None:
            from .vocoders import build_vocoder

            mel_codec = mel_codec.with_vocoder(build_vocoder(vocoder, mel=mel_codec.vae.config.mel, base_dir=source))
        found = vae_fingerprint(mel_codec)
        if config.vae_fingerprint and found != config.vae_fingerprint:
            raise ValueError(f"{folder}: the codebooks were fitted on the VAE with fingerprint {config.vae_fingerprint}, "
                             f"the mel codec at {source} has {found}; refit them (`soundsmith train mel-rvq`)")
        config = dataclasses.replace(config, vocoder=mel_codec.vocoder.spec())
        model = cls(mel_codec, config, n_levels=n_levels)
        embeds = read_state_dict(folder / WEIGHTS_NAME).get("codebooks")
        if embeds is None:
            raise ValueError(f"{folder / WEIGHTS_NAME}: no 'codebooks' tensor")
        model.quantizer.load_codebooks_(embeds.float())
        model._mel_codec_folder = source
        return model.float().eval()

    def num_parameters(self) -> dict[str, int]:
        """Weights per part; `codebooks` counts codeword entries (learned by k-means + EMA)."""
        return {**self.mel_codec.num_parameters(), "codebooks": self.codebooks().numel()}


def vae_fingerprint(mel_codec: MelLatentCodec) -> str:
    """`pipelines.base.weights_fingerprint(mel_codec.vae)`: the VAE's weights, fp16-rounded, sorted by name."""
    return _fp16_hash(mel_codec.vae.state_dict())


# Copied from soundsmith.gen.cond_tokens._fingerprint (pipelines.base.weights_fingerprint over a dict; codecs/ sits
# below pipelines/ and gen/, so it cannot import either)
def _fp16_hash(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        if tensor.is_floating_point():
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_acoustic_codec(folder: str | os.PathLike, **kwargs: Any) -> Any:
    """The acoustic codec in `folder`, by its config.json: a `MelRVQCodec` (the token default) or a
    `NeuralCodec` (our EnCodec-architecture codec, or a transformers EnCodec folder). `tree`: see
    `MelRVQCodec.from_pretrained` (a NeuralCodec links nothing)."""
    kind = read_config(Path(folder)).get("_class_name")
    if kind == CLASS_NAME:
        return MelRVQCodec.from_pretrained(folder, **kwargs)
    from .neural_codec import NeuralCodec

    kwargs.pop("tree", None)
    if kwargs.pop("vocoder", None) is not None:
        raise ValueError(f"{folder}: a vocoder applies to mel-domain codecs; this codec ({kind or 'EnCodec architecture'}) "
                         f"decodes its tokens straight to a waveform")
    return NeuralCodec.from_pretrained(folder, **kwargs)
