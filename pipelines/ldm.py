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

The pieces live in soundsmith.gen: the conditioners (conditioners.py), the samplers (schedulers.py), the
windows (windows.py) and the input-clip edits (latent_edits.py); this file is the loop that joins them.

Folders: ours (`config.json` with "backend": "ldm" and "vocoder": a registry spec such as
{"name": "griffin-lim", "n_iter": 32}, sub-folders unet/ (diffusers), vae/ (diffusers AutoencoderKL),
clap/, scheduler/, and vocoder/ (transformers SpeechT5HifiGan) only for a trained HiFi-GAN), or a
diffusers AudioLDM / MusicLDM folder (`model_index.json`, decoded by its own HiFi-GAN unless
`vocoder=` names another). Paths in the vocoder spec are relative to the folder holding the VAE.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from soundsmith.codecs.audio import DEFAULT_LOUDNESS_LUFS
from soundsmith.core.checks import check_float, check_int
from soundsmith.core.files import read_json_object, write_json
from soundsmith.core.runtime import resolve_dtype
from soundsmith.core.weights import config_from_dict, weights_fingerprint
from soundsmith.gen import schedulers
from soundsmith.gen.conditioners import ClapConditioner, cfg_token_states
from soundsmith.gen.latent_edits import LatentEdit, paste_back, plan_edit
from soundsmith.gen.tempo import TempoConditioner, TempoReader
from soundsmith.gen.windows import blend_windows
from torch import Tensor

from .base import CONFIG_METADATA, AudioOutput, Pipeline, Progress

log = logging.getLogger(__name__)

