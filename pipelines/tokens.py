"""The token-hierarchy backend (MusicLM / AudioLM): prompt -> CLAP text embedding -> conditioning tokens ->
semantic LM -> coarse LM -> fine LM -> acoustic codec decoder -> waveform.

    pipe = TokenPipeline.from_pretrained("models/default-tokens")
    out = pipe("a jazzy piano trio", duration_s=8.0, seed=3)           # AudioOutput, audios [1, 1, 128000]
    out = pipe("a jazzy piano trio", audio_prompt="intro.wav", duration_s=10.0)   # continue a clip

- conditioning (MuLan style): the CLAP *text* embedding through the conditioning RVQ that was trained on
  CLAP *audio* embeddings (`soundsmith.gen.cond_tokens`); the LMs learned on audio-embedding tokens.
- classifier-free guidance: the guided LMs (config `guided_stages`: semantic and coarse unless it says
  otherwise) run a doubled batch whose other half has the null prefix (or the negative prompt's tokens);
  the fine LM is not conditioned.
- sampling: temperature / top-k / top-p per stage (one value for all stages, or a dict by stage name);
  one torch.Generator per output, used by the three stages in turn.
- long-form: each LM slides over its training window, keeping the last `context_fraction` of a window as
  the next window's prompt (MusicLM's 15 s stride over 30 s windows), so any duration up to
  `config.max_duration_s` costs memory of one window.
- continuation: `audio_prompt` is tokenized by the semantic tokenizer and the codec and continued; the
  output holds the (re-decoded) prompt followed by the continuation, `duration_s` in all.
- `num_waveforms_per_prompt` candidates are re-ranked by CLAP score (as the latent-diffusion backend).

Folder: config.json ("backend": "tokens", `components` name -> relative path, `fingerprints` of every
part) + clap/ cond_rvq/ kmeans/ semantic_lm/ coarse_lm/ fine_lm/ codec/ (or paths to shipped parts such
as "../clap"). Loading refuses parts other than the ones the LMs were trained on: each LM's config
records the fingerprints of the tokenizers its data came from (`trained_with`), the conditioning RVQ
records its CLAP and the k-means its feature model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from soundsmith.codecs.audio import DEFAULT_LOUDNESS_LUFS, check_sample_rate
from soundsmith.core.checks import MAX_SEED, check_float, check_int
from soundsmith.core.runtime import resolve_dtype
from soundsmith.core.weights import config_from_dict, weights_fingerprint
from soundsmith.gen.conditioners import ClapConditioner
from torch import Tensor
from torch.nn import functional as F

from .base import CONFIG_METADATA, AudioOutput, Pipeline, Progress

log = logging.getLogger(__name__)

BACKEND = "tokens"
STAGES = ("semantic", "coarse", "fine")
PARTS = ("clap", "cond_rvq", "kmeans", "semantic_lm", "coarse_lm", "fine_lm", "codec", "tempo")
# tempo: the prompt's tempo reader (gen/tempo.py), for a semantic LM with a tempo input or a coarse LM with a beat input
OPTIONAL_PARTS = ("fine_lm", "tempo")
MAX_GUIDANCE = 100.0
MAX_SEMANTIC_CANDIDATES = 64
MAX_BEAT_SCALE = 20.0
BEAT_STAGES = ("semantic", "coarse")  # the LM stages that may read a beat grid
SILENCE = 1e-4  # peak below which an audio prompt counts as silent


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TokenConfig:
    """Pipeline-level settings saved in the model folder's config.json (the parts have their own)."""

    duration_s: float = 5.0  # default length
    max_duration_s: float = 300.0  # longest call allowed (windowed, so memory stays that of one window)
    guidance_scale: float = 3.0  # CFG scale of the guided stages (MusicGen: 3); 1 disables it
    # the stages guidance applies to. A coarse stage that reads the plan frame by frame (aligned_semantic)
    # gains nothing from it and pays a doubled batch: models/README.md, "Token model v3"
    guided_stages: list[str] = field(default_factory=lambda: ["semantic", "coarse"])
    # per-stage sampling: MusicLM's temperatures (1.0 / 0.95 / 0.4) and MusicGen's top-k (250)
    temperature: dict[str, float] = field(default_factory=lambda: {"semantic": 1.0, "coarse": 0.95, "fine": 0.4})
    top_k: dict[str, int | None] = field(default_factory=lambda: {"semantic": 250, "coarse": 250, "fine": None})
    top_p: dict[str, float] = field(default_factory=lambda: {"semantic": 1.0, "coarse": 1.0, "fine": 1.0})
    context_fraction: float = 0.5  # share of a window kept as the next window's prompt (MusicLM: 15 s of 30)
    fine_context_fraction: float = 0.25  # the fine stage needs little context (AudioLM: none, 3 s chunks)
    min_prompt_s: float = 0.5  # shortest audio prompt accepted
    # semantic plans sampled per output; the one nearest the prompt in CLAP space is kept (1: off)
    semantic_candidates: int = 1
    # LMs with a beat input: the beat features of the requested tempo times this scale, one for all stages or
    # {"semantic": .., "coarse": ..} (a linear input, so the scale strengthens the learned beat the way a guidance
    # scale strengthens the prompt, at no cost)
    beat_scale: float | dict[str, float] = 1.0
    # semantic stage: True = its guidance branch gets no grid, so guidance pushes towards the grid as well as the
    # prompt; False = both branches read the grid and guidance pushes towards the prompt alone
    guide_beat: bool = True
    # guidance towards the beat grid as a condition of its own, one value for both stages or {"semantic": ..,
    # "coarse": ..} (a stage left out: none): each step also runs the prompt without the grid and adds b times
    # (grid - no grid) to the logits (gen/token_lm.guidance_branches), where beat_scale scales the input itself.
    # None: the grid is one more input of the prompt branch. Costs one more branch per guided step
    beat_guidance: float | dict[str, float] | None = None
    components: dict[str, str] = field(default_factory=lambda: {p: p for p in PARTS})
    fingerprints: dict[str, str] = field(default_factory=dict)  # of every part, written by save_pretrained
    source: str = "soundsmith"

    def __post_init__(self) -> None:
        check_float("max_duration_s", self.max_duration_s, 0.0, 24 * 3600.0, low_open=True)
        check_float("duration_s", self.duration_s, 0.0, self.max_duration_s, low_open=True)
        check_float("guidance_scale", self.guidance_scale, 0.0, MAX_GUIDANCE)
        check_float("context_fraction", self.context_fraction, 0.0, 0.9)
        check_float("fine_context_fraction", self.fine_context_fraction, 0.0, 0.9)
        check_float("min_prompt_s", self.min_prompt_s, 0.0, 3600.0, low_open=True)
        check_int("semantic_candidates", self.semantic_candidates, 1, MAX_SEMANTIC_CANDIDATES)
        check_beat_setting("beat_scale", self.beat_scale, MAX_BEAT_SCALE)
        check_beat_setting("beat_guidance", self.beat_guidance, MAX_GUIDANCE, optional=True)
        wrong = [s for s in self.guided_stages if s not in ("semantic", "coarse")] if isinstance(
            self.guided_stages, (list, tuple)) else [self.guided_stages]
        if wrong:
            raise ValueError(f"guided_stages: {wrong[0]!r} is not a guided stage (semantic, coarse)")
        for name in ("temperature", "top_k", "top_p"):
            unknown = sorted(set(getattr(self, name)) - set(STAGES))
            if unknown:
                raise ValueError(f"{name}: unknown stage {unknown[0]!r} (stages: {', '.join(STAGES)})")
        resolve_sampling(self, None, None, None)  # every default in range
        missing = [p for p in PARTS if p not in OPTIONAL_PARTS and p not in self.components]
        if missing:
            raise ValueError(f"components: part {missing[0]!r} missing (parts: {', '.join(PARTS)})")

    def stage_beat_scale(self, stage: str) -> float:
        """The beat scale of one stage ("semantic" or "coarse"); a stage a dict leaves out gets 1."""
        return float(beat_setting(self.beat_scale, stage, 1.0))

    def stage_beat_guidance(self, stage: str) -> float | None:
        """The beat guidance of one stage ("semantic" or "coarse"); None: the grid is an input only."""
        return self.beat_guidance_by_stage()[stage]

    def beat_guidance_by_stage(self, override: Any = None) -> dict[str, float | None]:
        """Each beat stage's guidance: `override` (a call's `beat_guidance`, checked) or the config's."""
        if override is not None:
            check_beat_setting("beat_guidance", override, MAX_GUIDANCE, optional=True)
        value = self.beat_guidance if override is None else override
        return {stage: None if (v := beat_setting(value, stage, None)) is None else float(v) for stage in BEAT_STAGES}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config.json") -> TokenConfig:
        return config_from_dict(cls, data, where, ignore=CONFIG_METADATA, wrap_errors=True)


