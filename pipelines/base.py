"""The plumbing both backends share: device, dtype, prompts, seeds, guidance batching, progress, output.

A backend subclasses `Pipeline` and writes its algorithm in its own `__call__` (numbered steps, as
diffusers does); everything here is the part that must behave the same for every backend:

- device: `"auto"` picks cuda, then mps, then cpu. dtype: fp32 (default), fp16 or bf16; the parts
  named in `upcast_components` (the VAE and the vocoder, where half precision gives NaN/silence,
  AudioLDM PR #42) stay in float32.
- prompts: a string or a list; each output carries its prompt (`num_waveforms_per_prompt` repeats it,
  `per_output`). Input clips: `read_clip` (a file or an array -> mono at the model's rate).
- randomness: one seed (or `torch.Generator`) per output. A seed `s` gives the outputs seeds s, s+1, ...
  The starting noise of output i is drawn from its own CPU generator, so the same seed, model, device
  and batch size give bit-identical audio and another batch composition changes only the batched
  arithmetic (within 1e-5). No seed: random seeds are drawn and reported, so every output can be redone.
- classifier-free guidance: `cfg_batch` / `cfg_combine` ([uncond, cond] in one batch, as diffusers).
- re-ranking: `rank_by_clap` scores each output with its prompt and orders a prompt's candidates.
- progress: a tqdm bar plus `callback(step, total)`; a callback returning False raises
  `GenerationCancelled`.
- watermark: `finish` marks every output last (pipelines/watermark.py), unless the call says
  `watermark=False`; `watermark_record` gives the sidecar fields, `run_record` all the closing ones. The
  payload comes from `fingerprint`, the hash of the parts' `part_fingerprint`s: each part is hashed once,
  for loading's checks and the payload alike.
- folders: `check_load_args` and `write_config` (config.json: backend, class, version, settings).
- LoRA adapters: `adapter_components` names what a backend's adapters adapt; `adapters` lists the loaded ones
  (pipelines/adapters.py), which every output's parameters carry and `fingerprint` covers; `save_pretrained`
  refuses a pipeline that carries them (`check_no_adapters`: merge them first).
- output: `AudioOutput(audios [B, C, T], sample_rate, prompts, seeds, clap_scores, parameters)` with
  `save(folder)`: WAV/FLAC written atomically, named from a prompt slug and the seed, with a JSON
  sidecar holding every parameter.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import secrets
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from soundsmith.codecs.audio import LOUDNESS_PEAK_DB
from soundsmith.core.checks import MAX_SEED, check_float, check_int, check_seed_range, check_text
from soundsmith.core.files import write_json
from soundsmith.core.runtime import DTYPE_NAMES, resolve_device, resolve_dtype
from soundsmith.core.version import __version__
from soundsmith.core.weights import weights_fingerprint
from torch import Tensor, nn

log = logging.getLogger(__name__)

SAVE_FORMATS = ("wav", "flac")
# what `Pipeline.write_config` adds to a folder's config.json beside the pipeline's settings
CONFIG_METADATA = ("backend", "_class_name", "soundsmith_version")


class GenerationCancelled(RuntimeError):
    """Raised by a pipeline call when its `callback(step, total)` returned False."""


# ------------------------------------------------------------------------------------------- output


def prompt_slug(prompt: str, max_chars: int = 48) -> str:
    """'Rain on a tin roof!' -> 'rain-on-a-tin-roof' (lower-case ASCII words joined by '-')."""
    words = re.findall(r"[a-z0-9]+", prompt.lower().encode("ascii", "ignore").decode())
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > max_chars:
            break
        slug = candidate
    return slug or "audio"


@dataclass
class AudioOutput:
    """What a pipeline call returns.

    Attributes:
        audios: float32 `[B, C, T]` on the CPU, in [-1, 1].
        sample_rate: Hz.
        prompts: the prompt of each output (length B).
        seeds: the seed each output's noise came from; None where the caller passed a generator.
        clap_scores: cosine of each output with its prompt in the conditioner's CLAP space (where the
            conditioner has an audio tower), else None. With several waveforms per prompt the
            outputs of a prompt are ordered best first.
        parameters: every setting of the call and the model (JSON-ready); per-output entries are lists.
        first_index: the index of output 0 in a larger batch made by several calls (pipelines/batch.py):
            the sidecars' "index" and the numbered names of a file target count from it.
    """

    audios: Tensor
    sample_rate: int
    prompts: list[str]
    seeds: list[int | None]
    clap_scores: list[float] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    first_index: int = 0

    def __post_init__(self) -> None:
        assert self.audios.dim() == 3, f"audios must be [B, C, T], got {tuple(self.audios.shape)}"
        assert len(self.prompts) == len(self.seeds) == self.audios.shape[0]

    def __len__(self) -> int:
        return self.audios.shape[0]

    def metadata(self, i: int) -> dict[str, Any]:
        """The JSON sidecar of output i: its prompt, seed and score, then the call's parameters."""
        meta: dict[str, Any] = {"prompt": self.prompts[i], "seed": self.seeds[i], "index": self.first_index + i,
                                "sample_rate": self.sample_rate, "num_samples": int(self.audios.shape[-1]),
                                "duration_s": self.audios.shape[-1] / self.sample_rate}
        if self.clap_scores is not None:
            meta["clap_score"] = self.clap_scores[i]
        for key, value in self.parameters.items():
            meta.setdefault(key, value)
        return meta

    def file_names(self, format: str = "wav") -> list[str]:
        """`<prompt-slug>-<seed>.<format>` per output (`-<index>` without a seed), made unique."""
        names, seen = [], set()
        for i, (prompt, seed) in enumerate(zip(self.prompts, self.seeds)):
            stem = f"{prompt_slug(prompt)}-{seed if seed is not None else f'i{i}'}"
            name, k = stem, 1
            while name in seen:
                k += 1
                name = f"{stem}-{k}"
            seen.add(name)
            names.append(f"{name}.{format}")
        return names

    def save(self, folder: str | os.PathLike, format: str = "wav", *, subtype: str = "PCM_16",
             overwrite: bool = False) -> list[Path]:
        """Write each output to `folder` (created if missing) with a `.json` sidecar; return the audio paths.

        Args:
            folder: output folder; or a file path ending in .wav/.flac for a single output (several
                outputs then get `-2`, `-3`, ... after the stem).
            format: "wav" (default) or "flac"; ignored when `folder` names a file.
            subtype: "PCM_16" (default), "PCM_24" or "FLOAT" (WAV only).
            overwrite: replace existing files; by default an existing name gets `-2`, `-3`, ... instead.
        """
        from soundsmith.codecs.audio import write_audio
        from soundsmith.core.files import check_writable_folder

        target = Path(folder)
        if target.suffix.lower() in (".wav", ".flac"):
            base, fmt = target.parent, target.suffix.lower().lstrip(".")
            indices = range(self.first_index, self.first_index + len(self))
            names = [target.name if i == 0 else f"{target.stem}-{i + 1}{target.suffix}" for i in indices]
        else:
            if format not in SAVE_FORMATS:
                raise ValueError(f"format must be one of {', '.join(SAVE_FORMATS)}, got {format!r}")
            base, fmt = target, format
            names = self.file_names(format)
        check_output_folder(base, create=True)
        check_writable_folder(base)
        paths = []
        for i, name in enumerate(names):
            path = base / name
            if not overwrite:
                path = _free_name(path)
            paths.append(write_audio(path, self.audios[i], self.sample_rate, subtype=subtype,
                                     metadata=self.metadata(i)))
        log.info("wrote %d %s files to %s", len(paths), fmt, base)
        return paths