BACKEND = "ldm"
DIFFUSERS_PIPELINES = ("AudioLDMPipeline", "MusicLDMPipeline")
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0
MAX_TEMPO_SCALE = 20.0
SCHEDULERS = schedulers.SCHEDULERS  # the sampler names (the app lists a backend module's SCHEDULERS)


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class LDMConfig:
    """Pipeline-level settings saved in the model folder's config.json (the parts have their own)."""

    scheduler: str = "dpmsolver++"  # default sampler (SCHEDULERS, or a class of DIFFUSERS_SAMPLERS)
    num_inference_steps: int = 16  # default steps: 5 s in <= 2 s on a 2-core CPU with the default UNet
    guidance_scale: float = 3.0  # default CFG scale (> 1 enables guidance)
    # share of the sampler steps, from the first, that run guidance; the later (low-noise) steps predict from the
    # prompt alone, one UNet batch instead of two (diffusers' SDCFGCutoffCallback cutoff_step_ratio; Kynkaanniemi
    # et al. 2024 found guidance at low noise adds little). 1.0: every step guided
    guidance_cutoff: float = 1.0
    duration_s: float = 5.0  # default length
    window_s: float = 5.12  # the UNet's training crop; longer audio is denoised in overlapping windows
    window_overlap_s: float = 1.28  # overlap of those windows (and of the VAE's decode windows)
    max_duration_s: float = 120.0  # memory-safe maximum this model declares (windowed, so memory is flat)
    null_condition: str = "zeros"  # unconditional embedding: "zeros" (ours: condition dropout to 0) or
    #                                "empty_text" (AudioLDM/MusicLDM: the CLAP embedding of "")
    cross_attention: bool = False  # the UNet attends to the prompt's token states (UNetConfig.cross_attention)
    # a tempo-conditioned UNet (a `tempo` part, gen/tempo.py): the default scale of the prompt's tempo features
    tempo_scale: float = 1.0
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
        check_float("tempo_scale", self.tempo_scale, 0.0, MAX_TEMPO_SCALE)
        check_float("guidance_cutoff", self.guidance_cutoff, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config.json") -> LDMConfig:
        return config_from_dict(cls, data, where, ignore=CONFIG_METADATA, wrap_errors=True)


# ------------------------------------------------------------------------------------------- pipeline


class LDMPipeline(Pipeline):
    """Latent-diffusion text-to-audio (AudioLDM layout). Build with `from_pretrained`, or from parts:

    Args:
        unet: diffusers `UNet2DConditionModel` (class_embed_type="simple_projection", concat).
        codec: `MelLatentCodec` (mel VAE + vocoder).
        conditioner: a `ClapConditioner` (soundsmith.gen.conditioners).
        noise_schedule: the diffusers scheduler config the UNet was trained with (betas, prediction_type).
        config: `LDMConfig` (default sampler, steps, guidance, lengths).
    """

    backend = BACKEND
    component_names = ("unet", "codec", "conditioner")
    upcast_components = ("codec",)  # VAE + vocoder stay fp32 under fp16/bf16 (AudioLDM PR #42: NaN/silence)
    adapter_components = {"unet": "unet"}  # LoRA adapters adapt the UNet (pipelines/adapters.py)

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
            height = -(-height // self.vae_factor) * self.vae_factor
        return max(height, self.vae_factor) // self.vae_factor

    def _window_frames(self) -> int:
        return max(1, round(self.config.window_s / (self.frame_s * self.vae_factor)))

    # ------------------------------------------------------------------------------------- call

    def check_inputs(self, prompt: str | list[str], negative_prompt: str | list[str] | None,
                     num_waveforms_per_prompt: int, duration_s: float | None, num_inference_steps: int | None,
                     guidance_scale: float | None, scheduler: str | None, loudness_lufs: float | None, audio: Any,
                     strength: float | None, inpaint: Any, batch_size: int | None, tempo_scale: float | None = None,
                     guidance_cutoff: float | None = None
                     ) -> tuple[list[str], list[str | None], int, float, str, Any, float]:
        """Check the call's arguments before any work (the input clip itself is checked as it is read).

        Returns (prompts, one negative prompt or None per prompt, steps, guidance scale, sampler name, the
        sampler: built once per call, each chunk of outputs samples with a fresh copy of it, guidance cutoff).
        """
        cfg = self.config
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
        sampler = schedulers.make_scheduler(sampler_name, self.noise_schedule)
        if batch_size is not None:
            check_int("batch_size", batch_size, 1, 4096)
        if audio is None and (strength is not None or inpaint is not None):
            raise ValueError("strength and inpaint need an input clip: pass audio=")
        if strength is not None:
            if inpaint is not None:
                raise ValueError("give strength (audio-to-audio) or inpaint (regenerate spans), not both")
            check_float("strength", strength, 0.0, 1.0, low_open=True)
        if tempo_scale is not None:
            if not isinstance(self.conditioner, TempoConditioner):
                raise ValueError(f"tempo_scale applies to tempo-conditioned models (a 'tempo' part); "
                                 f"{self.name_or_path or 'this model'} has none")
            check_float("tempo_scale", tempo_scale, 0.0, MAX_TEMPO_SCALE)
        cutoff = cfg.guidance_cutoff if guidance_cutoff is None else check_float(
            "guidance_cutoff", guidance_cutoff, 0.0, 1.0)
        return prompts, negatives, steps, guidance, sampler_name, sampler, cutoff

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
        clap_score: bool = False,
        tempo_scale: float | None = None,
        guidance_cutoff: float | None = None,
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
            scheduler: sampler name (SCHEDULERS or a class of DIFFUSERS_SAMPLERS, soundsmith.gen.schedulers);
                default: config.scheduler.
            audio: a clip to start from (`[C, T]` or `[B, C, T]` array/tensor with `audio_sample_rate`, or a
                file path): audio-to-audio with `strength`, or inpainting/outpainting without it.
            audio_sample_rate: rate of an `audio` array (a file carries its own).
            strength: audio-to-audio noise level in (0, 1] (1 = ignore the clip's content).
            inpaint: spans `(start_s, end_s)` of `audio` to regenerate; frames past the clip's end up to
                `duration_s` are generated too (outpainting); the rest is kept.
            batch_size: outputs per model batch (default: all, up to 64). Does not change the result
                beyond floating-point batching (1e-5).
            rerank: order each prompt's candidates by CLAP score (default True).
            clap_score: give each output's CLAP score with its prompt (`clap_scores`, the sidecar's
                `clap_score`) even when nothing is re-ranked (default False: one output per prompt is not scored).
            tempo_scale: for a tempo-conditioned model, how strongly the tempo the prompt asks for is followed,
                in [0, 20] (default: config.tempo_scale; 0 ignores it). Others refuse it.
            guidance_cutoff: share of the steps, from the first, that run guidance, in [0, 1] (default:
                config.guidance_cutoff); the rest predict from the prompt alone at half the UNet cost.
        """
        cfg = self.config
        # 1. check inputs; read and encode the input clip ------------------------------------------
        prompts, negatives, steps, guidance, sampler_name, sampler, cutoff = self.check_inputs(
            prompt, negative_prompt, num_waveforms_per_prompt, duration_s, num_inference_steps, guidance_scale,
            scheduler, loudness_lufs, audio, strength, inpaint, batch_size, tempo_scale, guidance_cutoff)
        self.conditioner.warn_long_prompts(prompts + [n for n in negatives if n is not None])
        clip, clip_name = (None, None) if audio is None else self._read_clip(audio, audio_sample_rate, len(prompts))
        edit = plan_edit(self.codec, clip, duration_s=duration_s, default_s=cfg.duration_s, strength=strength,
                         inpaint=inpaint, frame_s=self.frame_s * self.vae_factor, latent_frames=self.latent_frames,
                         device=self.device)
        duration = edit.duration_s
        check_float("duration_s", duration, 0.0, cfg.max_duration_s, low_open=True)
        num_samples = int(duration * self.sample_rate)
        frames = self.latent_frames(duration) if edit.x0 is None else edit.x0.shape[2]
        do_cfg = guidance > 1.0

        # 2. one prompt, negative prompt, seed / generator per output ------------------------------
        n_out = len(prompts) * num_waveforms_per_prompt
        out_prompts, out_negatives, source = self.per_output(prompts, negatives, num_waveforms_per_prompt)
        generators, seeds = self.make_generators(n_out, seed, generator)

        # 3. condition: CLAP embeddings [B, D] (+ token states for cross-attention) ----------------
        tempo_kw = {} if not isinstance(self.conditioner, TempoConditioner) else {
            "tempo_scale": cfg.tempo_scale if tempo_scale is None else tempo_scale}
        cond = self.conditioner.embed_prompts(prompts, **tempo_kw)[source]  # [B, D]
        uncond = self.conditioner.embed_prompts(out_negatives, **tempo_kw) if do_cfg else None  # [B, D]
        tokens = None
        if self.cross_attention:
            tokens = (self.conditioner.token_states(out_prompts),
                      self.conditioner.token_states(out_negatives) if do_cfg else None)

        # 4. sample the latents, chunk by chunk, and decode them -----------------------------------
        chunks = self.chunks(n_out, batch_size)
        shape = (self.unet.config.in_channels, frames, self.codec.vae.config.n_mels // self.vae_factor)
        waves = []
        total = len(chunks) * schedulers.num_evaluations(schedulers.fresh(sampler), steps, edit.strength)
        with Progress(total, callback, enabled=self.progress_bar) as progress:
            for idx in chunks:
                latents = self._sample(schedulers.fresh(sampler), steps, [generators[i] for i in idx], shape,
                                       cond[idx], None if uncond is None else uncond[idx], guidance, tokens, idx,
                                       progress, edit, [source[i] for i in idx], cutoff)
                waves.append(self._decode(latents, num_samples))  # [b, 1, T]
        audios = torch.cat(waves)  # [B, 1, T]
        if edit.keep is not None:  # the kept audio, sample-exact
            audios = paste_back(audios, edit.clip, edit.keep, self.codec.samples_per_latent_frame, source)

        # 5. CLAP scores; candidates of each prompt ordered best first -----------------------------
        audios, seeds, scores = self.rank_by_clap(self.conditioner, audios, out_prompts, seeds,
                                                  num_waveforms_per_prompt, rerank,
                                                  clap_score)

        # 6. finish: float32 CPU audio, watermark last ---------------------------------------------
        # inpainting / outpainting keep the input clip sample-exact, so they keep its level too
        audios, level = self.normalize_loudness(audios, None if edit.keep is not None else loudness_lufs)
        audios, watermarked = self.finish(audios, watermark=watermark)
        parameters = {
            "backend": BACKEND, "model": self.name_or_path, "mode": edit.mode, "scheduler": sampler_name,
            "num_inference_steps": steps, "guidance_scale": guidance, "guidance_cutoff": cutoff,
            "negative_prompt": negative_prompt,
            "duration_s": duration, "num_waveforms_per_prompt": num_waveforms_per_prompt,
            "strength": edit.strength, "inpaint": edit.spans, "audio": clip_name,
            "latent_frames": frames, "windowed": frames > self._window_frames(),
            "vocoder": self.codec.vocoder.spec(), **self.run_record(watermark, level, watermarked),
        }
        if tempo_kw:  # the tempo each output's prompt was read to ask for, and its scale
            parameters["tempo_bpm"] = self.conditioner.read_tempo(out_prompts)
            parameters["tempo_scale"] = tempo_kw["tempo_scale"]
        return AudioOutput(audios, self.sample_rate, out_prompts, seeds, scores, parameters)

    # --------------------------------------------------------------------------------- sampling

    def _sample(self, sampler: Any, steps: int, generators: list[torch.Generator], shape: tuple[int, ...],
                cond: Tensor, uncond: Tensor | None, guidance: float, tokens: Any, idx: list[int],
                progress: Progress, edit: LatentEdit, clips: list[int], guidance_cutoff: float = 1.0) -> Tensor:
        """The denoising loop for one chunk of outputs (output i edits clip `clips[i]`) -> scaled latents
        `[b, C, S, F']` float32; guidance runs on the first `guidance_cutoff` share of the steps."""
        device, do_cfg = self.device, uncond is not None
        sampler.set_timesteps(steps, device=device)
        timesteps = sampler.timesteps
        noise = self.randn(shape, generators, device)  # [b, C, S, F'], item i from generator i
        x0 = None if edit.x0 is None else edit.x0[clips].to(device)  # [b, C, S, F']
        if edit.strength is not None:  # audio-to-audio (SDEdit): start part-way, from the clip's noised latent
            start = schedulers.skipped_steps(steps, edit.strength, sampler.order)
            timesteps = timesteps[start:]
            if hasattr(sampler, "set_begin_index"):
                sampler.set_begin_index(start)
            latents = sampler.add_noise(x0, noise, timesteps[:1].repeat(noise.shape[0]))
        else:
            latents = noise * sampler.init_noise_sigma
        keep = None if edit.keep is None else edit.keep.view(1, 1, -1, 1).to(device)  # 1 on the kept frames

        class_labels = torch.cat([uncond, cond]) if do_cfg else cond  # [2b or b, D]
        class_labels = class_labels.to(device, self.unet.dtype)
        states = mask = None
        if tokens is not None:  # token states [b, L, D'] and masks [b, L] of this chunk
            chunk_cond = tuple(t[idx] for t in tokens[0])
            states, mask = cfg_token_states(tuple(t[idx] for t in tokens[1]), chunk_cond) if do_cfg else chunk_cond
            states, mask = states.to(device, self.unet.dtype), mask.to(device)
        step_kwargs = {}
        if "generator" in inspect.signature(sampler.step).parameters:
            step_kwargs["generator"] = generators[0] if all(g is generators[0] for g in generators) else generators
        guided_steps = math.ceil(guidance_cutoff * len(timesteps) - 1e-9)
        b = latents.shape[0]
        for i, t in enumerate(timesteps):
            guided = do_cfg and i < guided_steps
            model_in = sampler.scale_model_input(self.cfg_batch(latents, guided), t)
            if guided or not do_cfg:
                pred = self._predict(model_in, t, class_labels, states, mask)  # [2b or b, C, S, F']
            else:  # past the cutoff: the prompt's half of the guidance batch only
                pred = self._predict(model_in, t, class_labels[b:], None if states is None else states[b:],
                                     None if mask is None else mask[b:])
            pred = self.cfg_combine(pred, guidance, guided)
            latents = sampler.step(pred, t, latents, **step_kwargs).prev_sample
            if keep is not None:  # inpainting: the kept frames follow the clip, noised to the next level
                known = x0 if i == len(timesteps) - 1 else sampler.add_noise(x0, noise, timesteps[i + 1:i + 2])
                latents = keep * known + (1 - keep) * latents
            progress.step()
        return latents.float()

    def _predict(self, x: Tensor, t: Tensor, class_labels: Tensor, states: Tensor | None,
                 mask: Tensor | None) -> Tensor:
        """UNet prediction for `[N, C, S, F']`; past the training window, blended over overlapping windows."""
        window = self._window_frames()
        if x.shape[2] <= window:
            return self._unet(x, t, class_labels, states, mask)
        overlap = round(self.config.window_overlap_s / (self.frame_s * self.vae_factor))
        return blend_windows(lambda s: self._unet(x[:, :, s:s + window], t, class_labels, states, mask),
                             x.shape[2], window, overlap, dim=2)

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
        mel = blend_windows(lambda s: codec.vae.decode(latents[:, :, s:s + window] / codec.scaling_factor),
                            latents.shape[2], window, overlap, dim=2, scale=self.vae_factor)  # [b, F, S * f]
        return codec.mel_to_wave(mel)[..., :num_samples]  # [b, 1, T]

    # ----------------------------------------------------------------------------- audio inputs

    def _read_clip(self, audio: Any, sample_rate: int | None, num_prompts: int) -> tuple[Tensor, str | None]:
        """`audio` -> mono `[P, 1, T]` at our rate, one clip per prompt, and its file name."""
        if not isinstance(audio, (str, os.PathLike)):
            if sample_rate is None:
                raise ValueError("audio_sample_rate is required with an audio array (or pass a file path)")
            if not hasattr(audio, "ndim"):
                raise ValueError(f"audio must be a file path, numpy array or torch tensor, got {type(audio).__name__}")
        wave, name = self.read_clip(audio, None if sample_rate is None else int(sample_rate), num_prompts, "audio")
        if wave.shape[-1] < self.codec.samples_per_latent_frame:
            raise ValueError(f"audio is too short: need at least {self.frame_s * self.vae_factor:.3f} s")
        return wave.expand(num_prompts, -1, -1), name

    # --------------------------------------------------------------------------------- folders

    def save_pretrained(self, path: str | os.PathLike, *, dtype: str | torch.dtype | None = None) -> Path:
        """Write our layout: config.json ("backend": "ldm", "vocoder": its spec) + unet/ vae/ clap/ scheduler/,
        plus vocoder/ for a trained HiFi-GAN or hifigan-universal-adapter/ for the universal one.

        unet/ and vae/ are diffusers folders, vocoder/ a transformers SpeechT5HifiGan folder, so those
        libraries load the parts as they are. `dtype` ("fp16" for shipping) casts the saved weights.
        """
        from soundsmith.codecs.mel_codec import save_vocoder_files
        from soundsmith.core.weights import save_safetensors

        self.check_no_adapters()
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
        components = dict(LDMConfig().components)
        if isinstance(self.conditioner, TempoConditioner):  # the tempo reader beside the CLAP
            self.conditioner.reader.save_pretrained(folder / "tempo")
            components["tempo"] = "tempo"
        schedulers.make_scheduler(self.config.scheduler, self.noise_schedule).save_pretrained(str(folder / "scheduler"))
        _merge_json(folder / "scheduler" / "scheduler_config.json", self.noise_schedule)
        config = dataclasses.replace(self.config, components=components,
                                     mel=self.codec.vae.config.mel.to_dict(), vocoder=voc.spec())
        self.write_config(folder, config)
        return folder

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "fp32", vocoder: str | dict[str, Any] | None = None,
                        folder_config: dict[str, Any] | None = None, adapters: Any = None,
                        adapter_scales: Any = None) -> LDMPipeline:
        """Load our folder or a diffusers AudioLDM / MusicLDM folder, then move it to `device` / `dtype`.

        `vocoder`: a registry name or spec (codecs/vocoders.py) that replaces the folder's own, e.g.
        "hifigan-universal"; default: the one the folder's config.json names. `folder_config`: the folder's
        config.json (model_index.json for a diffusers folder) as `load_pipeline` read it, not read again.
        `adapters`: LoRA adapter folders of the UNet (one or a list), applied at `adapter_scales` (one for all or
        one per adapter, in [0, 2]; default 1); an adapter trained on another UNet is refused (pipelines/adapters.py).
        """
        from .adapters import apply_adapters, resolve_adapters

        folder = cls.check_load_args(path, device, dtype)
        chosen = resolve_adapters(adapters, adapter_scales, components=cls.adapter_components, backend=cls.backend,
                                  where=folder)  # before anything loads
        if vocoder is not None:
            from soundsmith.codecs.vocoders import VOCODERS

            name = vocoder if isinstance(vocoder, str) else vocoder.get("name")
            if name not in VOCODERS:
                raise ValueError(f"vocoder must be one of {', '.join(VOCODERS)}, got {name!r}")
        if (folder / "model_index.json").is_file() and not (folder / "config.json").is_file():
            pipe = _load_diffusers(folder, vocoder, folder_config)
        else:
            pipe = _load_ours(folder, vocoder, folder_config)
        apply_adapters(pipe, chosen)  # in float32 on the CPU, checked against the fingerprints as loaded
        return pipe.to(device, dtype)


# -------------------------------------------------------------------------------------------- loading


def _load_ours(folder: Path, vocoder: str | dict[str, Any] | None = None,
               raw: dict[str, Any] | None = None) -> LDMPipeline:
    from diffusers import UNet2DConditionModel
    from soundsmith.codecs.mel import MelConfig
    from soundsmith.codecs.mel_codec import MelLatentCodec
    from soundsmith.codecs.vocoders import check_spec_paths
    from soundsmith.core.paths import models_tree

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder: it has no config.json (nor model_index.json)")
    raw = read_json_object(config_path) if raw is None else raw
    LDMPipeline.check_backend(raw, config_path)
    config = LDMConfig.from_dict(raw, str(config_path))
    tree = models_tree(folder)
    parts = LDMPipeline.part_folders(folder, config.components, str(config_path))  # ../mel-codec/vae, ../clap
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
    if "tempo" in parts:  # a tempo-conditioned UNet (gen/tempo.py): its reader wraps the CLAP
        try:
            conditioner = TempoConditioner(conditioner, TempoReader.from_pretrained(parts["tempo"]))
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"{config_path}: part 'tempo': {err}") from None
    schedule = read_json_object(parts["scheduler"] / "scheduler_config.json")
    config = dataclasses.replace(config, vocoder=codec.vocoder.spec())
    pipe = LDMPipeline(unet, codec, conditioner, schedule, config, name_or_path=str(folder))
    # refuse a VAE or CLAP other than the ones the UNet was trained against
    found = {"vae": lambda: weights_fingerprint(pipe.codec.vae), "clap": lambda: pipe.part_fingerprint("conditioner")}
    for part, expected in config.trained_with.items():
        if part in found and found[part]() != expected:
            raise ValueError(f"{config_path}: the {part} in this folder is not the one the UNet was trained with "
                             f"(fingerprint {found[part]()} != {expected}); retrain the UNet or restore the {part}")
    return pipe


def _load_diffusers(folder: Path, vocoder: str | dict[str, Any] | None = None,
                    index: dict[str, Any] | None = None) -> LDMPipeline:
    """A diffusers AudioLDMPipeline / MusicLDMPipeline folder, loaded part by part."""
    from diffusers import UNet2DConditionModel
    from soundsmith.codecs.mel_codec import MelLatentCodec
    from transformers import AutoTokenizer

    index = read_json_object(folder / "model_index.json") if index is None else index
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
    if (index.get("text_encoder") or [None, None])[1] == "ClapModel":
        from soundsmith.gen.clap import TransformersClap
        from transformers import ClapFeatureExtractor, ClapModel

        model = ClapModel.from_pretrained(str(folder / "text_encoder"), local_files_only=True)
        fe_dir = folder / "feature_extractor"
        fe = ClapFeatureExtractor.from_pretrained(str(fe_dir)) if fe_dir.is_dir() else ClapFeatureExtractor()
        clap = TransformersClap(model, fe, tokenizer, source=str(folder))
    else:
        from transformers import ClapTextModelWithProjection

        clap = ClapTextModelWithProjection.from_pretrained(str(folder / "text_encoder"), local_files_only=True).eval()
    conditioner = ClapConditioner(clap, tokenizer=tokenizer, null_condition="empty_text")
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
        scheduler=schedulers.scheduler_name(schedule.get("_class_name", "DDIMScheduler")),
        num_inference_steps=200 if music else 10, guidance_scale=2.0 if music else 2.5,
        duration_s=round(default_s, 6), window_s=10.24, window_overlap_s=2.56, max_duration_s=600.0,
        null_condition="empty_text", mel=codec.vae.config.mel.to_dict(), vocoder=codec.vocoder.spec(), source=source,
    )


def _merge_json(path: Path, values: dict[str, Any]) -> None:
    data = read_json_object(path)
    data.update({k: v for k, v in values.items() if not k.startswith("_")})
    write_json(path, data)
