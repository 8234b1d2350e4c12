"""The latent-diffusion backend (AudioLDM family): prompt -> CLAP embedding -> UNet denoising the mel-VAE
latent -> VAE decode -> log-mel -> a vocoder of the registry (codecs/vocoders.py) -> 16 kHz waveform.

    pipe = LDMPipeline.from_pretrained("models/default-ldm")          # or a diffusers AudioLDM/MusicLDM folder
    out = pipe("rain on a tin roof", duration_s=5.0, seed=0)          # AudioOutput, audios [1, 1, 80000]
    out.save("outputs/")

We own the sampling loop (diffusers' AudioLDM pipelines are deprecated); with the same parts,
scheduler, seed and steps it computes what diffusers' `AudioLDMPipeline` / `MusicLDMPipeline`
compute (tests/test_ldm_diffusers_parity.py): latent length from the duration (mel frames rounded up
to the VAE's factor 4), noise * `init_noise_sigma`, CFG as uncond + g * (cond - uncond) when g > 1,
`latent / scaling_factor` -> VAE -> vocoder, and the wave cut to `int(duration_s * sample_rate)` (parity
tests use the folder's own HiFi-GAN, as diffusers does; any registered vocoder can replace it).
Beyond diffusers' pipelines:

- audio-to-audio (`audio=`, `strength=`): SDEdit, the clip's latent noised to `strength` and denoised.
- inpainting / outpainting (`audio=`, `inpaint=[(start_s, end_s)]`, `duration_s` past the clip's end):
  at every step the kept frames are replaced by the clip's latent noised to the next step's level
  (as diffusers' 4-channel inpainting does), and the kept audio is pasted back exactly at the end.
- long-form: past the training window (`config.window_s`) the UNet runs on overlapping windows whose
  predictions are blended (MultiDiffusion), and the VAE decodes in overlapping windows, so memory
  stays that of one window; `config.max_duration_s` is the declared memory-safe limit.
- `num_waveforms_per_prompt` candidates are re-ranked by CLAP where the conditioner has an audio tower.

Folders: ours (`config.json` with "backend": "ldm" and "vocoder": a registry spec such as
{"name": "griffin-lim", "n_iter": 32}, sub-folders unet/ (diffusers), vae/ (diffusers AutoencoderKL),
clap/, scheduler/, and vocoder/ (transformers SpeechT5HifiGan) only for a trained HiFi-GAN), or a
diffusers AudioLDM / MusicLDM folder (`model_index.json`, decoded by its own HiFi-GAN unless
`vocoder=` names another). Paths in the vocoder spec are relative to the folder holding the VAE.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from soundsmith.codecs.audio import DEFAULT_LOUDNESS_LUFS
from soundsmith.core.checks import check_float, check_int
from soundsmith.core.files import read_json_object, write_json
from soundsmith.core.runtime import DTYPE_NAMES, resolve_device, resolve_dtype
from soundsmith.core.version import __version__
from soundsmith.core.weights import config_from_dict, weights_fingerprint
from torch import Tensor

from .base import AudioOutput, Pipeline, Progress

log = logging.getLogger(__name__)

BACKEND = "ldm"
DIFFUSERS_PIPELINES = ("AudioLDMPipeline", "MusicLDMPipeline")
# sampler name -> (diffusers class, settings applied over the model's noise schedule)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
}
# diffusers classes that sample a model trained with discrete DDPM noise (betas over 1000 timesteps), as ours and
# AudioLDM's are: diffusers' KarrasDiffusionSchedulers less EDMEulerScheduler (EDM sigmas, not DDPM timesteps).
# Others run the wrong process: flow matching, consistency / LCM (distilled models), inversion.
DIFFUSERS_SAMPLERS = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler",
)
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class LDMConfig:
    """Pipeline-level settings saved in the model folder's config.json (the parts have their own)."""

    scheduler: str = "dpmsolver++"  # default sampler (SCHEDULERS, or a class of DIFFUSERS_SAMPLERS)
    num_inference_steps: int = 16  # default steps: 5 s in <= 2 s on a 2-core CPU with the default UNet
    guidance_scale: float = 3.0  # default CFG scale (> 1 enables guidance)
    duration_s: float = 5.0  # default length
    window_s: float = 5.12  # the UNet's training crop; longer audio is denoised in overlapping windows
    window_overlap_s: float = 1.28  # overlap of those windows (and of the VAE's decode windows)
    max_duration_s: float = 120.0  # memory-safe maximum this model declares (windowed, so memory is flat)
    null_condition: str = "zeros"  # unconditional embedding: "zeros" (ours: condition dropout to 0) or
    #                                "empty_text" (AudioLDM/MusicLDM: the CLAP embedding of "")
    cross_attention: bool = False  # the UNet attends to the prompt's token states (UNetConfig.cross_attention)
    components: dict[str, str] = field(default_factory=lambda: {
        "unet": "unet", "vae": "vae", "clap": "clap", "scheduler": "scheduler"})
    # the vocoder by registry name + parameters (codecs/vocoders.py), paths relative to the VAE's folder;
    # None: a trained HiFi-GAN in components["vocoder"] (folders written before the registry)
    vocoder: dict[str, Any] | None = None
    trained_with: dict[str, str] = field(default_factory=dict)  # fingerprints of the VAE/CLAP the UNet learned on
    mel: dict[str, Any] | None = None  # the mel front-end of the VAE + vocoder (None: the VAE's record)
    source: str = "soundsmith"  # or "diffusers:AudioLDMPipeline", ...

    def __post_init__(self) -> None:
        if self.null_condition not in ("zeros", "empty_text"):
            raise ValueError(f"null_condition must be 'zeros' or 'empty_text', got {self.null_condition!r}")
        check_int("num_inference_steps", self.num_inference_steps, 1, MAX_STEPS)
        check_float("window_s", self.window_s, 0.0, 3600.0, low_open=True)
        check_float("window_overlap_s", self.window_overlap_s, 0.0, self.window_s / 2)
        check_float("max_duration_s", self.max_duration_s, 0.0, 24 * 3600.0, low_open=True)
        check_float("duration_s", self.duration_s, 0.0, self.max_duration_s, low_open=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config.json") -> LDMConfig:
        return config_from_dict(cls, data, where, ignore=("backend", "_class_name", "soundsmith_version"),
                                wrap_errors=True)


def make_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """A fresh diffusers scheduler `name` over the model's noise schedule `base_config`."""
    import diffusers

    key = str(name).strip().lower()
    if key in SCHEDULERS:
        cls_name, overrides = SCHEDULERS[key]
    elif str(name) in DIFFUSERS_SAMPLERS and hasattr(diffusers, str(name)):
        cls_name, overrides = str(name), {}
    else:
        why = " (it samples another process than the DDPM noise these models learned)" if \
            str(name).endswith("Scheduler") and hasattr(diffusers, str(name)) else ""
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)} or a diffusers class among "
                         f"{', '.join(DIFFUSERS_SAMPLERS)}; got {name!r}{why}")
    cls = getattr(diffusers, cls_name)
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    known = set(inspect.signature(cls.__init__).parameters)
    # from_config keeps only what the class takes; passing the rest would only log noise
    try:
        return cls.from_config({k: v for k, v in config.items() if k in known}, **overrides)
    except ImportError as err:  # DPMSolverSDEScheduler needs torchsde
        raise ValueError(f"scheduler {name!r} needs a package that is not installed ({err})") from None


