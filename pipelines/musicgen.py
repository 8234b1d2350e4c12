"""MusicGen folders (transformers `MusicgenForConditionalGeneration` + `MusicgenProcessor`) behind our pipeline call.

    pipe = load_pipeline("path/to/musicgen-small")          # config.json "model_type": "musicgen"
    out = pipe("lo-fi piano with vinyl crackle", duration_s=8, guidance_scale=3.0, top_k=250, seed=0)

The folder is the one `save_pretrained` writes and the Hub publishes (facebook/musicgen-*): config.json
with the T5 text encoder, EnCodec and decoder configs, generation_config.json (the sampling defaults),
the weights, and the processor's tokenizer and feature-extractor files.

Why our own decoding loop instead of calling `model.generate`: the suite's contract is one seed (one
`torch.Generator`) per output, so an output does not change with the batch it was made in, plus a
progress callback that can cancel, sliding windows past the trained length and a negative prompt;
`generate` draws every sample from the global RNG and offers none of the rest. Everything else is
transformers' own: the model's forward with its KV cache, its delay-pattern helpers
(`build_delay_pattern_mask` / `apply_delay_pattern_mask`, MusicGen's codebook offsets of 0..K-1
frames), its CFG and sampling logits processors in `generate`'s order (CFG, temperature, top-k,
top-p), the processor's tokenizer and EnCodec's encode/decode. With `do_sample=False` the tokens and
audio equal `generate`'s (tests/test_musicgen.py).

Guidance as MusicGen does it: the batch is doubled, the second half gets zero text states with a
zero attention mask (or the negative prompt's states), and logits = uncond + scale * (cond - uncond).
Continuation (`audio_prompt`): the clip is encoded by the folder's EnCodec and its codes are the start
of every output, as in audiocraft's `generate_continuation` (the output holds the re-synthesised prompt
followed by the continuation; `duration_s` counts both). Past the decoder's window (generation_config
max_length frames, 30 s for the released models) generation goes on in windows, each prompted with
the last 40% of the previous one (audiocraft: 12 s of a 30 s window).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from soundsmith.codecs.audio import DEFAULT_LOUDNESS_LUFS
from soundsmith.core.checks import check_float, check_int
from soundsmith.core.runtime import resolve_device, resolve_dtype
from torch import Tensor

from .base import AudioOutput, Pipeline, Progress

log = logging.getLogger(__name__)

BACKEND = "musicgen"
DEFAULT_DURATION_S = 5.0  # the CLI's --duration default passes None: "the model's"
MAX_DURATION_S = 300.0  # longer is possible (windows), but 5 min of 50 Hz tokens is ~15k decoder steps
MAX_GUIDANCE = 100.0
WINDOW_PROMPT_SHARE = 0.4  # of the window kept as the next window's prompt (audiocraft: 12 s of 30 s)
SILENCE_PEAK = 1e-4  # an audio prompt whose peak is below this is refused as silent


class MusicgenPipeline(Pipeline):
    """Text (+ optional audio prompt) -> audio with a transformers MusicGen model.

    Args:
        model: a `MusicgenForConditionalGeneration` (eval mode).
        processor: its `MusicgenProcessor` (T5 tokenizer + EnCodec feature extractor).
        name_or_path: where it was loaded from (reported in the outputs' parameters).
    """

    backend = BACKEND
    component_names = ("model",)

    def __init__(self, model: Any, processor: Any, *, name_or_path: str = ""):
        super().__init__()
        self.model = model.eval()
        self.processor = processor
        self.name_or_path = name_or_path
        cfg = model.config
        self.sample_rate = int(cfg.audio_encoder.sampling_rate)
        self.frame_rate = float(cfg.audio_encoder.frame_rate)
        self.num_codebooks = int(model.decoder.num_codebooks)
        self.audio_channels = int(cfg.decoder.audio_channels)
        gen = model.generation_config
        self.start_token = int(gen.decoder_start_token_id if gen.decoder_start_token_id is not None
                               else cfg.decoder.bos_token_id)
        max_length = gen.max_length if gen.max_length and gen.max_length > 2 * self.num_codebooks else None
        max_length = min(max_length or cfg.decoder.max_position_embeddings, cfg.decoder.max_position_embeddings)
        self.window_frames = max_length - self.num_codebooks  # output frames one decoder pass can hold

    # ------------------------------------------------------------------------------------ defaults

    def _default(self, name: str, fallback: Any) -> Any:
        value = getattr(self.model.generation_config, name, None)
        return fallback if value is None else value

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
           ) -> MusicgenPipeline:
        """Move the model; EnCodec stays in float32 (its decoder is not made for half precision)."""
        super().to(device, dtype)
        self.model.audio_encoder.to(torch.float32)
        return self

    # ---------------------------------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        *,
        duration_s: float | None = None,
        guidance_scale: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        do_sample: bool | None = None,
        negative_prompt: str | list[str] | None = None,
        num_waveforms_per_prompt: int = 1,
        seed: int | list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        audio_prompt: Any = None,
        callback: Callable[[int, int], Any] | None = None,
        watermark: bool = True,
        loudness_lufs: float | None = DEFAULT_LOUDNESS_LUFS,
        batch_size: int | None = None,
        num_inference_steps: int | None = None,
        scheduler: str | None = None,
    ) -> AudioOutput:
        """Generate audio for `prompt`.

        Args:
            prompt: one prompt or a list.
            duration_s: seconds per output, in [one frame, 300], the audio prompt included (None: 5).
            guidance_scale: classifier-free guidance, in [0, 100]; > 1 enables it (default: the folder's
                generation_config, 3.0 for the released models).
            top_k: sample among the k most likely codes, k >= 1 (default: generation_config, 250).
            top_p: nucleus sampling threshold in (0, 1]; 1 disables it (default: generation_config, else 1).
            temperature: > 0 (default: generation_config, else 1).
            do_sample: False decodes greedily (the argmax code at every step); default: generation_config's,
                else True.
            negative_prompt: text for the unconditional half of guidance (one string or one per prompt);
                default: MusicGen's null condition (zero text states).
            num_waveforms_per_prompt: outputs per prompt, in [1, 64].
            seed: int (outputs get seed, seed+1, ...) or one per output, in [0, 2**63-1]; default random.
            generator: instead of seed: one torch.Generator, or one per output.
            audio_prompt: `(wave, sample_rate)` with wave `[C, T]` or `[B, C, T]` (one clip, or one per
                prompt), or an audio file path: the outputs continue it.
            callback: `callback(step, total)` after each decoder step; returning False cancels.
            watermark: mark the audio (the base pipeline's last step).
            loudness_lufs: output level in LUFS (integrated, BS.1770), peaks capped at -1 dBFS; None keeps
                the decoder's level (default -16).
            batch_size: outputs per decoding batch (default: all, up to 64); does not change the result
                beyond floating-point batching.
            num_inference_steps, scheduler: diffusion settings; MusicGen has none (one decoder step per
                50 Hz frame), so giving one is an error.
        """
        # 1. check inputs ----------------------------------------------------------------------------
        if num_inference_steps is not None or scheduler is not None:
            raise ValueError("num_inference_steps and scheduler do not apply to MusicGen: it is autoregressive "
                             f"(one decoder step per frame, {self.frame_rate:g} per second)")
        prompts, negatives = self.check_prompts(prompt, negative_prompt, num_waveforms_per_prompt)
        if loudness_lufs is not None:
            check_float("loudness_lufs", loudness_lufs, -70.0, 0.0)
        duration = check_float("duration_s", DEFAULT_DURATION_S if duration_s is None else duration_s, 0.0,
                               MAX_DURATION_S, low_open=True)
        if duration < 1 / self.frame_rate:  # before sampling, as the other backends: at least one frame
            raise ValueError(f"duration_s must be a finite number in [{1 / self.frame_rate:g}, {MAX_DURATION_S:g}], "
                             f"got {duration:g} (the shortest clip this model makes)")
        guidance = check_float("guidance_scale", self._default("guidance_scale", 1.0) if guidance_scale is None
                               else guidance_scale, 0.0, MAX_GUIDANCE)
        sample = bool(self._default("do_sample", True) if do_sample is None else do_sample)
        k = self._default("top_k", 0) if top_k is None else check_int("top_k", top_k, 1)
        p = check_float("top_p", self._default("top_p", 1.0) if top_p is None else top_p, 0.0, 1.0, low_open=True)
        temp = check_float("temperature", self._default("temperature", 1.0) if temperature is None else temperature,
                           0.0, 1e6, low_open=True)
        if batch_size is not None:
            check_int("batch_size", batch_size, 1, 4096)
        total_frames = max(1, math.ceil(duration * self.frame_rate - 1e-9))
        num_samples = max(1, round(duration * self.sample_rate))
        clip, clip_name = (None, None) if audio_prompt is None else self._read_prompt(audio_prompt, len(prompts))
        do_cfg = guidance > 1.0

        # 2. one prompt, negative prompt, generator per output ------------------------------------------
        n_out = len(prompts) * num_waveforms_per_prompt
        source = [i for i in range(len(prompts)) for _ in range(num_waveforms_per_prompt)]
        generators, seeds = self.make_generators(n_out, seed, generator)

        # 3. text states (T5), and the audio prompt's codes (EnCodec) --------------------------------------
        states, mask = self._encode_text(prompts)  # [P, L, D], [P, L]
        uncond = None
        if do_cfg:
            uncond = self._encode_text(negatives, null_if_none=True)
        prompt_codes, scales = None, None
        if clip is not None:
            prompt_codes, scales = self._encode_audio(clip)  # [P or 1, K, S]
            if prompt_codes.shape[-1] >= total_frames:
                raise ValueError(f"audio_prompt ({clip.shape[-1] / self.sample_rate:.3f} s) must be shorter than "
                                 f"duration_s ({duration:g} s), which counts the prompt and the continuation")
            if prompt_codes.shape[-1] >= self.window_frames:
                raise ValueError(f"audio_prompt must be shorter than the model's window of "
                                 f"{self.window_frames / self.frame_rate:.2f} s")
            if prompt_codes.shape[0] == 1:  # one clip for every prompt
                prompt_codes = prompt_codes.expand(len(prompts), -1, -1)
                scales = None if scales is None else scales.expand(len(prompts), -1)
        settings = {"guidance": guidance, "do_sample": sample, "top_k": int(k or 0), "top_p": p, "temperature": temp}

        # 4. sample the codes chunk by chunk, then decode them ---------------------------------------------
        chunks = self.chunks(n_out, batch_size)
        windows = self._plan_windows(total_frames, 0 if prompt_codes is None else prompt_codes.shape[-1])
        steps_per_chunk = sum(frames + self.num_codebooks - 1 - given for given, frames in windows)
        waves = []
        with Progress(len(chunks) * steps_per_chunk, callback, enabled=self.progress_bar, desc="musicgen") as progress:
            for idx in chunks:
                rows = [source[i] for i in idx]
                cond = (states[rows], mask[rows])
                null = None if uncond is None else (uncond[0][rows], uncond[1][rows])
                codes = None if prompt_codes is None else prompt_codes[rows]
                codes = self._generate(cond, null, codes, windows, [generators[i] for i in idx], settings, progress)
                waves.append(self._decode(codes, None if scales is None else scales[rows])[..., :num_samples])
        audios = torch.cat(waves)

        # 5. finish: float32 CPU audio, watermark last --------------------------------------------------
        audios, level = self.normalize_loudness(audios, loudness_lufs)
        audios, watermarked = self.finish(audios, watermark=watermark)
        parameters = {
            "backend": BACKEND, "model": self.name_or_path, "mode": "continuation" if clip is not None else "text-to-audio",
            "duration_s": duration, "guidance_scale": guidance, "do_sample": sample, "top_k": settings["top_k"],
            "top_p": p, "temperature": temp, "negative_prompt": negative_prompt,
            "num_waveforms_per_prompt": num_waveforms_per_prompt, "audio_prompt": clip_name,
            "frames": total_frames, "windows": len(windows), **self.run_record(watermark, level, watermarked),
        }
        out_prompts = [prompts[i] for i in source]
        return AudioOutput(audios, self.sample_rate, out_prompts, seeds, None, parameters)

    # ------------------------------------------------------------------------------------ sampling

    def _plan_windows(self, total_frames: int, prompt_frames: int) -> list[tuple[int, int]]:
        """(frames given as prompt, frames in the window) per decoder pass; one pass when it fits."""
        window = self.window_frames
        if total_frames <= window:
            return [(prompt_frames, total_frames)]
        keep = max(1, int(window * WINDOW_PROMPT_SHARE))
        plan, done = [(prompt_frames, window)], window
        while done < total_frames:
            frames = min(window, keep + total_frames - done)
            plan.append((keep, frames))
            done += frames - keep
        return plan

    def _generate(self, cond: tuple[Tensor, Tensor], null: tuple[Tensor, Tensor] | None, prompt_codes: Tensor | None,
                  windows: list[tuple[int, int]], generators: list[torch.Generator], settings: dict[str, Any],
                  progress: Progress) -> Tensor:
        """Codes `[b, K, total]` over the planned windows (each later window prompted by the last codes)."""
        codes = self._window(cond, null, prompt_codes, windows[0][1], generators, settings, progress)
        for keep, frames in windows[1:]:
            more = self._window(cond, null, codes[..., -keep:], frames, generators, settings, progress)
            codes = torch.cat([codes, more[..., keep:]], dim=-1)
        return codes

    def _window(self, cond: tuple[Tensor, Tensor], null: tuple[Tensor, Tensor] | None, prompt_codes: Tensor | None,
                frames: int, generators: list[torch.Generator], settings: dict[str, Any], progress: Progress) -> Tensor:
        """One decoder pass: `frames` frames of codes `[b, K, frames]`, the first ones `prompt_codes [b, K, P]`.

        The steps of `MusicgenForConditionalGeneration.generate`, one at a time (see the module docstring).
        """
        from transformers import (
            ClassifierFreeGuidanceLogitsProcessor,
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        decoder, K = self.model.decoder, self.num_codebooks
        device = self.device
        b = len(generators)
        # decoder input: the start token, then the prompt's codes; `[b * K, 1 + P]`
        ids = torch.full((b * K, 1), self.start_token, dtype=torch.long, device=device)
        if prompt_codes is not None:
            ids = torch.cat([ids, prompt_codes.reshape(b * K, -1).to(device)], dim=-1)
        max_length = frames + K  # the start token + frames + K - 1 delay positions
        # codebook k is delayed by k frames; `pattern` holds the fixed tokens (-1 where we predict)
        ids, pattern = decoder.build_delay_pattern_mask(ids, pad_token_id=self.start_token, max_length=max_length)
        states, mask = cond
        if null is not None:  # [cond, uncond] in one batch, as MusicGen orders it
            length = max(states.shape[1], null[0].shape[1])
            states = torch.cat([_pad_to(states, length), _pad_to(null[0], length)])
            mask = torch.cat([_pad_to(mask, length), _pad_to(null[1], length)])
        processors = LogitsProcessorList()
        if null is not None:
            processors.append(ClassifierFreeGuidanceLogitsProcessor(settings["guidance"]))
        if settings["do_sample"]:  # `generate`'s warper order
            if settings["temperature"] != 1.0:
                processors.append(TemperatureLogitsWarper(settings["temperature"]))
            if settings["top_k"]:
                processors.append(TopKLogitsWarper(top_k=settings["top_k"], min_tokens_to_keep=1))
            if settings["top_p"] < 1.0:
                processors.append(TopPLogitsWarper(top_p=settings["top_p"], min_tokens_to_keep=1))
        past = None
        while ids.shape[-1] < max_length:
            inputs = decoder.apply_delay_pattern_mask(ids, pattern)  # fixed positions hold their tokens
            if null is not None:
                inputs = inputs.repeat(2, 1)  # [2bK, L]
            if past is not None:
                inputs = inputs[:, -1:]  # the KV cache holds the rest
            out = self.model(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=inputs,
                             past_key_values=past, use_cache=True)
            past = out.past_key_values
            scores = processors(ids, out.logits[:, -1, :].float())  # [bK, V]
            if settings["do_sample"]:
                probs = torch.softmax(scores, dim=-1).cpu()
                # output i's K codebooks drawn from its own generator: an output does not depend on its batch
                nxt = torch.cat([torch.multinomial(probs[i * K:(i + 1) * K], 1, generator=g)[:, 0]
                                 for i, g in enumerate(generators)]).to(device)
            else:
                nxt = scores.argmax(dim=-1)
            ids = torch.cat([ids, nxt[:, None]], dim=-1)
            progress.step()
        ids = decoder.apply_delay_pattern_mask(ids, pattern).view(b, K, max_length)
        # undo the delays: codebook k's frames sit at positions k+1 .. k+frames
        return torch.stack([ids[:, q, q + 1:q + 1 + frames] for q in range(K)], dim=1)  # [b, K, frames]

    # --------------------------------------------------------------------------------- conditions

    def _encode_text(self, texts: Sequence[str | None], *, null_if_none: bool = False) -> tuple[Tensor, Tensor]:
        """T5 states `[n, L, D]` and attention mask `[n, L]`; None -> zero states with a zero mask (MusicGen's
        null condition)."""
        real = [t for t in texts if t is not None]
        enc = self.model.text_encoder
        states, mask = None, None
        if real:
            batch = self.processor.tokenizer(real, padding=True, return_tensors="pt")
            mask = batch["attention_mask"].to(self.device)
            states = enc(input_ids=batch["input_ids"].to(self.device), attention_mask=mask).last_hidden_state
        if states is not None and len(real) == len(texts):
            return states, mask
        assert null_if_none, "a prompt is None"
        length = 1 if states is None else states.shape[1]
        width = int(self.model.config.text_encoder.hidden_size)
        dtype = next(enc.parameters()).dtype
        out = torch.zeros(len(texts), length, width, device=self.device, dtype=dtype)
        out_mask = torch.zeros(len(texts), length, dtype=torch.long, device=self.device)
        k = 0
        for i, t in enumerate(texts):
            if t is not None:
                out[i], out_mask[i] = states[k], mask[k]
                k += 1
        return out, out_mask

    def _read_prompt(self, audio_prompt: Any, num_prompts: int) -> tuple[Tensor, str | None]:
        """`(wave, sr)` or a file path -> `[B, C, T]` float32 at the model's rate and channel count."""
        from soundsmith.codecs.audio import check_wave, read_audio, resample

        name = None
        if isinstance(audio_prompt, (str, os.PathLike)):
            data, _ = read_audio(audio_prompt, sample_rate=self.sample_rate)
            wave, sr, name = torch.from_numpy(np.ascontiguousarray(data))[None], self.sample_rate, str(audio_prompt)
        else:
            if not isinstance(audio_prompt, (tuple, list)) or len(audio_prompt) != 2:
                raise ValueError("audio_prompt must be (wave, sample_rate) or an audio file path")
            wave, sr = audio_prompt
            if not hasattr(wave, "ndim"):
                raise ValueError(f"audio_prompt wave must be a numpy array or torch tensor, got {type(wave).__name__}")
            check_int("audio_prompt sample_rate", sr, 1000, 384_000)
            check_wave(wave, "audio_prompt")
            wave = wave if isinstance(wave, Tensor) else torch.from_numpy(np.ascontiguousarray(wave, np.float32))
            wave = wave.float().cpu()
            if wave.dim() == 2:
                wave = wave[None]
        if wave.dim() != 3 or wave.shape[0] not in (1, num_prompts):
            raise ValueError(f"audio_prompt must be [C, T] or [B, C, T] with B = 1 or {num_prompts} (one per prompt), "
                             f"got {list(wave.shape)}")
        wave = resample(wave, int(sr), self.sample_rate)
        if self.audio_channels == 1:
            wave = wave.mean(1, keepdim=True)
        elif wave.shape[1] == 1:
            wave = wave.expand(-1, 2, -1)
        elif wave.shape[1] != 2:
            raise ValueError(f"audio_prompt has {wave.shape[1]} channels; this stereo model takes 1 or 2")
        if wave.shape[-1] < self.sample_rate / self.frame_rate:
            raise ValueError(f"audio_prompt is too short: need at least {1 / self.frame_rate:.3f} s (one frame)")
        peak = wave.abs().amax(dim=(1, 2))
        if bool((peak < SILENCE_PEAK).any()):
            raise ValueError(f"audio_prompt is silent (peak {float(peak.min()):.1e} < {SILENCE_PEAK:g}); "
                             "give a clip with sound to continue")
        return wave, name

    def _encode_audio(self, wave: Tensor) -> tuple[Tensor, Tensor | None]:
        """`[B, C, T]` -> codes `[B, K, S]` (stereo: left/right codebooks interleaved, as MusicGen does) and
        EnCodec's scales `[B, 1]` (None for models without normalisation)."""
        encodec = self.model.audio_encoder
        # the feature extractor takes 1-D clips for a mono model, [C, T] clips for a stereo one (as the processor)
        clips = [w[0].numpy() for w in wave] if self.audio_channels == 1 else [w.numpy() for w in wave]
        inputs = self.processor.feature_extractor(clips, sampling_rate=self.sample_rate, return_tensors="pt")
        values = inputs["input_values"].to(self.device, torch.float32)  # [B, C, T]
        padding = inputs.get("padding_mask")
        codes, scales = [], []
        for part in [values] if self.audio_channels == 1 else [values[:, :1], values[:, 1:]]:
            out = encodec.encode(part, padding_mask=None if padding is None else padding.to(self.device))
            if out.audio_codes.shape[0] != 1:
                raise ValueError("this EnCodec encodes in chunks (chunk_length_s is set); MusicGen needs one frame")
            codes.append(out.audio_codes[0])  # [B, K', S]
            scales.append(out.audio_scales[0])
        if self.audio_channels == 1:
            result = codes[0]
        else:
            result = torch.stack(codes, dim=2).flatten(1, 2)  # [B, 2K', S]: L0 R0 L1 R1 ...
        if result.shape[1] != self.num_codebooks:
            raise ValueError(f"the folder's EnCodec gives {result.shape[1]} codebooks, the decoder expects "
                             f"{self.num_codebooks}")
        scale = scales[0] if all(s is not None for s in scales) and self.audio_channels == 1 else None
        return result, scale

    def _decode(self, codes: Tensor, scales: Tensor | None) -> Tensor:
        """Codes `[b, K, S]` -> audio `[b, C, S * hop]` (float32)."""
        encodec = self.model.audio_encoder
        if self.audio_channels == 1:
            return encodec.decode(codes[None], audio_scales=[scales]).audio_values.float()
        left = encodec.decode(codes[None, :, ::2], audio_scales=[None]).audio_values
        right = encodec.decode(codes[None, :, 1::2], audio_scales=[None]).audio_values
        return torch.cat([left, right], dim=1).float()

    # ---------------------------------------------------------------------------------------- folders

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "fp32", folder_config: dict[str, Any] | None = None
                        ) -> MusicgenPipeline:
        """Load a transformers MusicGen folder (model + processor files), then move it to `device` / `dtype`.
        `folder_config`: its config.json as `load_pipeline` read it (transformers reads it once more)."""
        from safetensors import SafetensorError
        from soundsmith.core.files import read_config
        from soundsmith.core.weights import weights_error
        from transformers import MusicgenForConditionalGeneration, MusicgenProcessor

        folder = Path(path)
        resolve_device(device), resolve_dtype(dtype)  # a bad argument fails before loading anything
        config = read_config(folder) if folder_config is None else folder_config
        if config.get("model_type") != "musicgen":
            raise ValueError(f"{folder / 'config.json'}: model_type is {config.get('model_type')!r}, not 'musicgen'")
        if not any((folder / f).is_file() for f in ("tokenizer.json", "spiece.model")):
            raise FileNotFoundError(f"{folder}: the MusicGen folder has no T5 tokenizer (tokenizer.json or "
                                    "spiece.model); copy the processor files of the model into it")
        model_config = _read_musicgen_config(folder)
        weights = _check_weights_file(folder)
        try:
            model = MusicgenForConditionalGeneration.from_pretrained(str(folder), config=model_config,
                                                                     local_files_only=True)
            processor = MusicgenProcessor.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError, SafetensorError) as err:
            # a pickled .bin holding Python objects, or bad weight bytes: the message the other loaders give
            raise weights_error(weights, err) or ValueError(
                f"{folder}: not a readable MusicGen folder ({' '.join(str(err).split())[:200]})") from None
        return cls(model, processor, name_or_path=str(folder)).to(device, dtype)

    def save_pretrained(self, path: str | os.PathLike, *, dtype: str | torch.dtype | None = None) -> Path:
        """Write the transformers layout (model, generation config, processor), loadable by transformers too."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.model
        if dtype is not None:
            import copy

            model = copy.deepcopy(model).to(resolve_dtype(dtype))
        model.save_pretrained(str(folder))
        self.processor.save_pretrained(str(folder))
        return folder


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # transformers' names, in the order it picks them


def _read_musicgen_config(folder: Path) -> Any:
    """The folder's `MusicgenConfig`; a config.json whose parts are malformed is a one-line error."""
    from transformers import MusicgenConfig

    try:
        return MusicgenConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # any error here is the file's: transformers validates with its own error types
        raise ValueError(f"{folder / 'config.json'}: not a valid MusicGen config "
                         f"({' '.join(str(err).split())[:200]})") from None


def _check_weights_file(folder: Path) -> Path:
    """The weights file transformers will read; a safetensors header that is corrupt or promises more bytes
    than the file holds is found here, from the header alone (transformers would raise SafetensorError)."""
    found = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{folder}: no MusicGen weights (looked for {', '.join(WEIGHT_FILES)})")
    if found.suffix == ".safetensors":
        from safetensors import safe_open
        from soundsmith.core.weights import weights_error

        try:
            with safe_open(str(found), framework="pt"):
                pass
        except Exception as err:  # SafetensorError (bad header, missing bytes) or OSError
            raise (weights_error(found, err) or ValueError(f"{found}: not readable ({err})")) from None
    return found


def _pad_to(x: Tensor, length: int) -> Tensor:
    """Zero-pad dim 1 of `[n, L, ...]` to `length` (text states and masks of the two guidance halves)."""
    if x.shape[1] == length:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, length - x.shape[1]]
    return torch.nn.functional.pad(x, pad)


