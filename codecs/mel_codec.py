"""The latent-diffusion codec: mel front-end + mel VAE + a vocoder (AudioLDM's first stage).

    wave [B, C, T] --mono, pad--> log-mel [B, F, S] --VAE--> latent [B, 8, S/4, F/4] * scaling_factor
    latent --/ scaling_factor, VAE--> log-mel [B, F, S] --vocoder--> wave --resample--> [B, 1, S * hop]

The vocoder is any `MelVocoder` of the registry (codecs/vocoders.py); its output is resampled to the
codec's rate, so the codec's rate (16 kHz) stays the pipelines' output rate whichever vocoder decodes.
A model folder holds `config.json` ("vocoder": a registry spec, paths relative to the folder) plus
`vae/` (and `vocoder/` or `hifigan-universal-adapter/` where the spec names them); a diffusers
AudioLDM / MusicLDM pipeline folder (`model_index.json`, `vae/`, `vocoder/`) loads with its own HiFi-GAN.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from soundsmith.core.files import read_config, read_json_object
from torch import Tensor, nn

from .mel import MelConfig, MelSpectrogram
from .mel_vae import MelVAE
from .mel_vocoder import MelVocoder, check_same_mel
from .vocoders import build_vocoder

log = logging.getLogger(__name__)

DIFFUSERS_PIPELINES = ("AudioLDMPipeline", "MusicLDMPipeline", "AudioLDM2Pipeline")


class MelLatentCodec(nn.Module):
    """wave `[B, C, T]` <-> scaled VAE latent `[B, latent_channels, S/4, F/4]` (S = mel frames)."""

    def __init__(self, vae: MelVAE, vocoder: MelVocoder):
        super().__init__()
        vm, wm = vae.config.mel, vocoder.mel
        check_same_mel(vm, vocoder, "MelLatentCodec")
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
        wave = self.mel_to_wave(mel)  # [B, 1, S * hop]
        if num_samples is not None:
            if not 0 < num_samples <= wave.shape[-1]:
                raise ValueError(f"num_samples must be in [1, {wave.shape[-1]}], got {num_samples}")
            wave = wave[..., :num_samples]
        return wave

    def mel_to_wave(self, mel: Tensor) -> Tensor:
        """log-mel `[B, F, S]` -> wave `[B, 1, S * hop]` at the codec's rate: the vocoder, then resampling
        (and a crop or zero pad of the few samples a resampler or a frame-rate change leaves)."""
        wave = self.vocoder(mel)  # [B, T'] at the vocoder's rate
        if self.vocoder.sample_rate != self.sample_rate:
            from .audio import resample

            wave = resample(wave, self.vocoder.sample_rate, self.sample_rate)
        length = mel.shape[-1] * self.hop_length
        wave = wave[:, :length] if wave.shape[-1] >= length else F.pad(wave, (0, length - wave.shape[-1]))
        return wave[:, None]

    def with_vocoder(self, vocoder: MelVocoder) -> MelLatentCodec:
        """The same VAE decoded by another vocoder (the VAE is shared, not copied)."""
        return type(self)(self.vae, vocoder)

    def reconstruct(self, wave: Tensor, sample_rate: int | None = None) -> Tensor:
        """encode then decode; `[B, C, T]` -> `[B, 1, T']` with T' the input length at the codec's rate."""
        sr = self.sample_rate if sample_rate is None else sample_rate
        from .audio import resampled_length

        length = resampled_length(wave.shape[-1], sr, self.sample_rate)
        return self.decode(self.encode(wave, sr), num_samples=length)

    # ---------------------------------------------------------------------------------------- I/O

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        """Write `config.json`, `vae/` and what the vocoder needs: its spec in config.json, plus `vocoder/`
        for a trained HiFi-GAN or the mel adapter of the universal one (dtype=torch.float16 for shipping)."""
        from soundsmith.core.files import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.vae.save_pretrained(folder / "vae", dtype=dtype)
        save_vocoder_files(self.vocoder, folder, dtype=dtype)
        write_json(folder / "config.json", {
            "_class_name": "MelLatentCodec", "vae": "vae", "vocoder": self.vocoder.spec(),
            "sample_rate": self.sample_rate, "frame_rate": self.frame_rate,
        })
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, vocoder: str | dict | None = None) -> MelLatentCodec:
        """Load our folder or a diffusers AudioLDM/MusicLDM pipeline folder; CPU, float32, eval mode.

        `vocoder`: a registry name or spec that replaces the folder's own (e.g. "hifigan-universal").
        """
        folder = Path(folder)
        index = folder / "model_index.json"
        if index.is_file() and not (folder / "config.json").is_file():
            kind = read_json_object(index).get("_class_name")
            if kind not in DIFFUSERS_PIPELINES:
                raise ValueError(f"{index}: _class_name={kind!r} is not one of {', '.join(DIFFUSERS_PIPELINES)}")
            spec: str | dict = {"name": "hifigan", "path": "vocoder"}
        else:
            raw = read_config(folder)
            if raw.get("_class_name") != "MelLatentCodec":
                raise ValueError(f"{folder / 'config.json'}: _class_name={raw.get('_class_name')!r}, "
                                 "expected 'MelLatentCodec'")
            spec = raw.get("vocoder", "vocoder")
            if isinstance(spec, str):  # before the registry: the name of a trained HiFi-GAN sub-folder
                spec = {"name": "hifigan", "path": spec}
            if vocoder is None:
                from soundsmith.core.paths import models_tree

                from .vocoders import check_spec_paths

                check_spec_paths(spec, folder, models_tree(folder), where=f"{folder / 'config.json'} 'vocoder'")
        return cls.from_parts(folder / "vae", vocoder if vocoder is not None else spec, base_dir=folder)

    @classmethod
    def from_parts(cls, vae_folder: str | os.PathLike, vocoder: str | dict | MelVocoder, *,
                   base_dir: str | os.PathLike | None = None, mel: MelConfig | None = None) -> MelLatentCodec:
        """A VAE folder + a vocoder (built from its spec with paths relative to `base_dir`).

        The mel front-end: `mel` if given, else the VAE folder's record, else (a diffusers vae/ records
        none) the trained HiFi-GAN's, else the AudioLDM default.
        """
        if mel is None:
            mel = _recorded_mel(Path(vae_folder))
        if mel is None and not isinstance(vocoder, MelVocoder):
            spec = {"name": vocoder} if isinstance(vocoder, str) else dict(vocoder)
            if spec.get("name") == "hifigan":  # a transformers vocoder/ records its rate, bins and hop
                from .vocoder import Vocoder

                path = Path(spec.get("path", "vocoder"))
                path = path if path.is_absolute() or base_dir is None else Path(base_dir) / path
                vocoder = Vocoder.from_pretrained(path)
                mel = vocoder.mel
        mel = mel or MelConfig()
        if not isinstance(vocoder, MelVocoder):
            vocoder = build_vocoder(vocoder, mel=mel, base_dir=base_dir)
        vae = MelVAE.from_pretrained(vae_folder, mel=mel)
        return cls(vae, vocoder).eval()

    def num_parameters(self) -> dict[str, int]:
        return {"vae": self.vae.num_parameters(),
                "vocoder": sum(p.numel() for p in self.vocoder.parameters())}


def save_vocoder_files(vocoder: MelVocoder, folder: Path, *, dtype: torch.dtype | None = None) -> None:
    """Write the files a vocoder's spec points to inside `folder` (trained weights, a mel adapter)."""
    spec = vocoder.spec()
    if spec["name"] == "hifigan":
        vocoder.save_pretrained(folder / spec.get("path", "vocoder"), dtype=dtype)
    elif spec["name"] == "hifigan-universal":
        vocoder.adapter.save_pretrained(folder / spec["adapter"], dtype=dtype)


def _recorded_mel(vae_folder: Path) -> MelConfig | None:
    """The mel front-end a soundsmith vae/ config records (None for a diffusers AutoencoderKL folder)."""
    from soundsmith.core.weights import config_from_dict

    config = vae_folder / "config.json"
    if not config.is_file():
        return None
    mel = read_json_object(config).get("mel")
    return config_from_dict(MelConfig, mel, f"{config} 'mel'") if isinstance(mel, dict) else None