def scheduler_name(scheduler_or_class: Any) -> str:
    """Our short name for a diffusers scheduler (or its class name when we have none)."""
    cls_name = scheduler_or_class if isinstance(scheduler_or_class, str) else type(scheduler_or_class).__name__
    return next((name for name, (cls, _) in SCHEDULERS.items() if cls == cls_name), cls_name)


def default_noise_schedule(prediction_type: str = "epsilon") -> dict[str, Any]:
    """AudioLDM's training noise schedule (1000 steps, scaled-linear betas 0.0015 -> 0.0195), with
    "trailing" timestep spacing so a few-step sampler starts from the noisiest step."""
    return {"num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0195, "beta_schedule": "scaled_linear",
            "prediction_type": prediction_type, "timestep_spacing": "trailing", "steps_offset": 0,
            "clip_sample": False, "set_alpha_to_one": False}


# ----------------------------------------------------------------------------------------- conditioner


class ClapConditioner:
    """Prompts -> CLAP embeddings `[B, D]` for the UNet's FiLM condition (and token states `[B, L, D']`
    for cross-attention), audio -> CLAP scores for re-ranking.

    Wraps one of: our `SoundsmithClap`; a transformers `ClapModel` (MusicLDM, as `TransformersClap`);
    or a text-only `ClapTextModelWithProjection` + tokenizer (AudioLDM). Embeddings are L2-normalised,
    as AudioLDM and MusicLDM feed them. The unconditional embedding is zeros (our UNets learn it by
    condition dropout) or the CLAP embedding of "" (AudioLDM / MusicLDM).
    """

    def __init__(self, model: Any, *, tokenizer: Any = None, null_condition: str = "zeros"):
        from soundsmith.gen.clap import SoundsmithClap, TransformersClap

        if isinstance(model, SoundsmithClap):
            self.kind = "soundsmith"
        elif isinstance(model, TransformersClap):
            self.kind = "transformers"
            tokenizer = model.tokenizer
        elif type(model).__name__ == "ClapTextModelWithProjection":
            self.kind = "text"
        else:
            raise ValueError(f"unsupported CLAP model {type(model).__name__}: expected SoundsmithClap, a "
                             "transformers ClapModel or ClapTextModelWithProjection")
        if self.kind != "soundsmith" and tokenizer is None:
            raise ValueError("a transformers CLAP needs its tokenizer (vocab.json/merges.txt or tokenizer.json)")
        if self.kind == "soundsmith" and null_condition == "empty_text":
            raise ValueError("our CLAP rejects empty text; use null_condition='zeros'")
        self.model = model
        self.tokenizer = tokenizer
        self.null_condition = null_condition

    # ------------------------------------------------------------------------------------- facts

    @property
    def dim(self) -> int:
        if self.kind == "text":
            return int(self.model.config.projection_dim)
        return int(self.model.dim)

    @property
    def has_audio_tower(self) -> bool:
        return self.kind in ("soundsmith", "transformers")

    @property
    def min_audio_s(self) -> float:
        """The shortest clip `score` takes (one output frame of our CLAP's audio tower; 0 for the others)."""
        if self.kind != "soundsmith":
            return 0.0
        return self.model.config.min_samples / self.model.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def parameters(self) -> Any:
        return self.model.parameters()

    def to(self, device: Any = None, dtype: Any = None) -> ClapConditioner:
        self.model.to(device=device, dtype=dtype)
        return self

    def fingerprint(self) -> str:
        return weights_fingerprint(self.model)

    # ------------------------------------------------------------------------------------- text

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> Tensor:
        """texts -> L2-normalised `[B, D]` float32."""
        if self.kind == "soundsmith":
            return self.model.embed_text(texts).float()
        batch = self._tokenize(texts)
        if self.kind == "text":
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds
        else:
            from soundsmith.gen.clap import _features

            out = _features(self.model.model.get_text_features(input_ids=batch["input_ids"],
                                                               attention_mask=batch["attention_mask"]))
        return F.normalize(out.float(), dim=-1)

    def _tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        # Padded to the longest prompt, not to model_max_length as diffusers does: the attention mask makes
        # the padding inert, and 512 padded tokens cost most of a CPU call's text-encoder time.
        text_config = self.model.config if self.kind == "text" else self.model.model.config.text_config
        limit = min(int(self.tokenizer.model_max_length), int(text_config.max_position_embeddings) - 2)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def _text_limit(self) -> tuple[Any, int]:
        """The tokenizer and the number of tokens (special ones included) the text encoder reads."""
        if self.kind == "soundsmith":
            encoder = self.model.text_encoder
            return encoder.tokenizer, int(encoder.max_tokens)
        text_config = self.model.config if self.kind == "text" else self.model.model.config.text_config
        return self.tokenizer, min(int(self.tokenizer.model_max_length), int(text_config.max_position_embeddings) - 2)

    def warn_long_prompts(self, texts: Sequence[str]) -> None:
        """One warning when prompts are longer than the text encoder reads: it keeps their first tokens and
        drops the rest without a word. Called once per pipeline call (the encoders run several times)."""
        tokenizer, limit = self._text_limit()
        distinct = list(dict.fromkeys(texts))
        lengths = [len(ids) for ids in tokenizer(distinct, verbose=False)["input_ids"]]  # verbose: no HF warning
        long = [(text, n) for text, n in zip(distinct, lengths) if n > limit]
        if not long:
            return
        text, n = long[0]
        try:  # the characters those tokens cover (fast tokenizers give offsets)
            offsets = tokenizer(text, truncation=True, max_length=limit, return_offsets_mapping=True)["offset_mapping"]
            kept = f"its first {max(end for _, end in offsets)} characters"
        except (NotImplementedError, ValueError, KeyError):
            kept = "the rest is dropped"
        more = f" ({len(long) - 1} more prompts are cut too)" if len(long) > 1 else ""
        shown = text if len(text) <= 40 else text[:37] + "..."
        log.warning("prompt %r is %d tokens long; the text encoder reads only its first %d tokens (%s)%s", shown, n,
                    limit, kept, more)

    def null_embedding(self, n: int) -> Tensor:
        """The unconditional embedding `[n, D]` (zeros, or the embedding of "")."""
        if self.null_condition == "zeros":
            return torch.zeros(n, self.dim, device=self.device)
        return self.embed_text([""]).expand(n, -1).clone()

    def embed_prompts(self, texts: Sequence[str | None]) -> Tensor:
        """Prompts where None means unconditional -> `[B, D]` (one text-encoder call for the distinct texts)."""
        distinct = list(dict.fromkeys(t for t in texts if t is not None))
        table = dict(zip(distinct, self.embed_text(distinct))) if distinct else {}
        null = self.null_embedding(1)[0] if any(t is None for t in texts) else None
        return torch.stack([table[t] if t is not None else null for t in texts])

    @torch.no_grad()
    def token_states(self, texts: Sequence[str | None]) -> tuple[Tensor, Tensor]:
        """Token states `[B, L, D']` and mask `[B, L]` for cross-attention; None -> one zero token."""
        if self.kind == "soundsmith":
            encoder = self.model.text_encoder
            tokenizer, model, max_len = encoder.tokenizer, encoder.model, encoder.max_tokens
        else:
            tokenizer = self.tokenizer
            model = self.model.text_model if self.kind == "text" else self.model.model.text_model
            max_len = None
        real = [t for t in texts if t is not None]
        states, mask = None, None
        if real:
            batch = tokenizer(real, padding=True, truncation=True, return_tensors="pt",
                              **({"max_length": max_len} if max_len else {}))
            device = next(model.parameters()).device
            states = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).last_hidden_state.float()
            mask = batch["attention_mask"].to(device)
        width = states.shape[-1] if states is not None else int(model.config.hidden_size)
        length = states.shape[1] if states is not None else 1
        out = torch.zeros(len(texts), length, width, device=self.device)
        out_mask = torch.zeros(len(texts), length, dtype=torch.long, device=self.device)
        k = 0
        for i, t in enumerate(texts):
            if t is None:
                out_mask[i, 0] = 1  # one zero token: attention needs at least one key
            else:
                out[i], out_mask[i] = states[k], mask[k]
                k += 1
        return out, out_mask

    # ------------------------------------------------------------------------------------ audio

    @torch.no_grad()
    def score(self, texts: list[str], audio: Tensor, sample_rate: int) -> Tensor:
        """Cosine of each clip `[B, C, T]` with its text in the CLAP space -> `[B]` float32 CPU."""
        a = self.model.embed_audio(audio, sample_rate).float()  # [B, D]
        t = self.embed_text(list(dict.fromkeys(texts)))
        index = {text: i for i, text in enumerate(dict.fromkeys(texts))}
        return (a * t[[index[x] for x in texts]].to(a.device)).sum(-1).cpu()

    # ---------------------------------------------------------------------------------- folders

    def save_pretrained(self, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "soundsmith":
            return self.model.save_pretrained(folder, dtype=dtype)
        model = self.model.model if self.kind == "transformers" else self.model
        copy.deepcopy(model).to(dtype).save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        if self.kind == "transformers":
            self.model.feature_extractor.save_pretrained(str(folder))
        return folder

    @classmethod
    def from_pretrained(cls, folder: Path, null_condition: str = "zeros") -> ClapConditioner:
        """Our CLAP folder, a transformers ClapModel folder, or a ClapTextModelWithProjection folder."""
        from soundsmith.gen.clap import load_clap

        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"CLAP folder not found (no config.json): {folder}")
        model_type = read_json_object(config_path).get("model_type")
        if model_type == "clap_text_model":
            from transformers import AutoTokenizer, ClapTextModelWithProjection

            model = ClapTextModelWithProjection.from_pretrained(str(folder), local_files_only=True).eval()
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            return cls(model, tokenizer=tokenizer, null_condition=null_condition)
        return cls(load_clap(folder).eval(), null_condition=null_condition)


