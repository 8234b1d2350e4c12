"""The latent-diffusion codec: mel front-end + mel VAE + HiFi-GAN vocoder (AudioLDM's first stage).

    wave [B, C, T] --mono, pad--> log-mel [B, F, S] --VAE--> latent [B, 8, S/4, F/4] * scaling_factor
    latent --/ scaling_factor, VAE--> log-mel [B, F, S] --vocoder--> wave [B, 1, S * hop]

A model folder holds `config.json` plus the sub-folders `vae/` and `vocoder/`; a diffusers
AudioLDM / MusicLDM pipeline folder (`model_index.json`, `vae/`, `vocoder/`) loads too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mel import MelSpectrogram
from .mel_vae import MelVAE
from .vocoder import Vocoder
from .weights import read_config, read_json_object

log = logging.getLogger(__name__)

DIFFUSERS_PIPELINES = ("AudioLDMPipeline", "MusicLDMPipeline", "AudioLDM2Pipeline")


class MelLatentCodec(nn.Module):
    """wave `[B, C, T]` <-> scaled VAE latent `[B, latent_channels, S/4, F/4]` (S = mel frames)."""

    def __init__(self, vae: MelVAE, vocoder: Vocoder):
        super().__init__()
        vm, wm = vae.config.mel, vocoder.config.mel
        if (vm.sample_rate, vm.n_mels, vm.hop_length) != (wm.sample_rate, wm.n_mels, wm.hop_length):
            raise ValueError(f"VAE mel (sample_rate={vm.sample_rate}, n_mels={vm.n_mels}, hop={vm.hop_length}) and "
                             f"vocoder mel (sample_rate={wm.sample_rate}, n_mels={wm.n_mels}, hop={wm.hop_length}) "
                             "differ; they were not trained as a pair")
        if vm != wm:
            log.warning("VAE and vocoder mel configs differ (%s vs %s); encoding with the VAE's", vm, wm)
        self.vae = vae
        self.vocoder = vocoder
        self.mel = MelSpectrogram(vm)

    # ------------------------------------------------------------------------------- properties

    @property
    def sample_rate(self) -> int:
        return self.mel.cfg.sample_rate

    @property
    def hop_length(self) -> int:
        """Samples per mel frame (160)."""
        return self.mel.cfg.hop_length

    @property
    def samples_per_latent_frame(self) -> int:
        """Samples per latent frame: hop * the VAE's time downsampling (640)."""
        return self.hop_length * self.vae.config.downsample_factor

    @property
    def frame_rate(self) -> float:
        """Latent frames per second (25 for 16 kHz, hop 160, 4x down)."""
        return self.sample_rate / self.samples_per_latent_frame

    @property
    def scaling_factor(self) -> float:
        return self.vae.config.scaling_factor

    def latent_frames(self, num_samples: int) -> int:
        """Latent frames `encode` gives for `num_samples` samples at the codec's rate (rounded up)."""
        return -(-num_samples // self.samples_per_latent_frame)

    # ------------------------------------------------------------------------------------ codec

    def wave_to_mel(self, wave: Tensor, sample_rate: int) -> Tensor:
        """`[B, C, T]` at `sample_rate` -> log-mel `[B, F, S]` with S a multiple of the VAE's downsampling.

        Resamples to the codec's rate and mixes down to mono; a length that is not a whole number of
        latent frames is zero-padded at the end (logged), and `decode(..., num_samples=T)` crops it back.
        """
        if wave.dim() != 3:
            raise ValueError(f"wave must be [B, C, T], got {list(wave.shape)}")
        if sample_rate != self.sample_rate:
            from .audio import resample

            log.info("resampling %d Hz -> %d Hz", sample_rate, self.sample_rate)
            wave = resample(wave, sample_rate, self.sample_rate)
        mono = wave.float().mean(1)  # [B, T]
        step = self.samples_per_latent_frame
        pad = -mono.shape[-1] % step
        if pad:
            log.info("padding %d samples to %d (a whole number of %d-sample latent frames)",
                     mono.shape[-1], mono.shape[-1] + pad, step)
            mono = F.pad(mono, (0, pad))
        return self.mel(mono)  # [B, F, S]

    def encode(self, wave: Tensor, sample_rate: int | None = None, *, sample: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
        """wave `[B, C, T]` -> latent `[B, latent, ceil(T / 640), F/4]`, multiplied by `scaling_factor`.

        Args:
            wave: float32 audio in [-1, 1].
            sample_rate: the wave's rate (default: the codec's); other rates are resampled.
            sample: draw from the posterior instead of taking its mean (default False: deterministic).
            generator: the RNG for `sample=True`.
        """
        mel = self.wave_to_mel(wave, self.sample_rate if sample_rate is None else sample_rate)
        posterior = self.vae.encode(mel)
        z = posterior.sample(generator=generator) if sample else posterior.mean
        return z * self.scaling_factor

    def decode(self, latent: Tensor, *, num_samples: int | None = None) -> Tensor:
        """latent `[B, latent, S/4, F/4]` -> wave `[B, 1, S * hop]`, cropped to `num_samples` if given."""
        mel = self.vae.decode(latent / self.scaling_factor)  # [B, F, S]
        wave = self.vocoder(mel)[:, None]  # [B, 1, T]
        if num_samples is not None:
            if not 0 < num_samples <= wave.shape[-1]:
                raise ValueError(f"num_samples must be in [1, {wave.shape[-1]}], got {num_samples}")
            wave = wave[..., :num_samples]
        return wave

    def reconstruct(self, wave: Tensor, sample_rate: int | None = None) -> Tensor:
        """encode then decode; `[B, C, T]` -> `[B, 1, T']` with T' the input length at the codec's rate."""
        sr = self.sample_rate if sample_rate is None else sample_rate
        from .audio import resampled_length

        length = resampled_length(wave.shape[-1], sr, self.sample_rate)
        return self.decode(self.encode(wave, sr), num_samples=length)

    # ---------------------------------------------------------------------------------------- I/O

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        """Write `config.json`, `vae/` and `vocoder/` (dtype=torch.float16 for shipping)."""
        from .audio import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.vae.save_pretrained(folder / "vae", dtype=dtype)
        self.vocoder.save_pretrained(folder / "vocoder", dtype=dtype)
        write_json(folder / "config.json", {
            "_class_name": "MelLatentCodec", "vae": "vae", "vocoder": "vocoder",
            "sample_rate": self.sample_rate, "frame_rate": self.frame_rate,
        })
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> MelLatentCodec:
        """Load our folder or a diffusers AudioLDM/MusicLDM pipeline folder; CPU, float32, eval mode."""
        folder = Path(folder)
        index = folder / "model_index.json"
        if index.is_file() and not (folder / "config.json").is_file():
            kind = read_json_object(index).get("_class_name")
            if kind not in DIFFUSERS_PIPELINES:
                raise ValueError(f"{index}: _class_name={kind!r} is not one of {', '.join(DIFFUSERS_PIPELINES)}")
        else:
            kind = read_config(folder).get("_class_name")
            if kind != "MelLatentCodec":
                raise ValueError(f"{folder / 'config.json'}: _class_name={kind!r}, expected 'MelLatentCodec'")
        vocoder = Vocoder.from_pretrained(folder / "vocoder")
        # A diffusers vae/ does not record its mel front-end; it is the vocoder's.
        vae = MelVAE.from_pretrained(folder / "vae", mel=vocoder.config.mel)
        return cls(vae, vocoder).eval()

    def num_parameters(self) -> dict[str, int]:
        return {"vae": self.vae.num_parameters(), "vocoder": self.vocoder.num_parameters()}