def check_output_folder(folder: str | os.PathLike, *, create: bool = False) -> Path:
    """Check that `folder` can receive outputs (before any generation work): it exists or can be created
    under an existing writable parent. With `create=True` it is created. One-line errors name it."""
    folder = Path(folder) if str(folder) else Path(".")
    if folder.exists():
        if not folder.is_dir():
            raise NotADirectoryError(f"output folder is not a folder: {folder}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"output folder is not writable: {folder}")
        return folder
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {folder} cannot be created: {parent} is not a writable folder")
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _weak(obj: Any) -> Callable[[], Any]:
    """A weak reference to `obj` where it takes one (modules do), else a strong one (None, plain values)."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _free_name(path: Path) -> Path:
    if not path.exists() and not path.with_suffix(".json").exists():
        return path
    k = 2
    while True:
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        if not candidate.exists() and not candidate.with_suffix(".json").exists():
            log.info("%s exists; writing %s", path.name, candidate.name)
            return candidate
        k += 1


# ------------------------------------------------------------------------------------------ progress


class Progress:
    """A tqdm bar over `total` model evaluations plus the caller's `callback(step, total)`.

    `step()` after each evaluation; a callback returning False (not None) cancels: the bar closes and
    `GenerationCancelled` is raised.
    """

    def __init__(self, total: int, callback: Callable[[int, int], Any] | None = None, *, enabled: bool = True,
                 desc: str = "sampling"):
        from tqdm.auto import tqdm

        self.total, self.done, self.callback = total, 0, callback
        self.bar = tqdm(total=total, disable=not enabled, desc=desc, unit="step", leave=False, dynamic_ncols=True)

    def step(self) -> None:
        self.done += 1
        self.bar.update(1)
        if self.callback is not None and self.callback(self.done, self.total) is False:
            self.close()
            raise GenerationCancelled(f"generation cancelled by the callback at step {self.done} of {self.total}")

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------------------- the base


class Pipeline(ABC):
    """Base class of the backends' pipelines: parts, device and dtype, prompts, seeds, guidance, output.

    Subclasses set `backend`, list their parts in `component_names`, and implement `__call__`,
    `from_pretrained` and `save_pretrained`. Parts load on the CPU in float32; `to(device, dtype)` moves
    them, keeping `upcast_components` in float32.
    """

    backend: ClassVar[str] = ""
    component_names: ClassVar[tuple[str, ...]] = ()
    upcast_components: ClassVar[tuple[str, ...]] = ()  # stay float32 under fp16/bf16
    max_batch_size: ClassVar[int] = 64  # outputs per model batch when the caller gives no batch_size
    # LoRA adapter component (soundsmith_adapter.json "component") -> the attribute it adapts (pipelines/adapters.py)
    adapter_components: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self._device = torch.device("cpu")
        self._dtype = torch.float32
        self.progress_bar = True  # tqdm bar during sampling; the app and tests switch it off
        self.adapters: list[dict[str, Any]] = []  # the loaded LoRA adapters (pipelines/adapters.py), in load order

    # --------------------------------------------------------------------------- device and dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def components(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.component_names if getattr(self, name, None) is not None}

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> Pipeline:
        """Move every part to `device` ("auto", "cpu", "cuda", "mps") and cast to `dtype` (fp32/fp16/bf16).

        `upcast_components` stay in float32 whatever `dtype` is. Returns self.
        """
        dev = self._device if device is None else resolve_device(device)
        dt = self._dtype if dtype is None else resolve_dtype(dtype)
        if dt == torch.float16 and dev.type == "cpu":
            log.warning("fp16 on the CPU is slow and not every op supports it; bf16 is the CPU's half type")
        for name, part in self.components().items():
            want = torch.float32 if name in self.upcast_components else dt
            params = next(part.parameters(), None) if hasattr(part, "parameters") else None
            if params is not None and params.device == dev and params.dtype == want:
                continue  # already there (and diffusers' .to() logs a warning on every cast)
            if hasattr(part, "to"):
                part.to(device=dev, dtype=want)
            if want not in (torch.float32, torch.float16):  # bf16 weights round to other fp16 values
                self.__dict__.get("_part_fingerprints", {}).pop(name, None)
        self._device, self._dtype = dev, dt
        return self

    # -------------------------------------------------------------------------------------- inputs

    @staticmethod
    def check_prompts(prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None,
                      num_waveforms_per_prompt: int) -> tuple[list[str], list[str | None]]:
        """Validate the prompts; return (prompts, one negative prompt or None per prompt)."""
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
            raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompt is an empty list; give at least one prompt")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ValueError(f"prompt[{i}] must be a string, got {type(p).__name__}")
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if not p.strip():
                raise ValueError(f"{where} is empty; give a non-empty text prompt")
            check_text(where, p)
        if negative_prompt is None or isinstance(negative_prompt, str):
            negatives: list[str | None] = [negative_prompt or None] * len(prompts)
        else:
            negatives = [n or None for n in negative_prompt]
            if len(negatives) != len(prompts):
                raise ValueError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts; give one "
                                 "string or one per prompt")
            if any(n is not None and not isinstance(n, str) for n in negatives):
                raise ValueError("negative_prompt must be a string or a list of strings")
        for n in dict.fromkeys(n for n in negatives if n is not None):
            check_text("negative_prompt", n)
        check_int("num_waveforms_per_prompt", num_waveforms_per_prompt, 1, 64)
        return prompts, negatives

    @staticmethod
    def per_output(prompts: list[str], negatives: list[str | None], num_waveforms_per_prompt: int
                   ) -> tuple[list[str], list[str | None], list[int]]:
        """(prompt, negative prompt, index of its prompt) of every output, a prompt's outputs side by side."""
        source = [i for i in range(len(prompts)) for _ in range(num_waveforms_per_prompt)]
        return [prompts[i] for i in source], [negatives[i] for i in source], source

    @staticmethod
    def clip_batch(wave: Any) -> Tensor:
        """A `[C, T]` or `[B, C, T]` numpy array or tensor (checked by the caller) -> float32 CPU `[B, C, T]`."""
        wave = wave if isinstance(wave, Tensor) else torch.from_numpy(np.ascontiguousarray(wave, np.float32))
        wave = wave.float().cpu()
        return wave[None] if wave.dim() == 2 else wave

    def read_clip(self, audio: Any, sample_rate: int, num_prompts: int, name: str) -> tuple[Tensor, str | None]:
        """An input clip -> mono `[B, 1, T]` at `self.sample_rate` (B = 1 or `num_prompts`) and its file name.

        `audio`: an audio file path, or a `[C, T]` / `[B, C, T]` numpy array or tensor (its type checked by the
        caller) at `sample_rate`. One-line errors name the argument `name`."""
        from soundsmith.codecs.audio import check_wave, read_audio, resample

        if isinstance(audio, (str, os.PathLike)):
            wave, _ = read_audio(audio, sample_rate=self.sample_rate, channels=1)
            wave, path = torch.from_numpy(wave)[None], str(audio)
        else:
            check_wave(audio, name)
            wave, path = resample(self.clip_batch(audio).mean(1, keepdim=True), sample_rate, self.sample_rate), None
        if wave.shape[0] not in (1, num_prompts):
            raise ValueError(f"{name} holds {wave.shape[0]} clips for {num_prompts} prompts; give one clip or one per "
                             "prompt")
        return wave, path

    def chunks(self, n_out: int, batch_size: int | None) -> list[list[int]]:
        """The outputs' indices in model batches of `batch_size` (default `max_batch_size`)."""
        chunk = batch_size or self.max_batch_size
        return [list(range(s, min(s + chunk, n_out))) for s in range(0, n_out, chunk)]

    # --------------------------------------------------------------------------------- randomness

    @staticmethod
    def make_generators(num: int, seed: int | Sequence[int] | None = None,
                        generator: torch.Generator | Sequence[torch.Generator] | None = None
                        ) -> tuple[list[torch.Generator], list[int | None]]:
        """One generator per output and the seed it came from.

        - `seed` int s: outputs get seeds s, s+1, ..., all in [0, 2**63-1] (a seed too close to the top for
          `num` outputs is an error, not a wrap to 0); a list: one seed per output.
        - `generator`: one shared by all outputs (drawn from in output order, as diffusers does), or one
          per output; their seeds are reported as None.
        - neither: fresh random seeds, reported so the outputs can be redone.
        """
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        if generator is not None:
            gens = [generator] * num if isinstance(generator, torch.Generator) else list(generator)
            if len(gens) != num or not all(isinstance(g, torch.Generator) for g in gens):
                raise ValueError(f"generator must be one torch.Generator or a list of {num} (one per output), "
                                 f"got {len(gens)}")
            return gens, [None] * num
        if seed is None:
            seeds = [secrets.randbits(63) for _ in range(num)]
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            check_seed_range(int(seed), num)
            seeds = [int(seed) + i for i in range(num)]
        else:
            seeds = list(seed)
            if len(seeds) != num:
                raise ValueError(f"seed has {len(seeds)} entries for {num} outputs; give one int or one per output")
            for s in seeds:
                check_int("seed", s, 0, MAX_SEED)
            seeds = [int(s) for s in seeds]
        return [torch.Generator("cpu").manual_seed(s) for s in seeds], seeds

    @staticmethod
    def randn(shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device,
              dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal noise `[len(generators), *shape]`, item i drawn from generators[i] on the
        generator's device (CPU generators make the noise the same on every device), then moved."""
        items = [torch.randn((1, *shape), generator=g, device=g.device, dtype=torch.float32) for g in generators]
        return torch.cat(items).to(device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------ guidance

    @staticmethod
    def cfg_batch(x: Tensor, do_cfg: bool) -> Tensor:
        """`[B, ...]` -> `[2B, ...]` (the unconditional half first, as diffusers orders it)."""
        return torch.cat([x, x]) if do_cfg else x

    @staticmethod
    def cfg_combine(pred: Tensor, guidance_scale: float, do_cfg: bool) -> Tensor:
        """`[2B, ...]` [uncond, cond] -> uncond + scale * (cond - uncond), `[B, ...]`."""
        if not do_cfg:
            return pred
        uncond, cond = pred.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    # -------------------------------------------------------------------------------------- finish

    def rank_by_clap(self, conditioner: Any, audios: Tensor, prompts: list[str], seeds: list[int | None],
                     num_waveforms_per_prompt: int, rerank: bool, score: bool = False
                     ) -> tuple[Tensor, list[int | None], list[float] | None]:
        """The CLAP score of each output `[B, C, T]` with its prompt (`prompts`: one per output) when `score` is
        asked or candidates are to be re-ranked (`rerank` with several per prompt), and then each prompt's
        candidates ordered best first. No scores without an audio tower. Scores cost the CLAP audio tower on every
        output (22 ms per 5 s clip of the default on 2 threads), so a single output is not scored unless asked."""
        n = num_waveforms_per_prompt
        if not conditioner.has_audio_tower:
            if n > 1 and rerank:
                log.info("this CLAP has no audio tower (text-only, AudioLDM); candidates are not re-ranked")
            return audios, seeds, None
        if not score and not (rerank and n > 1):
            return audios, seeds, None
        scores = conditioner.score(prompts, audios, self.sample_rate).tolist()
        if rerank and n > 1:
            order = []
            for p in range(len(prompts) // n):
                order += sorted(range(p * n, (p + 1) * n), key=lambda i: -scores[i])
            audios, seeds, scores = audios[order], [seeds[i] for i in order], [scores[i] for i in order]
        return audios, seeds, scores

    @property
    def fingerprint(self) -> str:
        """A hash (hex) of the backend and its parts' weights (as `weights_fingerprint` sees them, so an fp16
        export keeps it) and of the loaded LoRA adapters and their scales, computed once. A batch manifest records
        it (pipelines/batch.py): a resume with other weights behind the same folder, or other adapters, is
        refused."""
        parts = tuple((name, id(part)) for name, part in sorted(self.components().items()))
        if getattr(self, "_fingerprint", None) is None or getattr(self, "_fingerprint_parts", parts) != parts:
            self._fingerprint_parts = parts  # a part assigned since (pipe.coarse_lm = ...) is hashed anew
            h = hashlib.sha256(self.backend.encode())
            for name in sorted(self.components()):
                found = self.part_fingerprint(name)
                if found is not None:
                    h.update(f"{name}:{found}".encode())
            for adapter in getattr(self, "adapters", []):  # none: the hash is the plain model's, as before
                h.update(f"adapter:{adapter['component']}:{adapter['fingerprint']}:{adapter['scale']!r}".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def part_fingerprint(self, name: str) -> str | None:
        """`weights_fingerprint` of part `name` (of its `.model` for a wrapper such as a conditioner, whose own
        `fingerprint()` is that hash); None for a part without weights. Computed once per part: loading checks
        the parts with these hashes and `fingerprint` (the watermark payload) hashes the same ones. A part carrying
        LoRA adapters is hashed without them (its base weights, what an adapter records)."""
        memo = self.__dict__.setdefault("_part_fingerprints", {})
        part = getattr(self, name)
        if name not in memo or memo[name][0]() is not part:  # first call, or another object assigned since
            if isinstance(part, nn.Module) and getattr(part, "peft_config", None):
                from soundsmith.gen.adapters import base_fingerprint

                found = base_fingerprint(part)
            elif isinstance(part, nn.Module):
                found = weights_fingerprint(part)
            elif isinstance(getattr(part, "model", None), nn.Module):
                found = part.fingerprint() if callable(getattr(part, "fingerprint", None)) else \
                    weights_fingerprint(part.model)
            else:
                found = None
            memo[name] = (_weak(part), found)
        return memo[name][1]

    @property
    def watermark_payload(self) -> int:
        """The 16-bit id this pipeline's audio carries: the first 16 bits of `fingerprint`. `soundsmith detect`
        prints it; the output's sidecar records it as `watermark_payload`."""
        if getattr(self, "_watermark_payload", None) is None:
            self._watermark_payload = int(self.fingerprint[:4], 16)
        return self._watermark_payload

    def normalize_loudness(self, audios: Tensor, loudness_lufs: float | None, *,
                           sample_rate: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        """Scale each clip `[B, C, T]` to `loudness_lufs` integrated loudness (ITU-R BS.1770, pyloudnorm),
        with its peak capped at `LOUDNESS_PEAK_DB` dBFS; None leaves the audio as it is.

        Generated clips come out at whatever level the decoder gives (often -30 LUFS and below), which
        players and the app render as near silence. Runs before the watermark, which is embedded relative
        to the final level. Clips shorter than 0.4 s (no BS.1770 measure) or silent keep their level.
        Returns (audios, sidecar fields: the target, the peak ceiling and the gain applied per clip in dB).
        """
        if loudness_lufs is None:
            return audios, {"loudness_lufs": None}
        target = check_float("loudness_lufs", loudness_lufs, -70.0, 0.0)
        from soundsmith.codecs.audio import loudness_normalize

        rate = sample_rate if sample_rate is not None else self.sample_rate
        out, gains = audios.detach().to("cpu", torch.float32).clone(), []
        for i in range(out.shape[0]):
            clip = out[i].numpy().astype(np.float64)
            if clip.shape[-1] < 0.4 * rate or not np.any(clip):
                gains.append(0.0)
                continue
            leveled = loudness_normalize(clip, rate, target_lufs=target, peak_db=LOUDNESS_PEAK_DB)
            peak_in, peak_out = float(np.abs(clip).max()), float(np.abs(leveled).max())
            gains.append(round(20 * math.log10(peak_out / peak_in), 2) if peak_in > 0 and peak_out > 0 else 0.0)
            out[i] = torch.from_numpy(leveled.astype(np.float32))
        return out, {"loudness_lufs": target, "loudness_peak_db": LOUDNESS_PEAK_DB, "loudness_gain_db": gains}

    def finish(self, audios: Tensor, *, watermark: bool, sample_rate: int | None = None) -> tuple[Tensor, bool]:
        """The last step of every call: float32 CPU audio `[B, C, T]`, then the watermark.

        Returns (audios, watermarked). The watermark (pipelines/watermark.py: the 16-bit
        `watermark_payload`, keyed, >= 35 dB below the audio) is added here, after decoding and
        re-ranking, so no backend can skip it. Clips shorter than one watermark block (0.5 s) cannot carry
        it and are returned unmarked (watermarked False). `sample_rate` defaults to `self.sample_rate`.
        """
        audios = audios.detach().to("cpu", torch.float32)
        if not watermark:
            return audios, False
        from .watermark import embed, min_samples

        rate = sample_rate if sample_rate is not None else getattr(self, "sample_rate", None)
        if rate is None:
            raise TypeError(f"{type(self).__name__} has no sample_rate; call finish(..., sample_rate=...)")
        if audios.shape[-1] < min_samples(rate):
            log.info("%.2f s clips are too short to carry the watermark (0.5 s at least); left unmarked",
                     audios.shape[-1] / rate)
            return audios, False
        return embed(audios, rate, self.watermark_payload), True

    def watermark_record(self, watermarked: bool) -> dict[str, Any]:
        """The sidecar fields of the watermark: watermarked, its scheme and payload (None when unmarked)."""
        from .watermark import SCHEME

        return {"watermarked": watermarked, "watermark_scheme": SCHEME if watermarked else None,
                "watermark_payload": self.watermark_payload if watermarked else None}

    def run_record(self, watermark: bool, level: dict[str, Any], watermarked: bool) -> dict[str, Any]:
        """The sidecar fields every call's parameters end with: the loaded LoRA adapters (folder, component, scale,
        base and own fingerprints; [] for none), device, dtype, loudness (`normalize_loudness`'s fields),
        watermark and the soundsmith version."""
        return {"adapters": [dict(a) for a in getattr(self, "adapters", [])], "device": str(self.device),
                "dtype": DTYPE_NAMES[self.dtype], "watermark": watermark, **level,
                **self.watermark_record(watermarked), "soundsmith_version": __version__}

    # --------------------------------------------------------------------------------------- folders

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> Pipeline:
        """Load a saved pipeline folder."""

    @abstractmethod
    def save_pretrained(self, path: str | os.PathLike, **kwargs: Any) -> Path:
        """Write the pipeline folder (config.json naming the backend + one sub-folder per part)."""

    def check_no_adapters(self) -> None:
        """`save_pretrained` writes plain weights: a pipeline carrying LoRA adapters is refused in one line (merge
        them first: pipelines/adapters.py `merge_adapters`, or `soundsmith assemble merge`)."""
        adapted = [name for name, part in self.components().items() if getattr(part, "peft_config", None)]
        if adapted or getattr(self, "adapters", None):
            raise ValueError(f"this pipeline carries LoRA adapters ({', '.join(adapted) or 'recorded'}); merge them "
                             "into the weights first (soundsmith assemble merge, or "
                             "soundsmith.pipelines.adapters.merge_adapters) or save the adapter on its own")

    @staticmethod
    def check_load_args(path: str | os.PathLike, device: str | torch.device, dtype: str | torch.dtype) -> Path:
        """The model folder of `from_pretrained`, checked to exist, and its device and dtype checked: a bad
        argument fails before anything is loaded."""
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder not found: {folder}")
        resolve_device(device), resolve_dtype(dtype)
        return folder

    @classmethod
    def check_backend(cls, raw: dict[str, Any], where: str | os.PathLike) -> None:
        """A folder's config.json must name this backend."""
        if raw.get("backend") != cls.backend:
            raise ValueError(f"{where}: backend is {raw.get('backend')!r}, not {cls.backend!r}")

    @staticmethod
    def part_folders(folder: Path, components: dict[str, str], where: str) -> dict[str, Path]:
        """Part name -> folder, for config.json's `components` (paths relative to `folder`): parts live in the
        folder or beside it (the shipped ../clap), nowhere else (core/paths.py)."""
        from soundsmith.core.paths import model_link

        return {name: model_link(rel, folder, where=where, what=f"part {name!r}") for name, rel in components.items()}

    def write_config(self, folder: Path, config: Any) -> Path:
        """The folder's config.json: the backend, the class and the soundsmith version, then `config`'s fields."""
        return write_json(folder / "config.json", {"backend": self.backend, "_class_name": type(self).__name__,
                                                   "soundsmith_version": __version__, **config.to_dict()})