# ------------------------------------------------------------------------------------------- pipeline


class LDMPipeline(Pipeline):
    """Latent-diffusion text-to-audio (AudioLDM layout). Build with `from_pretrained`, or from parts:

    Args:
        unet: diffusers `UNet2DConditionModel` (class_embed_type="simple_projection", concat).
        codec: `MelLatentCodec` (mel VAE + vocoder).
        conditioner: `ClapConditioner`.
        noise_schedule: the diffusers scheduler config the UNet was trained with (betas, prediction_type).
        config: `LDMConfig` (default sampler, steps, guidance, lengths).
    """

    backend = BACKEND
    component_names = ("unet", "codec", "conditioner")
    upcast_components = ("codec",)  # VAE + vocoder stay fp32 under fp16/bf16 (AudioLDM PR #42: NaN/silence)

    def __init__(self, unet: Any, codec: Any, conditioner: ClapConditioner, noise_schedule: dict[str, Any],
                 config: LDMConfig | None = None, *, name_or_path: str = ""):
        super().__init__()
        self.unet = unet.eval()
        self.codec = codec.eval()
        self.conditioner = conditioner
        self.noise_schedule = dict(noise_schedule)
        self.config = config or LDMConfig()
        self.name_or_path = name_or_path
        self._check_parts(name_or_path or "LDMPipeline")

    def _check_parts(self, where: str) -> None:
        u = self.unet.config
        if u.in_channels != self.codec.vae.config.latent_channels:
            raise ValueError(f"{where}: the UNet takes {u.in_channels} latent channels but the VAE makes "
                             f"{self.codec.vae.config.latent_channels}; they were not trained together")
        if u.class_embed_type != "simple_projection" or u.projection_class_embeddings_input_dim != self.conditioner.dim:
            raise ValueError(f"{where}: the UNet takes a {u.projection_class_embeddings_input_dim}-d condition "
                             f"(class_embed_type={u.class_embed_type!r}) but the CLAP gives {self.conditioner.dim}-d "
                             "embeddings")
        if self.codec.vae.config.n_mels % self.codec.vae.config.downsample_factor:
            raise ValueError(f"{where}: {self.codec.vae.config.n_mels} mel bins are not divisible by the VAE's "
                             f"factor {self.codec.vae.config.downsample_factor}")

    # ------------------------------------------------------------------------------------ facts

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_s(self) -> float:
        """Seconds per mel frame (hop / sample rate), computed as diffusers does."""
        return self.codec.hop_length / self.codec.sample_rate

    @property
    def vae_factor(self) -> int:
        return self.codec.vae.config.downsample_factor

    @property
    def cross_attention(self) -> bool:
        """The UNet attends to the prompt's token states (else only to the latent, as AudioLDM)."""
        return self.config.cross_attention

    @property
    def min_duration_s(self) -> float:
        """The shortest clip: one latent frame, and no shorter than the CLAP that ranks the outputs takes."""
        frame = self.frame_s * self.vae_factor
        return max(frame, self.conditioner.min_audio_s) if self.conditioner.has_audio_tower else frame

    def latent_frames(self, duration_s: float) -> int:
        """Latent frames for `duration_s` (diffusers: mel frames int(d / frame_s), rounded up to the VAE factor)."""
        height = int(duration_s / self.frame_s)
        if height % self.vae_factor:
            height = int(np.ceil(height / self.vae_factor)) * self.vae_factor
        return max(height, self.vae_factor) // self.vae_factor

    # ------------------------------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        *,
        duration_s: float | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        num_waveforms_per_prompt: int = 1,
        seed: int | list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback: Callable[[int, int], Any] | None = None,
        watermark: bool = True,
        loudness_lufs: float | None = DEFAULT_LOUDNESS_LUFS,
        scheduler: str | None = None,
        audio: Any = None,
        audio_sample_rate: int | None = None,
        strength: float | None = None,
        inpaint: Sequence[tuple[float, float]] | tuple[float, float] | None = None,
        batch_size: int | None = None,
        rerank: bool = True,
    ) -> AudioOutput:
        """Generate audio for `prompt`.

        Args:
            prompt: one prompt or a list.
            duration_s: seconds per clip, in (0, config.max_duration_s] (default: config.duration_s; with
                `audio`: the clip's length). Any length: rounded up to a latent frame (40 ms), then cut.
            num_inference_steps: sampler steps, in [1, 1000] (default: config.num_inference_steps).
            guidance_scale: classifier-free guidance, in [0, 100]; > 1 enables it (default: config's).
            negative_prompt: what to steer away from (one string or one per prompt); default: unconditional.
            num_waveforms_per_prompt: candidates per prompt, in [1, 64]; ranked best first by CLAP when the
                conditioner has an audio tower and `rerank` is True.
            seed: int (outputs get seed, seed+1, ...) or one per output, each in [0, 2**63-1]; default random.
            generator: instead of seed: one torch.Generator, or one per output.
            callback: `callback(step, total)` after each model evaluation; returning False cancels
                (raises `GenerationCancelled`).
            watermark: mark the audio (the base pipeline's last step; see `Pipeline.finish`).
            loudness_lufs: output level in LUFS (integrated, BS.1770), peaks capped at -1 dBFS; None keeps
                the decoder's level (default -16; inpainting/outpainting keep the input clip's level).
            scheduler: sampler name (SCHEDULERS or a class of DIFFUSERS_SAMPLERS); default: config.scheduler.
            audio: a clip to start from (`[C, T]` or `[B, C, T]` array/tensor with `audio_sample_rate`, or a
                file path): audio-to-audio with `strength`, or inpainting/outpainting without it.
            audio_sample_rate: rate of an `audio` array (a file carries its own).
            strength: audio-to-audio noise level in (0, 1] (1 = ignore the clip's content).
            inpaint: spans `(start_s, end_s)` of `audio` to regenerate; frames past the clip's end up to
                `duration_s` are generated too (outpainting); the rest is kept.
            batch_size: outputs per model batch (default: all, up to 64). Does not change the result
                beyond floating-point batching (1e-5).
            rerank: order each prompt's candidates by CLAP score (default True).
        """
        cfg = self.config
        # 1. check inputs --------------------------------------------------------------------------
        prompts, negatives = self.check_prompts(prompt, negative_prompt, num_waveforms_per_prompt)
        if loudness_lufs is not None:
            check_float("loudness_lufs", loudness_lufs, -70.0, 0.0)
        steps = check_int("num_inference_steps", cfg.num_inference_steps if num_inference_steps is None
                          else num_inference_steps, 1, MAX_STEPS)
        guidance = check_float("guidance_scale", cfg.guidance_scale if guidance_scale is None else guidance_scale,
                               0.0, MAX_GUIDANCE)
        if duration_s is not None:
            check_float("duration_s", duration_s, 0.0, cfg.max_duration_s, low_open=True)
            if duration_s < self.min_duration_s:  # before sampling: the decoder and CLAP need this much
                raise ValueError(f"duration_s must be a finite number in [{self.min_duration_s:g}, "
                                 f"{cfg.max_duration_s:g}], got {duration_s!r} (the shortest clip this model makes)")
        sampler_name = scheduler or cfg.scheduler
        make_scheduler(sampler_name, self.noise_schedule)  # an unknown name fails here, before any work
        if batch_size is not None:
            check_int("batch_size", batch_size, 1, 4096)
        n_out = len(prompts) * num_waveforms_per_prompt
        self.conditioner.warn_long_prompts(prompts + [n for n in negatives if n is not None])
        plan = self._plan_audio(audio, audio_sample_rate, strength, inpaint, duration_s, len(prompts))
        duration = plan["duration_s"]
        check_float("duration_s", duration, 0.0, cfg.max_duration_s, low_open=True)
        num_samples = int(duration * self.sample_rate)
        frames = self.latent_frames(duration) if plan["x0"] is None else plan["x0"].shape[2]
        do_cfg = guidance > 1.0

        # 2. one prompt, negative prompt, seed / generator per output ------------------------------
        out_prompts = [p for p in prompts for _ in range(num_waveforms_per_prompt)]
        out_negatives = [n for n in negatives for _ in range(num_waveforms_per_prompt)]
        source = [i for i in range(len(prompts)) for _ in range(num_waveforms_per_prompt)]
        generators, seeds = self.make_generators(n_out, seed, generator)

        # 3. condition: CLAP embeddings [B, D] (+ token states for cross-attention) ----------------
        cond = self.conditioner.embed_prompts(prompts)[source]  # [B, D]
        uncond = self.conditioner.embed_prompts(out_negatives) if do_cfg else None  # [B, D]
        tokens = None
        if self.cross_attention:
            tokens = (self.conditioner.token_states(out_prompts),
                      self.conditioner.token_states(out_negatives) if do_cfg else None)

        # 4. sample the latents, chunk by chunk, and decode them -----------------------------------
        chunk = batch_size or self.max_batch_size
        starts = list(range(0, n_out, chunk))
        shape = (self.unet.config.in_channels, frames, self.codec.vae.config.n_mels // self.vae_factor)
        waves = []
        with Progress(len(starts) * self._num_evaluations(sampler_name, steps, plan["strength"]), callback,
                      enabled=self.progress_bar) as progress:
            for s in starts:
                idx = list(range(s, min(s + chunk, n_out)))
                sampler = make_scheduler(sampler_name, self.noise_schedule)  # fresh state per chunk
                latents = self._sample(
                    sampler, steps, [generators[i] for i in idx], shape, cond[idx],
                    None if uncond is None else uncond[idx], guidance, tokens, idx, progress,
                    x0=None if plan["x0"] is None else plan["x0"][[source[i] for i in idx]],
                    strength=plan["strength"], keep=plan["keep"])
                waves.append(self._decode(latents, num_samples))  # [b, 1, T]
        audios = torch.cat(waves)  # [B, 1, T]
        if plan["paste"] is not None:
            audios = self._paste_back(audios, plan["paste"], [source[i] for i in range(n_out)])

        # 5. CLAP scores; candidates of each prompt ordered best first -----------------------------
        scores = None
        if self.conditioner.has_audio_tower:
            scores = self.conditioner.score(out_prompts, audios, self.sample_rate).tolist()
            if rerank and num_waveforms_per_prompt > 1:
                order = []
                for p in range(len(prompts)):
                    group = list(range(p * num_waveforms_per_prompt, (p + 1) * num_waveforms_per_prompt))
                    order += sorted(group, key=lambda i: -scores[i])
                audios, seeds = audios[order], [seeds[i] for i in order]
                scores = [scores[i] for i in order]
        elif num_waveforms_per_prompt > 1 and rerank:
            log.info("this CLAP has no audio tower (text-only, AudioLDM); candidates are not re-ranked")

        # 6. finish: float32 CPU audio, watermark last ---------------------------------------------
        # inpainting / outpainting keep the input clip sample-exact, so they keep its level too
        audios, level = self.normalize_loudness(audios, None if plan["paste"] is not None else loudness_lufs)
        audios, watermarked = self.finish(audios, watermark=watermark)
        parameters = {
            "backend": BACKEND, "model": self.name_or_path, "mode": plan["mode"], "scheduler": sampler_name,
            "num_inference_steps": steps, "guidance_scale": guidance, "negative_prompt": negative_prompt,
            "duration_s": duration, "num_waveforms_per_prompt": num_waveforms_per_prompt,
            "strength": plan["strength"], "inpaint": plan["spans"], "audio": plan["audio_name"],
            "latent_frames": frames, "windowed": frames > self._window_frames(),
            "vocoder": self.codec.vocoder.spec(),
            "device": str(self.device), "dtype": DTYPE_NAMES[self.dtype], "watermark": watermark,
            **level, **self.watermark_record(watermarked), "soundsmith_version": __version__,
        }
        return AudioOutput(audios, self.sample_rate, out_prompts, seeds, scores, parameters)

    # --------------------------------------------------------------------------------- sampling

    def _sample(self, sampler: Any, steps: int, generators: list[torch.Generator], shape: tuple[int, ...],
                cond: Tensor, uncond: Tensor | None, guidance: float, tokens: Any, idx: list[int],
                progress: Progress, *, x0: Tensor | None, strength: float | None, keep: Tensor | None) -> Tensor:
        """The denoising loop for one chunk of outputs -> scaled latents `[b, C, S, F']` float32."""
        device, do_cfg = self.device, uncond is not None
        sampler.set_timesteps(steps, device=device)
        timesteps = sampler.timesteps
        noise = self.randn(shape, generators, device)  # [b, C, S, F'], item i from generator i
        if strength is not None:  # audio-to-audio (SDEdit): start part-way, from the clip's noised latent
            start = max(steps - min(int(steps * strength), steps), 0) * sampler.order
            timesteps = timesteps[start:]
            if hasattr(sampler, "set_begin_index"):
                sampler.set_begin_index(start)
            latents = sampler.add_noise(x0.to(device), noise, timesteps[:1].repeat(noise.shape[0]))
        else:
            latents = noise * sampler.init_noise_sigma
        if keep is not None:
            keep, x0 = keep.to(device), x0.to(device)  # keep: [1, 1, S, 1], 1 where the clip is kept

        class_labels = torch.cat([uncond, cond]) if do_cfg else cond  # [2b or b, D]
        class_labels = class_labels.to(device, self.unet.dtype)
        states = mask = None
        if tokens is not None:
            states, mask = _pair_tokens(tokens, idx, do_cfg)
            states, mask = states.to(device, self.unet.dtype), mask.to(device)
        step_kwargs = {}
        if "generator" in inspect.signature(sampler.step).parameters:
            step_kwargs["generator"] = generators[0] if all(g is generators[0] for g in generators) else generators
        for i, t in enumerate(timesteps):
            model_in = sampler.scale_model_input(self.cfg_batch(latents, do_cfg), t)
            pred = self._predict(model_in, t, class_labels, states, mask)  # [2b or b, C, S, F']
            pred = self.cfg_combine(pred, guidance, do_cfg)
            latents = sampler.step(pred, t, latents, **step_kwargs).prev_sample
            if keep is not None:  # inpainting: the kept frames follow the clip, noised to the next level
                known = x0 if i == len(timesteps) - 1 else sampler.add_noise(x0, noise, timesteps[i + 1:i + 2])
                latents = keep * known + (1 - keep) * latents
            progress.step()
        return latents.float()

    def _num_evaluations(self, sampler_name: str, steps: int, strength: float | None) -> int:
        probe = make_scheduler(sampler_name, self.noise_schedule)
        probe.set_timesteps(steps)
        total = len(probe.timesteps)
        if strength is not None:
            total -= max(steps - min(int(steps * strength), steps), 0) * probe.order
        return total

    def _window_frames(self) -> int:
        return max(1, round(self.config.window_s / (self.frame_s * self.vae_factor)))

    def _predict(self, x: Tensor, t: Tensor, class_labels: Tensor, states: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        """UNet prediction for `[N, C, S, F']`; past the training window, blended over overlapping windows."""
        window = self._window_frames()
        if x.shape[2] <= window:
            return self._unet(x, t, class_labels, states, mask)
        overlap = round(self.config.window_overlap_s / (self.frame_s * self.vae_factor))
        total = torch.zeros_like(x, dtype=torch.float32)
        weight = torch.zeros(x.shape[2], device=x.device)
        ramp = _ramp(window, overlap, x.device)  # [W]
        for s in overlapping_windows(x.shape[2], window, overlap):
            pred = self._unet(x[:, :, s:s + window], t, class_labels, states, mask)
            total[:, :, s:s + window] += pred * ramp[:, None]
            weight[s:s + window] += ramp
        return total / weight[:, None]

    def _unet(self, x: Tensor, t: Tensor, class_labels: Tensor, states: Tensor | None, mask: Tensor | None) -> Tensor:
        out = self.unet(x.to(self.unet.dtype), t, encoder_hidden_states=states, class_labels=class_labels,
                        encoder_attention_mask=mask).sample
        return out.float()

    def _decode(self, latents: Tensor, num_samples: int) -> Tensor:
        """Scaled latents `[b, C, S, F']` -> wave `[b, 1, num_samples]` (VAE in windows past the window)."""
        codec, window = self.codec, self._window_frames()
        latents = latents.to(torch.float32)
        if latents.shape[2] <= window:
            return codec.decode(latents, num_samples=num_samples)
        overlap = max(1, round(self.config.window_overlap_s / (self.frame_s * self.vae_factor)))
        f = self.vae_factor
        mel = None
        weight = torch.zeros(latents.shape[2] * f, device=latents.device)
        ramp = _ramp(window * f, overlap * f, latents.device)
        for s in overlapping_windows(latents.shape[2], window, overlap):
            part = codec.vae.decode(latents[:, :, s:s + window] / codec.scaling_factor)  # [b, F, W * f]
            if mel is None:
                mel = torch.zeros(part.shape[0], part.shape[1], latents.shape[2] * f, device=latents.device)
            mel[:, :, s * f:(s + window) * f] += part * ramp
            weight[s * f:(s + window) * f] += ramp
        wave = codec.mel_to_wave(mel / weight)  # [b, 1, T]
        return wave[..., :num_samples]

    # ----------------------------------------------------------------------------- audio inputs

    def _plan_audio(self, audio: Any, audio_sample_rate: int | None, strength: float | None,
                    inpaint: Any, duration_s: float | None, num_prompts: int) -> dict[str, Any]:
        """Check the audio-conditioning arguments; encode the clip. Returns the mode and its tensors."""
        plan = {"mode": "text-to-audio", "x0": None, "strength": None, "keep": None, "paste": None,
                "spans": None, "audio_name": None,
                "duration_s": self.config.duration_s if duration_s is None else duration_s}
        if audio is None:
            if strength is not None or inpaint is not None:
                raise ValueError("strength and inpaint need an input clip: pass audio=")
            return plan
        wave, name = self._read_clip(audio, audio_sample_rate)  # [Ba, 1, T] at our rate
        if wave.shape[0] not in (1, num_prompts):
            raise ValueError(f"audio holds {wave.shape[0]} clips for {num_prompts} prompts; give one clip or one "
                             "per prompt")
        if wave.shape[0] == 1 and num_prompts > 1:
            wave = wave.expand(num_prompts, -1, -1)
        clip_s = wave.shape[-1] / self.sample_rate
        plan["audio_name"] = name
        if strength is not None:  # audio-to-audio
            if inpaint is not None:
                raise ValueError("give strength (audio-to-audio) or inpaint (regenerate spans), not both")
            check_float("strength", strength, 0.0, 1.0, low_open=True)
            if duration_s is not None and abs(duration_s - clip_s) > 1e-3:
                raise ValueError(f"audio-to-audio keeps the clip's length ({clip_s:.3f} s); leave duration_s unset "
                                 f"(got {duration_s})")
            plan.update(mode="audio-to-audio", strength=float(strength), duration_s=clip_s,
                        x0=self.codec.encode(wave.to(self.device), self.sample_rate).float())
            return plan
        # inpainting / outpainting: keep the clip except the spans and whatever lies past its end
        total_s = clip_s if duration_s is None else float(duration_s)
        spans = _check_spans(inpaint, total_s)
        if total_s < clip_s:
            raise ValueError(f"duration_s must be >= the clip's {clip_s:.3f} s when extending it, got {total_s}")
        if not spans and total_s - clip_s < self.frame_s * self.vae_factor:
            raise ValueError("nothing to regenerate: give strength= (audio-to-audio), inpaint=[(start_s, end_s)] "
                             f"spans, or a duration_s past the clip's {clip_s:.3f} s (outpainting)")
        frames = self.latent_frames(total_s)
        padded = F.pad(wave, (0, frames * self.codec.samples_per_latent_frame - wave.shape[-1]))
        x0 = self.codec.encode(padded.to(self.device), self.sample_rate).float()[:, :, :frames]
        frame_s = self.frame_s * self.vae_factor
        keep = torch.ones(frames)
        keep[int(clip_s / frame_s):] = 0  # past the clip's end (its last partial frame included)
        for a, b in spans:
            keep[int(math.floor(a / frame_s)):int(math.ceil(b / frame_s))] = 0
        mode = "inpaint" if spans else "outpaint"
        if spans and total_s - clip_s >= frame_s:
            mode = "inpaint+outpaint"
        plan.update(mode=mode, x0=x0, keep=keep.view(1, 1, -1, 1), spans=[list(s) for s in spans],
                    duration_s=total_s, paste=(wave, keep))
        return plan

    def _read_clip(self, audio: Any, sample_rate: int | None) -> tuple[Tensor, str | None]:
        from soundsmith.codecs.audio import check_wave, read_audio, resample

        if isinstance(audio, (str, os.PathLike)):
            wave, sr = read_audio(audio, sample_rate=self.sample_rate, channels=1)
            return torch.from_numpy(wave)[None], str(audio)
        if sample_rate is None:
            raise ValueError("audio_sample_rate is required with an audio array (or pass a file path)")
        if not hasattr(audio, "ndim"):
            raise ValueError(f"audio must be a file path, numpy array or torch tensor, got {type(audio).__name__}")
        check_wave(audio, "audio")
        wave = audio if isinstance(audio, Tensor) else torch.from_numpy(np.ascontiguousarray(audio, np.float32))
        wave = wave.float().cpu()
        if wave.dim() == 2:
            wave = wave[None]
        wave = resample(wave.mean(1, keepdim=True), int(sample_rate), self.sample_rate)  # [B, 1, T]
        if wave.shape[-1] < self.codec.samples_per_latent_frame:
            raise ValueError(f"audio is too short: need at least {self.frame_s * self.vae_factor:.3f} s")
        return wave, None

    def _paste_back(self, audios: Tensor, paste: tuple[Tensor, Tensor], source: list[int]) -> Tensor:
        """Put the input clip back where it was kept, with a one-latent-frame fade into the generated spans."""
        wave, keep = paste  # [P, 1, Tc], [S] (1 = kept)
        step = self.codec.samples_per_latent_frame
        total = audios.shape[-1]
        kept = keep.repeat_interleave(step)[:total].numpy() > 0.5  # per sample
        kept[wave.shape[-1]:] = False
        from scipy.ndimage import distance_transform_edt

        # generated weight: 0 on kept samples, rising linearly over `step` samples into each generated span
        gen = np.clip(distance_transform_edt(~kept) / step, 0.0, 1.0) if kept.any() else np.ones(total)
        g = torch.from_numpy(gen.astype(np.float32))  # [T]
        original = F.pad(wave, (0, max(0, total - wave.shape[-1])))[..., :total][source]  # [B, 1, T]
        return g * audios + (1 - g) * original.to(audios.device)

    # --------------------------------------------------------------------------------- folders

    def save_pretrained(self, path: str | os.PathLike, *, dtype: str | torch.dtype | None = None) -> Path:
        """Write our layout: config.json ("backend": "ldm", "vocoder": its spec) + unet/ vae/ clap/ scheduler/,
        plus vocoder/ for a trained HiFi-GAN or hifigan-universal-adapter/ for the universal one.

        unet/ and vae/ are diffusers folders, vocoder/ a transformers SpeechT5HifiGan folder, so those
        libraries load the parts as they are. `dtype` ("fp16" for shipping) casts the saved weights.
        """
        from soundsmith.codecs.mel_codec import save_vocoder_files
        from soundsmith.core.files import write_json
        from soundsmith.core.weights import save_safetensors

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        dt = torch.float32 if dtype is None else resolve_dtype(dtype)
        for name, model in (("unet", self.unet), ("vae", self.codec.vae.autoencoder)):  # diffusers' layout
            (folder / name).mkdir(exist_ok=True)
            model.save_config(str(folder / name))
            save_safetensors({k: v.to(dt) for k, v in model.state_dict().items()},
                             folder / name / "diffusion_pytorch_model.safetensors")
        voc = self.codec.vocoder
        if voc.name == "hifigan":  # a transformers SpeechT5HifiGan folder, as AudioLDM publishes it
            (folder / "vocoder").mkdir(exist_ok=True)
            voc.config.to_transformers().save_pretrained(str(folder / "vocoder"))
            save_safetensors({k: v.to(dt) for k, v in voc.plain_state_dict().items()},
                             folder / "vocoder" / "model.safetensors")
        else:
            save_vocoder_files(voc, folder, dtype=dt)
        self.conditioner.save_pretrained(folder / "clap", dtype=dt)
        make_scheduler(self.config.scheduler, self.noise_schedule).save_pretrained(str(folder / "scheduler"))
        _merge_json(folder / "scheduler" / "scheduler_config.json", self.noise_schedule)
        config = dataclasses.replace(self.config, components=LDMConfig().components,
                                     mel=self.codec.vae.config.mel.to_dict(), vocoder=voc.spec())
        write_json(folder / "config.json", {"backend": BACKEND, "_class_name": type(self).__name__,
                                            "soundsmith_version": __version__, **config.to_dict()})
        return folder

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "fp32", vocoder: str | dict[str, Any] | None = None) -> LDMPipeline:
        """Load our folder or a diffusers AudioLDM / MusicLDM folder, then move it to `device` / `dtype`.

        `vocoder`: a registry name or spec (codecs/vocoders.py) that replaces the folder's own, e.g.
        "hifigan-universal"; default: the one the folder's config.json names.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder not found: {folder}")
        resolve_device(device), resolve_dtype(dtype)  # fail on a bad argument before loading anything
        if vocoder is not None:
            from soundsmith.codecs.vocoders import VOCODERS

            name = vocoder if isinstance(vocoder, str) else vocoder.get("name")
            if name not in VOCODERS:
                raise ValueError(f"vocoder must be one of {', '.join(VOCODERS)}, got {name!r}")
        if (folder / "model_index.json").is_file() and not (folder / "config.json").is_file():
            pipe = _load_diffusers(folder, vocoder)
        else:
            pipe = _load_ours(folder, vocoder)
        return pipe.to(device, dtype)


# -------------------------------------------------------------------------------------------- loading


def _load_ours(folder: Path, vocoder: str | dict[str, Any] | None = None) -> LDMPipeline:
    from diffusers import UNet2DConditionModel
    from soundsmith.codecs.mel import MelConfig
    from soundsmith.codecs.mel_codec import MelLatentCodec
    from soundsmith.codecs.vocoders import check_spec_paths
    from soundsmith.core.paths import model_link, models_tree

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder: it has no config.json (nor model_index.json)")
    raw = read_json_object(config_path)
    if raw.get("backend") != BACKEND:
        raise ValueError(f"{config_path}: backend is {raw.get('backend')!r}, not {BACKEND!r}")
    config = LDMConfig.from_dict(raw, str(config_path))
    # parts live in the folder or beside it (the shipped ../mel-codec/vae, ../clap); nowhere else
    tree = models_tree(folder)
    parts = {name: model_link(rel, folder, where=str(config_path), what=f"part {name!r}")
             for name, rel in config.components.items()}
    for name in ("unet", "vae", "clap", "scheduler"):
        if name not in parts or not parts[name].is_dir():
            raise FileNotFoundError(f"{config_path}: part {name!r} not found at {parts.get(name, folder / name)}")
    spec = vocoder if vocoder is not None else config.vocoder
    if vocoder is None:  # the recorded spec's files must stay in the tree too (a caller's own spec is theirs)
        check_spec_paths(spec, parts["vae"].parent, tree, where=f"{config_path} 'vocoder'")
    if spec is None:  # written before the vocoder registry: a trained HiFi-GAN folder among the parts
        if "vocoder" not in parts:
            raise ValueError(f"{config_path}: names no vocoder (a 'vocoder' spec such as "
                             "{\"name\": \"griffin-lim\"}, or components.vocoder)")
        spec = {"name": "hifigan", "path": str(parts["vocoder"])}
        if not parts["vocoder"].is_dir():
            raise FileNotFoundError(f"{config_path}: part 'vocoder' not found at {parts['vocoder']}")
    try:
        unet = UNet2DConditionModel.from_pretrained(str(parts["unet"]), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{parts['unet']}: not a readable diffusers UNet ({' '.join(str(err).split())[:200]})") from None
    mel = None if config.mel is None else config_from_dict(MelConfig, config.mel, f"{config_path} 'mel'")
    codec = MelLatentCodec.from_parts(parts["vae"], spec, base_dir=parts["vae"].parent, mel=mel)
    conditioner = ClapConditioner.from_pretrained(parts["clap"], null_condition=config.null_condition)
    schedule = read_json_object(parts["scheduler"] / "scheduler_config.json")
    config = dataclasses.replace(config, vocoder=codec.vocoder.spec())
    pipe = LDMPipeline(unet, codec, conditioner, schedule, config, name_or_path=str(folder))
    _check_fingerprints(pipe, config_path)
    return pipe


def _check_fingerprints(pipe: LDMPipeline, where: Path) -> None:
    """Refuse a VAE or CLAP other than the ones the UNet was trained against (config "trained_with")."""
    found = {"vae": lambda: weights_fingerprint(pipe.codec.vae), "clap": pipe.conditioner.fingerprint}
    for part, expected in pipe.config.trained_with.items():
        if part in found and found[part]() != expected:
            raise ValueError(f"{where}: the {part} in this folder is not the one the UNet was trained with "
                             f"(fingerprint {found[part]()} != {expected}); retrain the UNet or restore the {part}")


def _load_diffusers(folder: Path, vocoder: str | dict[str, Any] | None = None) -> LDMPipeline:
    """A diffusers AudioLDMPipeline / MusicLDMPipeline folder, loaded part by part."""
    from diffusers import UNet2DConditionModel
    from soundsmith.codecs.mel_codec import MelLatentCodec
    from transformers import AutoTokenizer

    index = read_json_object(folder / "model_index.json")
    kind = index.get("_class_name")
    if kind not in DIFFUSERS_PIPELINES:
        raise ValueError(f"{folder / 'model_index.json'}: _class_name={kind!r} is not one of "
                         f"{', '.join(DIFFUSERS_PIPELINES)}")
    for part in ("unet", "vae", "vocoder", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / part).is_dir():
            raise FileNotFoundError(f"{folder}: the {kind} part {part!r} is missing")
    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), local_files_only=True)
    codec = MelLatentCodec.from_pretrained(folder, vocoder=vocoder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    encoder_class = (index.get("text_encoder") or [None, None])[1]
    if encoder_class == "ClapModel":
        from soundsmith.gen.clap import TransformersClap
        from transformers import ClapFeatureExtractor, ClapModel

        model = ClapModel.from_pretrained(str(folder / "text_encoder"), local_files_only=True)
        fe_dir = folder / "feature_extractor"
        fe = ClapFeatureExtractor.from_pretrained(str(fe_dir)) if fe_dir.is_dir() else ClapFeatureExtractor()
        conditioner = ClapConditioner(TransformersClap(model, fe, tokenizer, source=str(folder)),
                                      null_condition="empty_text")
    else:
        from transformers import ClapTextModelWithProjection

        model = ClapTextModelWithProjection.from_pretrained(str(folder / "text_encoder"), local_files_only=True)
        conditioner = ClapConditioner(model.eval(), tokenizer=tokenizer, null_condition="empty_text")
    schedule = read_json_object(folder / "scheduler" / "scheduler_config.json")
    config = audioldm_config(kind, unet, codec, schedule, source=f"diffusers:{kind}")
    return LDMPipeline(unet, codec, conditioner, schedule, config, name_or_path=str(folder))


def audioldm_config(kind: str, unet: Any, codec: Any, schedule: dict[str, Any], source: str) -> LDMConfig:
    """Pipeline settings for an AudioLDM / MusicLDM model: diffusers' defaults for these pipelines, the
    default length unet.sample_size * 4 * hop / rate as diffusers computes it, windows of the 10.24 s
    both were trained on, and the CLAP embedding of "" as the unconditional embedding."""
    frame_s = codec.hop_length / codec.sample_rate
    default_s = unet.config.sample_size * codec.vae.config.downsample_factor * frame_s
    music = kind == "MusicLDMPipeline"
    return LDMConfig(
        scheduler=scheduler_name(schedule.get("_class_name", "DDIMScheduler")),
        num_inference_steps=200 if music else 10, guidance_scale=2.0 if music else 2.5,
        duration_s=round(default_s, 6), window_s=10.24, window_overlap_s=2.56, max_duration_s=600.0,
        null_condition="empty_text", mel=codec.vae.config.mel.to_dict(), vocoder=codec.vocoder.spec(), source=source,
    )


# ------------------------------------------------------------------------------------------- helpers


def overlapping_windows(length: int, window: int, overlap: int) -> list[int]:
    """Starts of the fewest `window`-long windows covering `length` with at least `overlap` in common."""
    if length <= window:
        return [0]
    count = math.ceil((length - overlap) / max(1, window - overlap))
    return sorted({int(round(s)) for s in np.linspace(0, length - window, count)})


def _ramp(window: int, overlap: int, device: torch.device) -> Tensor:
    """Blend weights `[window]`: rising over `overlap` positions at each end, 1 in between, never 0."""
    pos = torch.arange(window, device=device, dtype=torch.float32)
    rise = torch.clamp((torch.minimum(pos, window - 1 - pos) + 1) / (overlap + 1), max=1.0)
    return rise


def _pair_tokens(tokens: Any, idx: list[int], do_cfg: bool) -> tuple[Tensor, Tensor]:
    """(cond, uncond) token states of the chunk -> one CFG batch [uncond, cond], padded to one length."""
    (cs, cm), unc = tokens
    cs, cm = cs[idx], cm[idx]
    if not do_cfg:
        return cs, cm
    us, um = unc[0][idx], unc[1][idx]
    length = max(cs.shape[1], us.shape[1])
    pad = lambda x, m: (F.pad(x, (0, 0, 0, length - x.shape[1])), F.pad(m, (0, length - m.shape[1])))  # noqa: E731
    (us, um), (cs, cm) = pad(us, um), pad(cs, cm)
    return torch.cat([us, cs]), torch.cat([um, cm])


def _check_spans(inpaint: Any, total_s: float) -> list[tuple[float, float]]:
    if inpaint is None:
        return []
    spans = [inpaint] if len(inpaint) == 2 and all(isinstance(v, (int, float)) for v in inpaint) else list(inpaint)
    out = []
    for span in spans:
        if len(span) != 2:
            raise ValueError(f"inpaint spans must be (start_s, end_s) pairs, got {span!r}")
        a, b = float(span[0]), float(span[1])
        if not (math.isfinite(a) and math.isfinite(b) and 0 <= a < b <= total_s):
            raise ValueError(f"inpaint span ({a}, {b}) must satisfy 0 <= start_s < end_s <= {total_s:.3f} s")
        out.append((a, b))
    return out


def _merge_json(path: Path, values: dict[str, Any]) -> None:
    data = read_json_object(path)
    data.update({k: v for k, v in values.items() if not k.startswith("_")})
    write_json(path, data)