def beat_setting(value: Any, stage: str, default: Any) -> Any:
    """One stage's value of a setting given for both beat stages or per stage ({"semantic": .., "coarse": ..};
    a stage it leaves out gets `default`)."""
    return value.get(stage, default) if isinstance(value, Mapping) else value


def check_beat_setting(name: str, value: Any, high: float, *, optional: bool = False) -> None:
    """One-line errors for a per-beat-stage setting: only known stages, each value in [0, high] (None, or a
    stage left out, allowed where `optional`; a stage a dict leaves out takes the default)."""
    per_stage = isinstance(value, Mapping)
    if per_stage and set(value) - set(BEAT_STAGES):
        raise ValueError(f"{name}: stages are 'semantic' and 'coarse', got {sorted(value)}")
    for stage in BEAT_STAGES:
        if per_stage and stage not in value or optional and beat_setting(value, stage, None) is None:
            continue
        check_float(f"{name}[{stage!r}]" if per_stage else name, beat_setting(value, stage, None), 0.0, high)


def resolve_sampling(config: TokenConfig, temperature: Any, top_k: Any, top_p: Any) -> dict[str, Any]:
    """Per-stage `SamplingParams` from the call's arguments over the config's defaults.

    Each argument is one value for every stage, a dict by stage name (stages left out keep the default),
    or None (the config's). One-line errors name the argument and the stage.
    """
    from soundsmith.gen.token_lm import SamplingParams, check_sampling

    out = {}
    for stage in STAGES:
        values, names = [], []
        for name, given in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)):
            label = name
            if isinstance(given, Mapping):
                unknown = sorted(set(given) - set(STAGES))
                if unknown:
                    raise ValueError(f"{name}: unknown stage {unknown[0]!r} (stages: {', '.join(STAGES)})")
                given, label = given.get(stage), f"{name}[{stage!r}]"
            if given is None:
                given = getattr(config, name).get(stage, getattr(SamplingParams, name))
            values.append(given)
            names.append(label)
        check_sampling(*values, names=tuple(names))
        t, k, p = values
        out[stage] = SamplingParams(temperature=float(t), top_k=None if k is None else int(k), top_p=float(p))
    return out


# ------------------------------------------------------------------------------------------- pipeline


class TokenPipeline(Pipeline):
    """Text-to-audio by token language models. Build with `from_pretrained`, or from parts:

    Args:
        conditioner: a `ClapConditioner` (soundsmith.gen.conditioners): text embeddings, and CLAP scores for
            re-ranking.
        cond_rvq: `ConditioningQuantizer`: CLAP embedding -> conditioning tokens `[B, Q]`.
        kmeans: `SemanticTokenizer`: audio -> semantic tokens (for audio prompts).
        semantic_lm, coarse_lm, fine_lm: the three `TokenLM` stages (`fine_lm` None: decode coarse levels only).
        codec: the acoustic codec, codes `[B, K, S]` <-> wave: `MelRVQCodec` (the default: residual VQ over the
            mel VAE latent, decoded through the mel path's vocoder) or `NeuralCodec` (EnCodec architecture).
        config: `TokenConfig`.
    """

    backend = BACKEND
    component_names = ("conditioner", "cond_rvq", "semantic_lm", "coarse_lm", "fine_lm", "codec")
    upcast_components = ("cond_rvq", "codec")  # tiny; the codec (mel VAE + vocoder, or SEANet + LSTM) wants float32
    # LoRA adapters adapt the three LMs (pipelines/adapters.py)
    adapter_components = {"semantic_lm": "semantic_lm", "coarse_lm": "coarse_lm", "fine_lm": "fine_lm"}

    def __init__(self, conditioner: Any, cond_rvq: Any, kmeans: Any, semantic_lm: Any, coarse_lm: Any,
                 fine_lm: Any | None, codec: Any, config: TokenConfig | None = None, *, name_or_path: str = "",
                 tempo_reader: Any = None):
        super().__init__()
        self.tempo_reader = tempo_reader  # TempoReader or None: reads the tempo a prompt asks for
        self.conditioner = conditioner
        self.cond_rvq = cond_rvq.eval()
        self.kmeans = kmeans
        self.semantic_lm = semantic_lm.eval()
        self.coarse_lm = coarse_lm.eval()
        self.fine_lm = fine_lm.eval() if fine_lm is not None else None
        self.codec = codec.eval()
        self.config = config or TokenConfig()
        self.name_or_path = name_or_path
        self.check_parts(name_or_path or "TokenPipeline")

    # ------------------------------------------------------------------------------------ facts

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frames_per_semantic(self) -> int:
        return self.coarse_lm.config.frames_per_semantic

    def check_parts(self, where: str) -> None:
        """The parts must fit each other: vocabularies, levels and rates (weights: `check_fingerprints`)."""
        sem, coarse, fine = self.semantic_lm.config, self.coarse_lm.config, getattr(self.fine_lm, "config", None)
        if self.conditioner.dim != self.cond_rvq.config.embed_dim:
            raise ValueError(f"{where}: the CLAP gives {self.conditioner.dim}-d embeddings, the conditioning RVQ "
                             f"takes {self.cond_rvq.config.embed_dim}-d")
        for name, lm in (("semantic_lm", sem), ("coarse_lm", coarse)):
            if (lm.cond_levels, lm.cond_codebook_size) != (self.cond_rvq.n_levels, self.cond_rvq.codebook_size):
                raise ValueError(f"{where}: {name} takes {lm.cond_levels} x {lm.cond_codebook_size} conditioning "
                                 f"tokens, the conditioning RVQ makes {self.cond_rvq.n_levels} x "
                                 f"{self.cond_rvq.codebook_size}")
            if lm.semantic_vocab != self.kmeans.n_clusters:
                raise ValueError(f"{where}: {name} has {lm.semantic_vocab} semantic tokens, the k-means "
                                 f"{self.kmeans.n_clusters}")
        if abs(sem.frame_rate - self.kmeans.frame_rate) > 1e-3:
            raise ValueError(f"{where}: semantic_lm was trained on {sem.frame_rate:g} tokens/s, the k-means makes "
                             f"{self.kmeans.frame_rate:g}")
        ratio = self.codec.frame_rate / self.kmeans.frame_rate
        if abs(ratio - coarse.frames_per_semantic) > 1e-3:
            raise ValueError(f"{where}: coarse_lm expects {coarse.frames_per_semantic} codec frames per semantic "
                             f"token, the codec ({self.codec.frame_rate:g} Hz) and k-means "
                             f"({self.kmeans.frame_rate:g} Hz) give {ratio:g}")
        levels = coarse.n_coarse + (fine.n_fine if fine is not None else 0)
        for name, lm in (("coarse_lm", coarse), ("fine_lm", fine)):
            if lm is None:
                continue
            if lm.acoustic_codebook_size != self.codec.codebook_size or abs(lm.frame_rate - self.codec.frame_rate) > 1e-3:
                raise ValueError(f"{where}: {name} models {lm.acoustic_codebook_size} codes at {lm.frame_rate:g} "
                                 f"frames/s, the codec has {self.codec.codebook_size} at {self.codec.frame_rate:g}")
        if fine is not None and fine.n_coarse != coarse.n_coarse:
            raise ValueError(f"{where}: fine_lm reads {fine.n_coarse} coarse levels, coarse_lm makes {coarse.n_coarse}")
        if levels > self.codec.max_levels:
            raise ValueError(f"{where}: the LMs make {levels} codec levels, the codec has {self.codec.max_levels}")

    def fingerprints(self) -> dict[str, str]:
        """The weights fingerprint of every part (what config.json records and loading checks); the parts the
        watermark payload hashes too are hashed once (`part_fingerprint`)."""
        codec = getattr(self.codec, "fingerprint", None)  # as `codec_fingerprint`, its weights' hash memoized
        found = {"clap": self.part_fingerprint("conditioner"), "cond_rvq": self.cond_rvq.fingerprint(),
                 "kmeans": self.kmeans.fingerprint(),
                 "codec": codec() if callable(codec) else self.part_fingerprint("codec"),
                 "semantic_lm": self.part_fingerprint("semantic_lm"), "coarse_lm": self.part_fingerprint("coarse_lm")}
        if self.fine_lm is not None:
            found["fine_lm"] = self.part_fingerprint("fine_lm")
        return found

    def check_fingerprints(self, where: str, recorded: Mapping[str, str] | None = None) -> None:
        """Refuse parts other than those the LMs were trained on (each LM's `trained_with`) and, with
        `recorded` (config.json's `fingerprints`), other than those the folder was saved with."""
        found = self.fingerprints()
        for name, lm in (("semantic_lm", self.semantic_lm), ("coarse_lm", self.coarse_lm), ("fine_lm", self.fine_lm)):
            if lm is None:
                continue
            for part, expected in lm.config.trained_with.items():
                if part in found and found[part] != expected:
                    raise ValueError(f"{where}: the {part} is not the one {name} was trained on (fingerprint "
                                     f"{found[part]} != {expected}); retrain the LM or restore the {part}")
        for part, expected in (recorded or {}).items():
            if part in found and found[part] != expected:
                raise ValueError(f"{where}: part {part!r} has fingerprint {found[part]}, config.json records "
                                 f"{expected}: the folder's parts were changed after it was saved")

    # ------------------------------------------------------------------------------------- call

    def check_inputs(self, prompt: str | list[str], negative_prompt: str | list[str] | None,
                     num_waveforms_per_prompt: int, duration_s: float | None, guidance_scale: float | None,
                     loudness_lufs: float | None, temperature: Any, top_k: Any, top_p: Any, batch_size: int | None,
                     num_inference_steps: int | None, scheduler: str | None, semantic_candidates: int | None,
                     beat_guidance: Any = None
                     ) -> tuple[list[str], list[str | None], float, float, dict[str, Any], int, dict[str, float | None]]:
        """Check the call's arguments before any work (an audio prompt is checked as it is read).

        Returns (prompts, one negative prompt or None per prompt, guidance scale, duration, per-stage sampling,
        semantic candidates, per-stage beat guidance).
        """
        cfg = self.config
        for name, value in (("num_inference_steps", num_inference_steps), ("scheduler", scheduler)):
            if value is not None:
                raise ValueError(f"{name} does not apply to the token backend (it samples tokens, not diffusion "
                                 "steps); leave it unset")
        prompts, negatives = self.check_prompts(prompt, negative_prompt, num_waveforms_per_prompt)
        if loudness_lufs is not None:
            check_float("loudness_lufs", loudness_lufs, -70.0, 0.0)
        guidance = check_float("guidance_scale", cfg.guidance_scale if guidance_scale is None else guidance_scale,
                               0.0, MAX_GUIDANCE)
        duration = cfg.duration_s if duration_s is None else check_float(
            "duration_s", duration_s, 0.0, cfg.max_duration_s, low_open=True)
        sampling = resolve_sampling(cfg, temperature, top_k, top_p)
        if batch_size is not None:
            check_int("batch_size", batch_size, 1, 4096)
        beat = cfg.beat_guidance_by_stage(beat_guidance)
        candidates = cfg.semantic_candidates if semantic_candidates is None else check_int(
            "semantic_candidates", semantic_candidates, 1, MAX_SEMANTIC_CANDIDATES)
        if candidates > 1 and not self.kmeans.can_embed:
            raise ValueError(f"semantic_candidates {candidates} needs semantic tokens in our CLAP's frame-feature space "
                             f"to rank them; this model's k-means is on {getattr(self.kmeans.features, 'kind', None)!r} features: use 1")
        # the shortest clip: one codec frame, and no shorter than the CLAP that ranks the outputs takes
        shortest = max(self.codec.hop_length / self.sample_rate, self.conditioner.min_audio_s)
        if duration < shortest:
            raise ValueError(f"duration_s must be a finite number in [{shortest:g}, {cfg.max_duration_s:g}], got "
                             f"{duration:g} (the shortest clip this model makes)")
        return prompts, negatives, guidance, duration, sampling, candidates, beat

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        *,
        duration_s: float | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        num_waveforms_per_prompt: int = 1,
        seed: int | list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback: Callable[[int, int], Any] | None = None,
        watermark: bool = True,
        loudness_lufs: float | None = DEFAULT_LOUDNESS_LUFS,
        temperature: float | Mapping[str, float] | None = None,
        top_k: int | Mapping[str, int | None] | None = None,
        top_p: float | Mapping[str, float] | None = None,
        audio_prompt: Any = None,
        batch_size: int | None = None,
        rerank: bool = True,
        clap_score: bool = False,
        num_inference_steps: int | None = None,
        scheduler: str | None = None,
        semantic_candidates: int | None = None,
        beat_guidance: float | Mapping[str, float] | None = None,
    ) -> AudioOutput:
        """Generate audio for `prompt`.

        Args:
            prompt: one prompt or a list.
            duration_s: seconds per clip, in (0, config.max_duration_s] (default: config.duration_s); with
                `audio_prompt`, the total length including the prompt.
            guidance_scale: classifier-free guidance of the stages in the config's `guided_stages` (the
                semantic and coarse stages unless it says otherwise), in [0, 100]; 1 disables it (default:
                config's, 3).
            negative_prompt: what to steer away from (one string or one per prompt): its conditioning tokens
                replace the null prefix in the guidance batch.
            num_waveforms_per_prompt: candidates per prompt, in [1, 64]; ranked best first by CLAP score when
                `rerank` is True.
            seed: int (outputs get seed, seed+1, ...) or one per output; default random (reported).
            generator: instead of seed: one torch.Generator, or one per output.
            callback: `callback(step, total)` after each sampled token step; returning False cancels
                (raises `GenerationCancelled`).
            watermark: mark the audio (the base pipeline's last step).
            loudness_lufs: output level in LUFS (integrated, BS.1770), peaks capped at -1 dBFS; None keeps
                the decoder's level (default -16).
            temperature: > 0; one value for all stages or {"semantic": .., "coarse": .., "fine": ..}
                (default: config's, 1.0 / 0.95 / 0.4).
            top_k: integer >= 1 (None: no limit), per stage as temperature (default: 250 / 250 / none).
            top_p: in (0, 1], per stage as temperature (default: 1, off).
            audio_prompt: a clip to continue: a file path, or `(wave, sample_rate)` with wave `[C, T]` or
                `[B, C, T]` (one clip for all prompts or one per prompt); at least config.min_prompt_s
                long, shorter than duration_s, not silent.
            batch_size: outputs per model batch (default: all, up to 64).
            rerank: order each prompt's candidates by CLAP score (default True).
            clap_score: give each output's CLAP score with its prompt (`clap_scores`, the sidecar's
                `clap_score`) even when nothing is re-ranked (default False: one output per prompt is not scored).
            num_inference_steps, scheduler: diffusion settings; the token backend has none (an error if given).
            semantic_candidates: semantic plans sampled per output, in [1, 64] (default: config's). Each plan's
                tokens are k-means centroids in our CLAP's frame-feature space, so CLAP's audio head embeds a
                plan before any sound exists; the plan nearest the prompt's text embedding is kept. It costs
                one batched semantic stage (the cheap one); 1 turns it off.
            beat_guidance: for a model that follows a beat grid (a `tempo/` part and LMs with `beat_dim`): how
                hard sampling is pushed towards the grid of the tempo a prompt names, in [0, 100], one value for
                both stages or {"semantic": .., "coarse": ..} (default: config's; 0 ignores the grid). Each
                stage it applies to runs one more LM branch; prompts that name no tempo are not affected.
        """
        # 1. check inputs; read the audio prompt --------------------------------------------------
        prompts, negatives, guidance, duration, sampling, candidates, beat_guidance = self.check_inputs(
            prompt, negative_prompt, num_waveforms_per_prompt, duration_s, guidance_scale, loudness_lufs,
            temperature, top_k, top_p, batch_size, num_inference_steps, scheduler, semantic_candidates,
            beat_guidance)
        self.conditioner.warn_long_prompts(prompts + [n for n in negatives if n is not None])
        clip = self._read_prompt_audio(audio_prompt, len(prompts), duration)  # [P or 1, 1, T'] or None
        n_out = len(prompts) * num_waveforms_per_prompt
        num_samples = int(duration * self.sample_rate)
        frames = self.codec.num_frames(num_samples)
        r = self.frames_per_semantic
        n_semantic = -(-frames // r)

        # 2. one prompt, negative prompt, seed / generator per output ------------------------------
        out_prompts, out_negatives, source = self.per_output(prompts, negatives, num_waveforms_per_prompt)
        generators, seeds = self.make_generators(n_out, seed, generator)

        # 3. condition: CLAP text embeddings -> conditioning tokens [B, Q] ---------------------------
        text = self.conditioner.embed_text(prompts).float()  # [P, D]
        cond = self._tokenize_cond(text)[source]  # [B, Q]
        # the tempo each prompt asks for: the semantic LM's tempo features [B, T] and the beat grid of the LMs that
        # take one, {"semantic": [B, N, beat_dim], "coarse": [B, frames, beat_dim]} (an even grid from time 0, times
        # beat_scale; none when continuing a clip, whose own beat leads)
        bpms, tempo, beat = None, None, None
        wants_beat = (self.coarse_lm.config.beat_dim > 0 or self.semantic_lm.config.beat_dim > 0) and clip is None
        if self.tempo_reader is not None and (self.semantic_lm.config.tempo_dim or wants_beat):
            from soundsmith.gen.tempo import beat_features, grid_beats, tempo_features

            read = self.tempo_reader.read(prompts, text)
            bpms = [read[i] for i in source]
            if self.semantic_lm.config.tempo_dim:
                tempo = tempo_features(bpms)
            if wants_beat:
                beat = {}
                for stage, lm, length in (("semantic", self.semantic_lm, n_semantic), ("coarse", self.coarse_lm, frames)):
                    if lm.config.beat_dim:
                        rate = lm.config.frame_rate
                        beat[stage] = self.config.stage_beat_scale(stage) * torch.stack([
                            beat_features(None if bpm is None else grid_beats(bpm, length / rate), length, rate)
                            for bpm in bpms])
        text = text[source]  # [B, D]: what the semantic plans are ranked against
        uncond = None  # the guidance prefix: the null tokens, or a negative prompt's tokens
        distinct = list(dict.fromkeys(n for n in out_negatives if n is not None))
        if distinct:
            table = dict(zip(distinct, self._cond_tokens(distinct)))
            null = self.semantic_lm.null_cond(1)[0].cpu()
            uncond = torch.stack([table[n] if n is not None else null for n in out_negatives])  # [B, Q]

        # 4. prompt tokens of an audio prompt (semantic [P, N'], codec [P, K, S']) ------------------
        prompt_tokens = self._tokenize_prompt(clip) if clip is not None else None

        # 5. sample semantic -> coarse -> fine tokens, chunk by chunk; decode ------------------------
        chunks = self.chunks(n_out, batch_size)
        have = 0 if prompt_tokens is None else prompt_tokens[1].shape[-1]
        total = len(chunks) * self._num_steps(n_semantic, frames, have, guidance)
        waves = []
        with Progress(total, callback, enabled=self.progress_bar, desc="tokens") as progress:
            for idx in chunks:
                codes = self._sample(cond[idx], None if uncond is None else uncond[idx], guidance, sampling,
                                     [generators[i] for i in idx], n_semantic, frames,
                                     None if prompt_tokens is None else _pick(prompt_tokens, [source[i] for i in idx]),
                                     progress.step, text[idx], candidates, None if tempo is None else tempo[idx],
                                     None if beat is None else {k: v[idx] for k, v in beat.items()}, beat_guidance)
                waves.append(self.codec.decode(codes.to(self.device), num_samples=num_samples))  # [b, C, T]
        audios = torch.cat(waves)  # [B, C, T]

        # 6. CLAP scores; candidates of each prompt ordered best first -----------------------------
        audios, seeds, scores = self.rank_by_clap(self.conditioner, audios, out_prompts, seeds,
                                                  num_waveforms_per_prompt, rerank,
                                                  clap_score)

        # 7. finish: float32 CPU audio, watermark last ---------------------------------------------
        audios, level = self.normalize_loudness(audios, loudness_lufs)
        audios, watermarked = self.finish(audios, watermark=watermark)
        parameters = {
            "backend": BACKEND, "model": self.name_or_path,
            "mode": "text-to-audio" if clip is None else "continuation",
            "guidance_scale": guidance, "guided_stages": list(self.config.guided_stages),
            "negative_prompt": negative_prompt, "duration_s": duration,
            "num_waveforms_per_prompt": num_waveforms_per_prompt,
            "sampling": {stage: dataclasses.asdict(p) for stage, p in sampling.items()},
            "audio_prompt": audio_prompt if isinstance(audio_prompt, (str, os.PathLike)) else
            (None if clip is None else "array"),
            "audio_prompt_s": None if clip is None else have / self.codec.frame_rate,
            "semantic_tokens": n_semantic, "semantic_candidates": candidates, "codec_frames": frames,
            "windowed": n_semantic > self.semantic_lm.config.window or frames > self.coarse_lm.config.window,
            **self.run_record(watermark, level, watermarked),
        }
        if bpms is not None:  # the tempo each output's prompt was read to ask for, and how the grid was followed
            parameters["tempo_bpm"] = bpms
            if beat is not None:
                parameters["beat"] = {"scale": self.config.beat_scale, "guidance": beat_guidance,
                                      "guide_beat": self.config.guide_beat}
        return AudioOutput(audios, self.sample_rate, out_prompts, [s for s in seeds], scores,
                           {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in parameters.items()})

    # --------------------------------------------------------------------------------- sampling

    def _sample(self, cond: Tensor, uncond: Tensor | None, guidance: float, sampling: dict[str, Any],
                generators: list[torch.Generator], n_semantic: int, frames: int,
                prompt: tuple[Tensor, Tensor] | None, on_step: Callable[[], Any], text: Tensor | None = None,
                candidates: int = 1, tempo: Tensor | None = None, beat: dict[str, Tensor] | None = None,
                beat_guidance: dict[str, float | None] | None = None) -> Tensor:
        """The three stages for one chunk of outputs -> codec codes `[b, K, frames]`; `text` `[b, D]` ranks
        `candidates` semantic plans per output; `tempo` `[b, T]`: the semantic LM's tempo features; `beat`:
        the beat grid of each LM that takes one, {"semantic": [b, N, beat_dim], "coarse": [b, frames, beat_dim]};
        `beat_guidance`: each stage's guidance towards that grid (None: the config's)."""
        if beat_guidance is None:
            beat_guidance = self.config.beat_guidance_by_stage()
        device, k = self.device, self.coarse_lm.config.n_coarse
        cond = cond.to(device)
        uncond = None if uncond is None else uncond.to(device)
        sem_prompt = coarse_prompt = fine_prompt = None
        if prompt is not None:
            sem_prompt, codes = prompt[0].to(device), prompt[1].to(device)  # [b, N'], [b, K, S']
            coarse_prompt = codes[:, :k]
            if self.fine_lm is not None:
                fine_prompt = codes[:, k:k + self.fine_lm.config.n_fine]
        guided = self.config.guided_stages

        def grid(stage: str) -> Tensor | None:
            return None if beat is None or stage not in beat else beat[stage].to(device)

        semantic = self._semantic_plan(cond, uncond, sem_prompt, guidance if "semantic" in guided else 1.0,
                                       sampling["semantic"], generators, n_semantic, on_step, text,
                                       candidates, None if tempo is None else tempo.to(device),
                                       grid("semantic"), beat_guidance["semantic"])  # [b, N]
        coarse = self.coarse_lm.generate(
            cond, semantic, frames, prompt=coarse_prompt, uncond=uncond,
            guidance_scale=guidance if "coarse" in guided else 1.0,
            sampling=sampling["coarse"], generators=generators, context_fraction=self.config.context_fraction,
            on_step=on_step, beat=grid("coarse"), beat_guidance=beat_guidance["coarse"])  # [b, Kc, S]
        if self.fine_lm is None:
            return coarse
        fine = self.fine_lm.generate(coarse, prompt=fine_prompt, sampling=sampling["fine"], generators=generators,
                                     context_fraction=self.config.fine_context_fraction, on_step=on_step)  # [b, Kf, S]
        return torch.cat([coarse, fine], dim=1)  # [b, Kc + Kf, S]

    def _semantic_plan(self, cond: Tensor, uncond: Tensor | None, prompt: Tensor | None, guidance: float,
                       sampling: Any, generators: list[torch.Generator], n_semantic: int, on_step: Callable[[], Any],
                       text: Tensor | None, candidates: int, tempo: Tensor | None = None,
                       beat: Tensor | None = None, beat_guidance: float | None = None) -> Tensor:
        """Semantic tokens `[b, N]`: the best of `candidates` plans per output by CLAP similarity to `text`.

        All plans of a chunk are one batch (the step count, and so the progress bar, does not change). Plan 0
        of an output draws from the output's own generator, so `candidates=1` is the plain sampler and an
        output's plans do not depend on the other outputs in the batch.
        """
        k = candidates
        repeat = (lambda t: t) if k == 1 else (lambda t: None if t is None else t.repeat_interleave(k, 0))
        plan_generators = [g if j == 0 else _derived_generator(g, j) for g in generators for j in range(k)]
        plans = self.semantic_lm.generate(
            repeat(cond), n_semantic, prompt=repeat(prompt), uncond=repeat(uncond), guidance_scale=guidance,
            sampling=sampling, generators=plan_generators, context_fraction=self.config.context_fraction,
            on_step=on_step, tempo=repeat(tempo), beat=repeat(beat), guide_beat=self.config.guide_beat,
            beat_guidance=beat_guidance)  # [b * k, N]
        if k == 1:
            return plans
        audio = self.kmeans.audio_embedding(plans).to(text.device)  # [b * k, D], L2-normalised
        similarity = (audio.view(len(generators), k, -1) * F.normalize(text, dim=-1)[:, None]).sum(-1)  # [b, k]
        best = similarity.argmax(1)  # [b]
        return plans.view(len(generators), k, -1)[torch.arange(len(generators)), best.to(plans.device)]

    def _num_steps(self, n_semantic: int, frames: int, have_frames: int, guidance: float) -> int:
        """Sampled steps of one chunk (for the progress bar): tokens of the semantic stage, codes (flat) or
        positions (delay pattern) of the coarse stage, positions of the fine stage."""
        from soundsmith.gen.token_lm import plan_windows

        r, cfg = self.frames_per_semantic, self.config
        sem = sum(new for _, new in plan_windows(n_semantic, have_frames // r, self.semantic_lm.config.window,
                                                 cfg.context_fraction))
        total = sem + sum(self.coarse_lm.steps(new) for _, new in plan_windows(
            frames, have_frames, self.coarse_lm.config.window, cfg.context_fraction, multiple=r))
        if self.fine_lm is not None:
            total += sum(self.fine_lm.steps(new) for _, new in plan_windows(
                frames, have_frames, self.fine_lm.config.window, cfg.fine_context_fraction))
        return total

    def _cond_tokens(self, texts: list[str]) -> Tensor:
        """Distinct texts -> conditioning tokens `[len(texts), Q]` (CPU)."""
        return self._tokenize_cond(self.conditioner.embed_text(texts).float())

    def _tokenize_cond(self, text: Tensor) -> Tensor:
        """CLAP text embeddings `[P, D]` -> conditioning tokens `[P, Q]` (CPU)."""
        return self.cond_rvq.tokenize(text.to(next(self.cond_rvq.parameters()).device)).cpu()

    # ----------------------------------------------------------------------------- audio prompts

    def _read_prompt_audio(self, audio: Any, num_prompts: int, duration: float) -> Tensor | None:
        """Check and load `audio_prompt` -> mono `[P or 1, 1, T]` at the codec's rate, cut to whole semantic
        tokens (so the semantic and codec prompts cover the same span); None without a prompt."""
        if audio is None:
            return None
        sr = None
        if not isinstance(audio, (str, os.PathLike)):
            if not (isinstance(audio, (tuple, list)) and len(audio) == 2):
                raise ValueError("audio_prompt must be a file path or a (wave, sample_rate) pair")
            audio, sr = audio
            if not hasattr(audio, "ndim"):
                raise ValueError(f"audio_prompt wave must be a numpy array or torch tensor, got {type(audio).__name__}")
            sr = check_sample_rate(sr, "audio_prompt sample rate")
        wave, _ = self.read_clip(audio, sr, num_prompts, "audio_prompt")  # [P or 1, 1, T]
        seconds = wave.shape[-1] / self.sample_rate
        if seconds < self.config.min_prompt_s:
            raise ValueError(f"audio_prompt is too short: {seconds:.3f} s; need at least {self.config.min_prompt_s:g} s")
        if seconds >= duration:
            raise ValueError(f"duration_s ({duration:g} s) must be longer than the audio prompt ({seconds:.3f} s): it "
                             "is the total length, prompt included")
        if float(wave.abs().amax()) < SILENCE:
            raise ValueError("audio_prompt is silent (peak below -80 dBFS); give a clip with sound in it")
        step = self.codec.hop_length * self.frames_per_semantic  # samples per semantic token
        return wave[..., : wave.shape[-1] // step * step]

    def _tokenize_prompt(self, clip: Tensor) -> tuple[Tensor, Tensor]:
        """clip `[P, 1, T]` -> (semantic `[P, T / step]`, codec codes `[P, K, T / hop]`), lengths aligned."""
        codes = self.codec.encode(clip.to(self.device), self.sample_rate).cpu()  # [P, K, S']
        frames = codes.shape[-1] // self.frames_per_semantic * self.frames_per_semantic
        semantic = self.kmeans.tokenize(clip, self.sample_rate).cpu()  # [P, ~S' / r]
        n = frames // self.frames_per_semantic
        if semantic.shape[1] < n:  # feature models that drop a trailing partial frame: repeat the last token
            semantic = torch.cat([semantic, semantic[:, -1:].expand(-1, n - semantic.shape[1])], dim=1)
        return semantic[:, :n], codes[..., :frames]

    # --------------------------------------------------------------------------------- folders

    def save_pretrained(self, path: str | os.PathLike, *, dtype: str | torch.dtype | None = None,
                        link: Mapping[str, str | os.PathLike] | None = None) -> Path:
        """Write config.json ("backend": "tokens", components, fingerprints) + one folder per part.

        Args:
            path: the model folder.
            dtype: "fp16" to ship (the conditioning RVQ and k-means are always written in fp16).
            link: part name -> an existing folder holding that part (e.g. {"clap": "models/clap"}): it is
                referenced by a relative path instead of copied. The part must be the one in this pipeline
                (its fingerprint is recorded and checked on load).
        """
        from soundsmith.core.paths import SHIPPED_MODELS, is_inside, models_tree, normalized

        self.check_no_adapters()
        folder = Path(path)
        dt = torch.float32 if dtype is None else resolve_dtype(dtype)
        link = dict(link or {})
        unknown = sorted(set(link) - set(PARTS))
        if unknown:
            raise ValueError(f"link: unknown part {unknown[0]!r} (parts: {', '.join(PARTS)})")
        for part, target in link.items():  # checked before anything is written
            if not (Path(target) / "config.json").is_file():
                raise FileNotFoundError(f"link[{part!r}]: no model folder at {target}")
            if not any(is_inside(target, root) for root in (models_tree(folder), SHIPPED_MODELS)):
                # loading follows links only inside the models tree (core/paths.py): such a folder would not load
                raise ValueError(f"link[{part!r}]: {normalized(target)} is not beside the model (inside "
                                 f"{models_tree(folder)}), where loading would follow it; copy the part instead")
        folder.mkdir(parents=True, exist_ok=True)
        writers = {
            "clap": lambda f: self.conditioner.save_pretrained(f, dtype=dt),
            "cond_rvq": lambda f: self.cond_rvq.save_pretrained(f),
            "kmeans": lambda f: self.kmeans.save_pretrained(f),
            "semantic_lm": lambda f: self.semantic_lm.save_pretrained(f, dtype=dt),
            "coarse_lm": lambda f: self.coarse_lm.save_pretrained(f, dtype=dt),
            "fine_lm": lambda f: self.fine_lm.save_pretrained(f, dtype=dt),
            "codec": lambda f: self.codec.save_pretrained(f, dtype=dt),
            "tempo": lambda f: self.tempo_reader.save_pretrained(f),
        }
        components = {}
        for part, write in writers.items():
            if (part == "fine_lm" and self.fine_lm is None) or (part == "tempo" and self.tempo_reader is None):
                continue
            if part in link:
                components[part] = os.path.relpath(normalized(link[part]), normalized(folder))
            else:
                write(folder / part)
                components[part] = part
        config = dataclasses.replace(self.config, components=components, fingerprints=self.fingerprints())
        self.write_config(folder, config)
        return folder

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "fp32", vocoder: str | dict | None = None,
                        folder_config: dict[str, Any] | None = None, adapters: Any = None,
                        adapter_scales: Any = None) -> TokenPipeline:
        """Load a token model folder, check that its parts belong together, move it to `device` / `dtype`.

        `vocoder` (a registry name or spec, `soundsmith.codecs.vocoders`) replaces the recorded one of a
        mel-domain codec; a waveform codec (EnCodec architecture) has none to replace. `folder_config`: the
        folder's config.json as `load_pipeline` read it, not read again. `adapters`: LoRA adapter folders of the
        LMs (one or a list; each names its LM), applied at `adapter_scales` (one for all or one per adapter, in
        [0, 2]; default 1); an adapter trained on another LM is refused (pipelines/adapters.py)."""
        from soundsmith.core.files import read_config
        from soundsmith.core.paths import models_tree

        from .adapters import apply_adapters, resolve_adapters

        folder = cls.check_load_args(path, device, dtype)
        chosen = resolve_adapters(adapters, adapter_scales, components=cls.adapter_components, backend=cls.backend,
                                  where=folder)  # before anything loads
        config_path = folder / "config.json"
        raw = read_config(folder) if folder_config is None else folder_config
        cls.check_backend(raw, config_path)
        config = TokenConfig.from_dict(raw, str(config_path))
        parts = cls.part_folders(folder, config.components, str(config_path))  # e.g. the shipped ../clap
        pipe = cls.from_parts(parts, config=config, where=str(config_path), name_or_path=str(folder),
                              recorded=config.fingerprints, vocoder=vocoder, tree=models_tree(folder))
        apply_adapters(pipe, chosen)  # in float32 on the CPU, checked against the fingerprints as loaded
        return pipe.to(device, dtype)

    @classmethod
    def from_parts(cls, parts: Mapping[str, str | os.PathLike], *, config: TokenConfig | None = None,
                   where: str = "parts", name_or_path: str = "",
                   recorded: Mapping[str, str] | None = None,
                   vocoder: str | dict | None = None, tree: str | os.PathLike | None = None) -> TokenPipeline:
        """Build a pipeline from separately trained part folders (the `export/` of each training run).

        Args:
            parts: part name (clap, cond_rvq, kmeans, semantic_lm, coarse_lm, fine_lm (optional), codec)
                -> folder. The parts must belong together: `check_parts` compares their vocabularies.
            config: sampling defaults (default `TokenConfig()`).
            recorded: fingerprints a saved folder's config.json records (see `check_fingerprints`).
            vocoder: replaces the mel-domain codec's recorded vocoder (see `from_pretrained`).
            tree: the models tree the parts' own links must stay in (a saved folder's parent; default: each
                part's parent, core/paths.py).
        """
        from soundsmith.codecs.mel_rvq import load_acoustic_codec
        from soundsmith.core.paths import normalized
        from soundsmith.gen.cond_tokens import ConditioningQuantizer
        from soundsmith.gen.token_lm import CoarseLM, FineLM, SemanticLM

        unknown = sorted(set(parts) - set(PARTS))
        missing = sorted(set(PARTS) - set(parts) - set(OPTIONAL_PARTS))
        if unknown or missing:
            bad = f"unknown part {unknown[0]!r}" if unknown else f"part {missing[0]!r} is missing"
            raise ValueError(f"{where}: {bad} (parts: {', '.join(PARTS)})")
        # `..` folded in as written, not through symlinks: what the links were checked against (core/paths.py)
        paths = {name: normalized(p) for name, p in parts.items()}
        for name, part in paths.items():
            if not (part / "config.json").is_file():
                raise FileNotFoundError(f"{where}: part {name!r} not found at {part}")
        conditioner = ClapConditioner.from_pretrained(paths["clap"])
        cond_rvq = ConditioningQuantizer.from_pretrained(paths["cond_rvq"], clap_fingerprint=conditioner.fingerprint())
        kmeans = load_kmeans(paths["kmeans"], conditioner.model)
        semantic_lm = SemanticLM.from_pretrained(paths["semantic_lm"])
        coarse_lm = CoarseLM.from_pretrained(paths["coarse_lm"])
        fine_lm = FineLM.from_pretrained(paths["fine_lm"]) if "fine_lm" in paths else None
        codec = load_acoustic_codec(paths["codec"], tree=tree, **({"vocoder": vocoder} if vocoder is not None else {}))
        tempo_reader = None
        if "tempo" in paths:
            from soundsmith.gen.tempo import TempoReader

            try:
                tempo_reader = TempoReader.from_pretrained(paths["tempo"])
            except (FileNotFoundError, ValueError) as err:
                raise ValueError(f"{where}: part 'tempo': {err}") from None
        pipe = cls(conditioner, cond_rvq, kmeans, semantic_lm, coarse_lm, fine_lm, codec, config,
                   name_or_path=name_or_path or where, tempo_reader=tempo_reader)
        pipe.check_fingerprints(where, recorded)  # each LM's trained_with: parts from other runs are refused
        return pipe


# ------------------------------------------------------------------------------------------- helpers


def codec_fingerprint(codec: Any) -> str:
    """The acoustic codec's fingerprint, what the coarse and fine LMs record: its own `fingerprint()` where it has
    one (`MelRVQCodec`: codebooks + VAE, not the swappable vocoder), else the hash of all its weights."""
    fingerprint = getattr(codec, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else weights_fingerprint(codec)


def load_kmeans(folder: str | os.PathLike, clap: Any = None) -> Any:
    """The semantic tokenizer in `folder`. Centroids fitted on CLAP frame features get `clap` (our
    `SoundsmithClap`, already loaded) as their feature model, whose fingerprint must be the one they were
    fitted on (the tokenizer checks); other feature models (HuBERT) load from the tokenizer's config."""
    from soundsmith.core.files import read_config
    from soundsmith.gen.clap import SoundsmithClap
    from soundsmith.gen.semantic import ClapFrameFeatures, SemanticTokenizer

    folder = Path(folder)
    spec = read_config(folder).get("features") or {}
    features = None
    if spec.get("kind") == "clap":
        if not isinstance(clap, SoundsmithClap):
            raise ValueError(f"{folder}: the k-means was fitted on our CLAP's frame features, but the CLAP given "
                             f"({type(clap).__name__}) has none")
        features = ClapFrameFeatures(clap)
    return SemanticTokenizer.from_pretrained(folder, features=features)


def _pick(prompt: tuple[Tensor, Tensor], rows: list[int]) -> tuple[Tensor, Tensor]:
    """The prompt tokens of each output (one clip for all prompts, or one per prompt)."""
    semantic, codes = prompt
    if semantic.shape[0] == 1:
        return semantic.expand(len(rows), -1), codes.expand(len(rows), -1, -1)
    return semantic[rows], codes[rows]


def _derived_generator(generator: torch.Generator, index: int) -> torch.Generator:
    """The generator of an output's semantic plan `index` >= 1: seeded from the output's own seed, so a plan is
    the same whatever else is in the batch."""
    derived = torch.Generator(device=generator.device)
    derived.manual_seed((generator.initial_seed() * 1_000_003 + index) % MAX_SEED)
    return derived
