"""The `soundsmith` command.

Each subcommand parses its arguments and calls one library function; the libraries are imported
inside the handlers so that `soundsmith --help` stays fast. A user mistake (bad value, missing or
unreadable file) prints one line, `soundsmith: error: ...`, and exits with status 2; `--verbose`
shows the traceback as well.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from soundsmith import __version__
from soundsmith.core.paths import shipped_models

log = logging.getLogger("soundsmith")

DEFAULT_MODEL_DIR = shipped_models()  # the shipped models/: the checkout's, or the installed package data


def vocoder_names() -> list[str]:
    from soundsmith.codecs.vocoders import VOCODERS  # torch-free: the names only

    return list(VOCODERS)


class UsageError(Exception):
    """A mistake in the command line, reported as one line with exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (`soundsmith: error: ...`) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        where = self.prog.replace("soundsmith", "", 1).strip()
        prefix = f"soundsmith: error: {where + ': ' if where else ''}"
        self.exit(2, f"{prefix}{message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------------- argument types


def seed_type(text: str) -> int:
    """`--seed`: an integer in [0, 2**63 - 1] (the range a torch.Generator accepts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63-1], got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63-1], got {value}")
    return value


def _bounded(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False
             ) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            lo = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"must be in {lo}{low}, {'inf' if high is None else high}], got {value}")
        return value

    return parse


positive_int = _bounded(int, 1)
positive_float = _bounded(float, 0, low_open=True)


def add_adapter_options(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    """`--adapter DIR` (repeatable) and `--adapter-scale S` (none, one for all, or one per --adapter)."""
    from soundsmith.pipelines.adapters import MAX_SCALE

    p.add_argument("--adapter", action="append", default=None, required=required, metavar="DIR",
                   help="LoRA adapter folder (`soundsmith train ... --lora-rank R` exports one), applied to the "
                   "component it was trained for; repeat for several. An adapter trained on another model is refused")
    p.add_argument("--adapter-scale", action="append", default=None, type=_bounded(float, 0, MAX_SCALE), metavar="S",
                   help=f"strength of the adapters in [0, {MAX_SCALE:g}]: once for all, or once per --adapter in the "
                   "same order (default: 1, the adapter as trained; 0 gives the model without it)")


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """`--threads N`: torch's CPU threads, set before any model work (pipelines.base.set_threads)."""
    p.add_argument("--threads", type=_bounded(int, 1, 4096), default=None, metavar="N",
                   help="CPU threads for torch (default: $OMP_NUM_THREADS when set, else this machine's physical "
                   "cores; on a busy machine fewer can be faster)")


# -------------------------------------------------------------------------------------- subcommands


def cmd_generate(args: argparse.Namespace) -> None:
    from soundsmith.core.runtime import set_threads
    from soundsmith.pipelines import load_pipeline
    from soundsmith.pipelines.base import check_output_folder
    from soundsmith.pipelines.batch import DEFAULT_OUTPUTS_PER_CALL as PER_CALL
    from soundsmith.pipelines.batch import BatchInterrupted, Manifest, generate_batch
    from soundsmith.pipelines.prompts import read_prompts_file

    prompts = list(args.prompt) + (read_prompts_file(args.prompts_file) if args.prompts_file else [])
    if not prompts:
        raise UsageError("give a prompt or --prompts-file FILE")
    _check_generate_args(args, prompts)  # before any model work
    out = Path(args.out)
    to_file = out.suffix.lower() in (".wav", ".flac")
    check_output_folder(out.parent if to_file else out)  # before any work
    model = args.model or DEFAULT_MODEL_DIR / f"default-{args.backend or 'ldm'}"
    # a --prompts-file batch into a folder resumes: its manifest is checked before any model work
    manifest = None if to_file or not args.prompts_file else Manifest.open(
        out, _batch_arguments(args, model, prompts), ignore=("model", "prompts_file", "adapter_folders"),
        keep_previous=("seed",), defaults={"adapters": [], "adapter_folders": [], "beat_guidance": None})
    if manifest is not None and manifest.arguments["seed"] is None:  # a resume must redraw the same noise
        import secrets

        manifest.arguments["seed"] = secrets.randbits(62)  # 62 bits: seed + i stays below 2**63 for any batch
    seed = args.seed if manifest is None else manifest.arguments["seed"]
    set_threads(args.threads)
    if not args.verbose:  # the sampling bar is the progress shown; no per-part weight-loading bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    load_kwargs = {"vocoder": args.vocoder} if args.vocoder else {}
    if args.adapter:  # each applied to the component it names; checked against the loaded one's fingerprint
        load_kwargs.update(adapters=args.adapter, adapter_scales=args.adapter_scale)
    pipe = load_pipeline(model, backend=args.backend, device=args.device, dtype=args.dtype, **load_kwargs)
    if manifest is not None:
        manifest.check("model_fingerprint", pipe.fingerprint)
    kwargs = {"duration_s": args.duration, "negative_prompt": args.negative, "watermark": not args.no_watermark,
              "loudness_lufs": None if args.no_loudness else args.loudness}
    for key, value in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance),
                       ("scheduler", args.scheduler), ("batch_size", args.batch_size)):
        if value is not None:
            kwargs[key] = value
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                "audio_prompt": args.audio_prompt, "semantic_candidates": args.semantic_candidates,
                "beat_guidance": args.beat_guidance}
    given = {key: value for key, value in sampling.items() if value is not None}
    if given and pipe.backend == "ldm":
        flag = "--" + next(iter(given)).replace("_", "-")
        raise UsageError(f"{flag} applies to token models (--backend tokens, MusicGen folders), not to the "
                         f"latent-diffusion model {model}")
    if args.guidance_cutoff is not None:
        if pipe.backend != "ldm" or "guidance_cutoff" not in inspect.signature(pipe.__call__).parameters:
            raise UsageError(f"--guidance-cutoff applies to soundsmith latent-diffusion models, not to the "
                             f"{pipe.backend} model {model}")
        kwargs["guidance_cutoff"] = args.guidance_cutoff
    for flag, value in (("--semantic-candidates", args.semantic_candidates), ("--beat-guidance", args.beat_guidance)):
        if value is not None and (pipe.backend != "tokens" or flag[2:].replace("-", "_") not in
                                  inspect.signature(pipe.__call__).parameters):
            raise UsageError(f"{flag} applies to soundsmith token models (--backend tokens), not to the "
                             f"{pipe.backend} model {model}")
    kwargs.update(given)
    if args.clap_score:
        if "clap_score" not in inspect.signature(pipe.__call__).parameters:
            raise UsageError(f"--clap-score applies to soundsmith models (ldm, tokens), not to {model}")
        kwargs["clap_score"] = True
    if manifest is not None and manifest.done:
        print(f"soundsmith: resuming: {len(manifest.done)} of {len(prompts) * args.num} clips are already in {out}",
              file=sys.stderr)
    from tqdm.auto import tqdm

    try:  # clips are written as each call returns: Ctrl-C or a crash keeps every finished one
        generate_batch(pipe, prompts, args.out, seed=seed, num_per_prompt=args.num, call_kwargs=kwargs,
                       format=args.format, outputs_per_call=args.batch_size or PER_CALL,
                       manifest=manifest, echo=lambda path: tqdm.write(str(path), file=sys.stdout))
    except BatchInterrupted as stop:
        resume = "" if manifest is None else f"; resume with: {_resume_command(args, seed)}"
        raise KeyboardInterrupt(f"{stop}{resume}") from None


def _batch_arguments(args: argparse.Namespace, model: str | Path, prompts: list[str]) -> dict:
    """What determines a --prompts-file batch's audio and file names, as its manifest records it. Not in it:
    --device and --batch-size (they change only floating-point rounding) and --threads."""
    import hashlib
    import json

    audio_prompt = None
    if args.audio_prompt is not None:  # the clip's content, not its name
        audio_prompt = hashlib.sha256(Path(args.audio_prompt).read_bytes()).hexdigest()
    adapters = getattr(args, "adapter_choices", None) or []  # by their weights and scale (their folders may move)
    return {"model": str(Path(model).resolve()), "prompts_file": str(args.prompts_file), "prompts": len(prompts),
            "prompts_sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(), "num": args.num,
            "seed": args.seed, "duration": args.duration, "steps": args.steps, "guidance": args.guidance,
            "guidance_cutoff": args.guidance_cutoff, "scheduler": args.scheduler, "negative": args.negative,
            "watermark": not args.no_watermark,
            "loudness": None if args.no_loudness else args.loudness, "vocoder": args.vocoder, "dtype": args.dtype,
            "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "semantic_candidates": args.semantic_candidates, "beat_guidance": args.beat_guidance,
            "audio_prompt_sha256": audio_prompt,
            "format": args.format, "adapters": [[a.component, a.fingerprint, a.scale] for a in adapters],
            "adapter_folders": [str(Path(a.info.folder).resolve()) for a in adapters]}


def _resume_command(args: argparse.Namespace, seed: int) -> str:
    """The command line that resumes an interrupted batch: this one, with its (maybe drawn) seed made explicit."""
    import shlex

    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    if args.seed is None:
        argv += ["--seed", str(seed)]
    return shlex.join(["soundsmith", *argv])


def _check_generate_args(args: argparse.Namespace, prompts: list[str]) -> None:
    """What `generate` can check before loading a model: the text (bytes that are not UTF-8 reach argv as
    lone surrogates, which tokenizers reject with a TypeError) and the seeds (one per clip, none past 2**63-1)."""
    from soundsmith.core.checks import check_seed_range, check_text

    for i, prompt in enumerate(prompts):
        check_text("prompt" if len(prompts) == 1 else f"prompt {i + 1}", prompt)
    if args.negative is not None:
        check_text("--negative", args.negative)
    if args.seed is not None:
        try:
            check_seed_range(args.seed, len(prompts) * args.num)
        except ValueError as err:
            raise UsageError(f"--seed: {err}") from None
    args.adapter_choices = _check_adapter_args(args)


def _check_adapter_args(args: argparse.Namespace) -> list:
    """`--adapter DIR ...` and `--adapter-scale S ...` (none, one for all, or one per adapter), each folder read as
    an adapter folder: one-line errors before any model work. Returns the adapters (pipelines/adapters.py)."""
    adapters, scales = args.adapter or [], args.adapter_scale or []
    if scales and not adapters:
        raise UsageError("--adapter-scale needs --adapter DIR (a LoRA adapter folder)")
    if len(scales) > 1 and len(scales) != len(adapters):
        raise UsageError(f"--adapter-scale is given {len(scales)} times for {len(adapters)} --adapter folder(s); give "
                         "one scale for all or one per --adapter, in the same order")
    if not adapters:
        return []
    from soundsmith.pipelines.adapters import resolve_adapters

    return resolve_adapters(adapters, scales or None)


def cmd_data_synth(args: argparse.Namespace) -> None:
    from soundsmith.train.synth import synthesize_corpus

    domains = tuple(d.strip() for d in args.domains.split(",") if d.strip())
    synthesize_corpus(
        args.out, num_clips=args.num_clips, hours=args.hours, seed=args.seed, clip_seconds=args.clip_seconds,
        sample_rate=args.sample_rate, workers=args.workers, domains=domains, caption_style=args.caption_style,
    )


def cmd_data_import(args: argparse.Namespace) -> None:
    from soundsmith.train.data_import import import_folder

    # the bar only on a terminal, as `data stats`: in a log a failure stays the one line on stderr
    report = import_folder(args.src, args.out, captions=args.captions, sample_rate=args.sample_rate,
                           clip_seconds=args.clip_seconds, max_clips_per_file=args.max_clips_per_file,
                           label_captions=args.label_captions, progress=sys.stderr.isatty())
    print(report)


def cmd_data_stats(args: argparse.Namespace) -> int:
    from soundsmith.train.stats import PROBLEMS, corpus_check

    # the bar only on a terminal: in a log or a pipe it would be the only thing on stderr besides the verdict
    report, problems = corpus_check(args.data, progress=sys.stderr.isatty())
    print(report)
    if not problems:
        return 0
    found = ", ".join(f"{problems[kind]} {kind}" for kind in PROBLEMS if problems[kind])
    print(f"soundsmith: data stats: problems found ({found}); see the file checks above", file=sys.stderr)
    return 1  # a script can tell a clean corpus from one to fix


def cmd_data_prompts(args: argparse.Namespace) -> None:
    from soundsmith.train.prompt_sets import write_prompt_sets

    for path in write_prompt_sets(args.corpus, args.out, seed=args.seed):
        print(path)


def cmd_train(args: argparse.Namespace) -> None:
    from soundsmith.train.components import COMPONENTS

    if args.component not in COMPONENTS:
        known = ", ".join(sorted(COMPONENTS))
        raise UsageError(f"unknown component {args.component!r}; available: {known}")
    train = COMPONENTS[args.component]()
    # --set KEY=VALUE overrides any config field; --clap / --features are shorthands for the fields of
    # the token backend's tokenizers (cond-rvq, kmeans, mel-rvq); a component without the field says so in one line
    overrides = list(args.set or [])
    overrides += [f"{k}={v}" for k, v in (("clap", args.clap), ("features", args.features),
                                          ("mel_codec", args.mel_codec)) if v is not None]
    overrides += _finetune_overrides(args)
    extra = {"overrides": overrides} if overrides else {}
    if args.force_change:  # a resume with settings that change the run (refused without it)
        extra["force_change"] = True
    from soundsmith.core.runtime import set_threads

    set_threads(args.threads)
    if not args.verbose:  # the training bar is the progress shown; no per-part weight-loading bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    train(config=args.config, data=args.data, out=args.out, resume=args.resume, max_steps=args.max_steps, **extra)


FINETUNE_COMPONENTS = ("unet", "semantic-lm", "coarse-lm", "fine-lm")  # those `train --init` / `--lora-*` apply to


def _finetune_overrides(args: argparse.Namespace) -> list[str]:
    """`--init`, `--lora-rank`, `--lora-alpha`, `--lora-targets` as config overrides (train/finetune.py), for the
    components that can start from a model; paths as JSON strings, so a folder named `null` stays a path."""
    import json

    given = {"init": args.init, "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
             "lora_targets": args.lora_targets}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return []
    if args.component not in FINETUNE_COMPONENTS:
        flag = "--" + next(iter(given)).replace("_", "-")
        raise UsageError(f"{flag} applies to {', '.join(FINETUNE_COMPONENTS)} (fine-tuning), not to {args.component}")
    if "lora_targets" in given:
        targets = [t.strip() for t in given["lora_targets"].split(",") if t.strip()]
        if not targets:
            raise UsageError("--lora-targets: give module names separated by commas, e.g. conv1,conv2,to_q")
        given["lora_targets"] = targets
    if "init" in given and not str(given["init"]).strip():
        raise UsageError("--init: give a model folder")
    return [f"{key}={json.dumps(value)}" for key, value in given.items()]


def cmd_eval_codec(args: argparse.Namespace) -> None:
    from soundsmith.eval.codec_report import codec_report

    print(codec_report(args.model, args.data, num_clips=args.num_clips, split=args.split, levels=args.levels,
                       vocoder=args.vocoder))


def cmd_eval_clap(args: argparse.Namespace) -> None:
    from soundsmith.eval.clap_metrics import clap_report

    print(clap_report(args.model, args.data, split=args.split, num_clips=args.num_clips))


def _eval_scoring_kwargs(args: argparse.Namespace) -> dict:
    """The scoring options `eval run` and `eval score` share (see soundsmith.eval.harness.score_folders)."""
    return {"metrics": [m.strip() for m in args.metrics.split(",") if m.strip()], "embedding": args.embedding,
            "embedding_checkpoint": args.embedding_checkpoint, "clap_model": args.clap_model,
            "labels_model": args.labels_model, "feature_labels_model": args.feature_labels_model,
            "covariance": args.covariance, "cache_dir": args.cache_dir,
            "novelty_index": args.novelty_index, "novelty_threshold": args.novelty_threshold}


def cmd_eval_run(args: argparse.Namespace) -> None:
    from soundsmith.core.runtime import set_threads
    from soundsmith.eval.harness import run_eval
    from soundsmith.eval.report import format_metric_table

    set_threads(args.threads)
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    pipeline_kwargs = {"duration_s": args.duration, "num_inference_steps": args.steps, "guidance_scale": args.guidance,
                       "scheduler": args.scheduler, "negative_prompt": args.negative}
    if args.no_watermark:
        pipeline_kwargs["watermark"] = False
    results = run_eval(args.model or DEFAULT_MODEL_DIR / "default-ldm", args.prompts, args.reference, args.out,
                       num_per_prompt=args.num_per_prompt, seed=args.seed, batch_size=args.batch_size,
                       limit=args.limit, pipeline_kwargs=pipeline_kwargs, device=args.device, dtype=args.dtype,
                       **_eval_scoring_kwargs(args))
    if results is not None:  # None on the other processes of `accelerate launch`
        print(format_metric_table(results))
        print(f"report: {Path(args.out) / 'report.html'}")


def cmd_eval_score(args: argparse.Namespace) -> None:
    from soundsmith.eval.harness import score_folders
    from soundsmith.eval.report import format_metric_table

    results = score_folders(args.generated, args.reference, out=args.out, device=args.device,
                            **_eval_scoring_kwargs(args))
    print(format_metric_table(results))
    if args.out:
        print(f"report: {Path(args.out) / 'report.html'}")


def cmd_eval_index(args: argparse.Namespace) -> None:
    from soundsmith.eval.novelty import build_index, load_index

    if not args.verbose:  # the embedding bar is the progress shown; no weight-loading bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    path = build_index(args.data, args.out, embedder=args.embedder, embedder_checkpoint=args.embedder_checkpoint,
                       split=args.split, cache_dir=args.cache_dir, device=args.device)
    print(path)
    print(load_index(path).describe())


def cmd_eval_train_labels(args: argparse.Namespace) -> None:
    from soundsmith.eval.labels import LabelTrainConfig, format_label_report, train_label_classifier

    config = LabelTrainConfig(**{k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None})
    clf = train_label_classifier(args.data, args.out, clap=args.clap, cache_dir=args.cache_dir, config=config)
    print(format_label_report(clf.report))
    print(f"saved: {args.out}")


def cmd_eval_train_feature_labels(args: argparse.Namespace) -> None:
    from soundsmith.eval.feature_labels import format_feature_label_report, train_feature_label_classifier

    clf = train_feature_label_classifier(args.data, args.out, cache_dir=args.cache_dir)
    print(format_feature_label_report(clf.report))
    print(f"saved: {args.out}")


def cmd_app(args: argparse.Namespace) -> None:
    from soundsmith.app.launch import launch_app

    code = launch_app(port=args.port, model_dir=args.model_dir, address=args.address,
                      novelty_index=args.novelty_index, out=args.out, allow_any_folder=args.allow_any_folder)
    if code not in (0, 130):  # streamlit said why on stderr
        raise UsageError(f"streamlit exited with status {code}")


def cmd_detect(args: argparse.Namespace) -> None:
    from soundsmith.pipelines.watermark import detect_file

    failed = 0
    for path in args.files:
        try:
            print(f"{path}: {detect_file(path, key=args.key).describe()}", flush=True)
        except (ValueError, OSError) as err:
            if len(args.files) == 1:
                raise
            failed += 1
            print(f"soundsmith: error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
    if failed:
        raise UsageError(f"{failed} of {len(args.files)} files could not be checked")


def cmd_assemble_merge(args: argparse.Namespace) -> None:
    from soundsmith.pipelines import load_pipeline
    from soundsmith.pipelines.adapters import save_merged

    _check_adapter_args(args)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} already exists and is not empty; give a new folder")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    pipe = load_pipeline(args.model, device="cpu", dtype="fp32", adapters=args.adapter,
                         adapter_scales=args.adapter_scale)
    print(save_merged(pipe, args.model, out, dtype="fp16" if args.fp16 else None))


def cmd_assemble_tokens(args: argparse.Namespace) -> None:
    from soundsmith.pipelines.tokens import PARTS, TokenPipeline

    parts = {name: getattr(args, name) for name in PARTS if getattr(args, name) is not None}
    pipe = TokenPipeline.from_parts(parts, where="soundsmith assemble tokens")
    link = {"clap": args.clap} if args.link_clap else None
    print(pipe.save_pretrained(args.out, dtype="fp16" if args.fp16 else None, link=link))


def cmd_convert(args: argparse.Namespace) -> None:
    from soundsmith.pipelines.convert import CONVERTERS

    if args.source_format not in CONVERTERS:
        known = ", ".join(sorted(CONVERTERS))
        raise UsageError(f"unknown source format {args.source_format!r}; available: {known}")
    out = CONVERTERS[args.source_format]()(args.source, args.out, trust_pickle=args.trust_pickle)
    print(out)


# ----------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="soundsmith", description="Text prompt -> audio.")
    parser.add_argument("--version", action="version", version=f"soundsmith {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    p = sub.add_parser("generate", help="generate audio from a text prompt")
    p.add_argument("prompt", nargs="*", help="one or more prompts (quote each)")
    p.add_argument("--prompts-file", default=None, help="more prompts: text lines, CSV (a 'prompt' column) or JSONL; "
                   "into a folder, rerunning the same command resumes (generate_manifest.jsonl)")
    p.add_argument("--model", default=None, help="model folder, ours or a diffusers AudioLDM/MusicLDM folder "
                   f"(default: the shipped {DEFAULT_MODEL_DIR / 'default-ldm'})")
    p.add_argument("--backend", default=None, choices=("ldm", "tokens"),
                   help="use this backend's shipped default model; with --model, the folder must be this backend")
    p.add_argument("--out", default="outputs", help="output folder (created if missing) or a .wav/.flac file path "
                   "(default: %(default)s)")
    p.add_argument("--duration", type=positive_float, default=None, help="seconds of audio (default: the model's, 5)")
    p.add_argument("--steps", type=_bounded(int, 1, 1000), default=None, help="sampler steps (default: the model's)")
    p.add_argument("--guidance", type=_bounded(float, 0, 100), default=None, help="guidance scale (default: the model's)")
    p.add_argument("--guidance-cutoff", type=_bounded(float, 0, 1), default=None,
                   help="latent diffusion: share of the steps, from the first, that run guidance; later steps cost "
                   "half (default: the model's)")
    p.add_argument("--negative", "--negative-prompt", dest="negative", default=None, help="what to steer away from")
    p.add_argument("--scheduler", default=None, help="sampler: dpmsolver++, ddim, euler, euler-ancestral, heun, unipc, "
                   "ddpm, pndm, lms (default: the model's)")
    p.add_argument("--num", "--num-per-prompt", dest="num", type=_bounded(int, 1, 64), default=1,
                   help="waveforms per prompt, best first by CLAP score (default: 1)")
    p.add_argument("--seed", type=seed_type, default=None, help="seed in [0, 2**63-1] (outputs get seed, seed+1, ...); "
                   "default: random, in the file names")
    p.add_argument("--batch-size", type=_bounded(int, 1, 4096), default=None, help="outputs per model batch, also "
                   "the clips written at a time (whole prompts; default: 16)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda[:N] or mps")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="model precision (default: fp32)")
    p.add_argument("--format", choices=("wav", "flac"), default="wav")
    p.add_argument("--no-watermark", action="store_true", help="skip the generation watermark")
    p.add_argument("--clap-score", action="store_true", help="score every output with its prompt in the model's CLAP "
                   "space (the sidecar's clap_score; costs the CLAP audio tower per clip). Candidates of --num > 1 are "
                   "always scored, to rank them")
    p.add_argument("--vocoder", default=None, choices=vocoder_names(), help="mel -> wave decoder replacing the "
                   "model's own (mel-path models; default: the one its config.json names)")
    from soundsmith.codecs.audio import DEFAULT_LOUDNESS_LUFS

    p.add_argument("--loudness", type=_bounded(float, -70, 0), default=DEFAULT_LOUDNESS_LUFS, metavar="LUFS",
                   help="output level, integrated LUFS with peaks capped at -1 dBFS (default: %(default)s)")
    p.add_argument("--no-loudness", action="store_true", help="keep the decoder's level (no loudness normalisation)")
    add_adapter_options(p)
    add_threads_option(p)
    tok = p.add_argument_group("token models (--backend tokens, MusicGen folders)")
    tok.add_argument("--temperature", type=float, default=None, help="sampling temperature > 0 for every stage "
                     "(default: the model's per-stage values)")
    tok.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens, k >= 1 (default: the "
                     "model's)")
    tok.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1] (default: the model's)")
    tok.add_argument("--audio-prompt", default=None, help="audio file to continue: the output starts with it and "
                     "--duration counts it")
    tok.add_argument("--semantic-candidates", type=_bounded(int, 1, 64), default=None, metavar="N",
                     help="semantic plans sampled per clip, the one nearest the prompt in CLAP space kept; 1 turns "
                     "it off (default: the model's; soundsmith token models only)")
    tok.add_argument("--beat-guidance", type=_bounded(float, 0, 100), default=None, metavar="B",
                     help="how hard sampling follows the beat grid of a tempo the prompt names, both LM stages; 0 "
                     "ignores the grid (default: the model's; soundsmith token models with a tempo part only)")
    p.set_defaults(func=cmd_generate)

    data = sub.add_parser("data", help="synthesize, import and inspect training corpora")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND",
                               parser_class=OneLineParser)
    p = dsub.add_parser("synth", help="synthesize the captioned corpus (music, sfx, speech)")
    p.add_argument("--out", required=True, help="output folder (an audiofolder); rerunning resumes")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--num-clips", type=positive_int, help="number of clips")
    size.add_argument("--hours", type=positive_float, help="hours of audio")
    p.add_argument("--seed", type=seed_type, default=0, help="corpus seed (default: 0)")
    p.add_argument("--clip-seconds", type=_bounded(float, 0.5, 60.0), default=5.0, help="clip length, 0.5-60 s (default: 5)")
    p.add_argument("--sample-rate", type=_bounded(int, 8000, 48000), default=16000, help="8000-48000 Hz (default: 16000)")
    p.add_argument("--workers", type=_bounded(int, 1, 256), default=1, help="worker processes (default: 1)")
    p.add_argument("--domains", default="music,sfx,speech", help="comma list of music,sfx,speech (default: all)")
    p.add_argument("--caption-style", default="train", help="caption template set: train, heldout or all (default: train)")
    p.set_defaults(func=cmd_data_synth)
    p = dsub.add_parser("import", help="turn a folder of your own sounds into a corpus for `train --data`")
    p.add_argument("src", help="folder of .wav/.flac/.ogg files (searched recursively)")
    p.add_argument("--out", required=True, help="corpus folder to write (new, empty, or an earlier import: replaced)")
    p.add_argument("--captions", default=None, metavar="FILE", help="CSV or JSONL with a file column and a caption "
                   "column (default: SRC/metadata.jsonl or SRC/metadata.csv if present, else captions from the "
                   "file and folder names: dogs/dog_bark_03.wav -> 'dog bark')")
    p.add_argument("--label-captions", default=None, metavar="MODEL_DIR", help="append the top class of this label "
                   "classifier (e.g. models/labels) to each name-derived caption")
    p.add_argument("--sample-rate", type=_bounded(int, 8000, 48000), default=16000,
                   help="corpus rate, 8000-48000 Hz (default: 16000)")
    p.add_argument("--clip-seconds", type=_bounded(float, 0.5, 60.0), default=5.0,
                   help="training window, 0.5-60 s: shorter files are looped, longer ones split (default: 5)")
    p.add_argument("--max-clips-per-file", type=positive_int, default=12, metavar="N",
                   help="clips taken from one long file at most (default: %(default)s)")
    p.set_defaults(func=cmd_data_import)
    p = dsub.add_parser("stats", help="clips and hours per domain and label; check the files (exit status 1 when "
                        "a file is missing, unreadable, silent or clipped)")
    p.add_argument("data", help="corpus folder")
    p.set_defaults(func=cmd_data_stats)
    p = dsub.add_parser("prompts", help="write the standard prompt sets (benchmarks/prompts/) from a corpus")
    p.add_argument("corpus", help="standard corpus folder (its test split)")
    p.add_argument("--out", default="benchmarks/prompts", help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=seed_type, default=0)
    p.set_defaults(func=cmd_data_prompts)

    p = sub.add_parser("train", help="train one component")
    p.add_argument("component", help="which component (e.g. vae, vocoder, codec, clap, unet)")
    p.add_argument("--config", default=None, help="JSON config file (default: the component's defaults)")
    p.add_argument("--data", required=True, help="corpus folder")
    p.add_argument("--out", required=True, help="run folder for checkpoints, logs and samples")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--force-change", action="store_true", help="with --resume: accept settings that change the "
                   "run (batch size, model, learning rate, data...); the change is logged in "
                   "OUT/config_changes.jsonl")
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--clap", default=None, help="cond-rvq, kmeans: CLAP folder (default: models/clap)")
    p.add_argument("--features", default=None, help="kmeans: frame features, 'clap' (default) or 'hubert:PATH:LAYER'")
    p.add_argument("--mel-codec", default=None, help="mel-rvq: the mel codec folder whose VAE latent it quantizes "
                   "(default: models/mel-codec)")
    ft = p.add_argument_group("fine-tuning (unet, semantic-lm, coarse-lm, fine-lm)")
    ft.add_argument("--init", default=None, metavar="MODEL_DIR", help="start from this model folder's weights (e.g. "
                    "models/default-ldm, models/default-tokens, or a diffusers AudioLDM folder for unet); its VAE, "
                    "vocoder, CLAP, codec and tokenizers are used as they are (they win over config fields). The "
                    "export is a complete model folder, or with --lora-rank the adapter folder. Default config: "
                    "train/configs/unet-finetune.json, lm-finetune.json (unet-lora.json, lm-lora.json with --lora-rank)")
    ft.add_argument("--lora-rank", type=positive_int, default=None, metavar="R", help="train only a LoRA adapter of "
                    "rank R >= 1 (with --init; e.g. 8)")
    ft.add_argument("--lora-alpha", type=positive_float, default=None, metavar="A",
                    help="LoRA alpha: the update is scaled by A / R (default: R)")
    ft.add_argument("--lora-targets", default=None, metavar="A,B,C", help="layers to adapt (peft target_modules: a "
                    "module whose name is one, or ends in '.' + one); default: unet conv1,conv2,time_emb_proj,to_q,"
                    "to_k,to_v,to_out.0,class_embedding; LMs attn.qkv,attn.proj,fc,out")
    add_threads_option(p)
    p.set_defaults(func=cmd_train)

    evaluation = sub.add_parser("eval", help="score codecs and generated sets")
    esub = evaluation.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND",
                                     parser_class=OneLineParser)
    p = esub.add_parser("codec", help="reconstruction report of a codec (mel L1, MR-STFT, SI-SDR, RTF) per domain")
    p.add_argument("--model", required=True, help="codec folder (config.json), e.g. models/mel-codec")
    p.add_argument("--data", required=True, help="corpus folder with metadata.jsonl")
    p.add_argument("--num-clips", type=positive_int, default=None, help="clips to score, spread over domains (default: all)")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test", help="corpus split (default: test)")
    p.add_argument("--levels", type=positive_int, default=None, help="RVQ levels to encode with (RVQ codecs; "
                   "default: all)")
    p.add_argument("--vocoder", default=None, help="decode a mel-domain codec through this vocoder instead of its "
                   "own (a registry name, e.g. griffin-lim)")
    p.set_defaults(func=cmd_eval_codec)
    p = esub.add_parser("clap", help="CLAP retrieval R@k/mAP and zero-shot accuracy per label family")
    p.add_argument("--model", required=True, help="CLAP folder: ours or a transformers ClapModel folder")
    p.add_argument("--data", required=True, help="corpus folder with metadata.jsonl and labels")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test", help="corpus split (default: test)")
    p.add_argument("--num-clips", type=positive_int, default=None, help="clips to score, spread over domains (default: all)")
    p.set_defaults(func=cmd_eval_clap)

    def scoring_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--metrics", default="fad,clap,kl,is,labels",
                       help="comma list of fad, clap, kl, is, labels (default: %(default)s)")
        p.add_argument("--embedding", default="clap", help="FAD embedding: clap (default, our CLAP), vggish, "
                       "panns-cnn14-16k, panns-cnn14-32k, laion-clap, encodec")
        p.add_argument("--embedding-checkpoint", default=None, help="weights of the embedding model (default: its "
                       "shipped one; required for all but clap)")
        p.add_argument("--clap-model", default=None, help="CLAP for the CLAP score: ours or a transformers ClapModel "
                       "folder (default: models/clap)")
        p.add_argument("--labels-model", default=None, help="label classifier folder (default: models/labels)")
        p.add_argument("--feature-labels-model", default=None, help="the second label classifier, on hand-crafted "
                       "features, reported beside the first (default: models/labels-features)")
        p.add_argument("--covariance", choices=("full", "diagonal", "shrinkage"), default="full",
                       help="FAD covariance: full (needs more windows than dimensions), diagonal or shrinkage "
                       "(Ledoit-Wolf) (default: full)")
        p.add_argument("--cache-dir", default=None, help="embedding cache (default: $SOUNDSMITH_CACHE or "
                       "~/.cache/soundsmith/eval)")
        p.add_argument("--novelty-index", default=None, metavar="DIR", help="add novelty (nearest training clip, "
                       "plagiarism rate): a training index folder or the training corpus folder, indexed first "
                       "with `soundsmith eval index DATA`")
        p.add_argument("--novelty-threshold", type=_bounded(float, 0, 1, low_open=True), default=0.9,
                       help="similarity in (0, 1] at or above which a clip counts as a near copy (default: 0.9)")

    p = esub.add_parser("run", help="generate a set from a prompt file, then score it and write a report")
    p.add_argument("--model", default=None, help=f"pipeline folder (default: {DEFAULT_MODEL_DIR / 'default-ldm'})")
    p.add_argument("--prompts", required=True, help="prompt file: JSONL (benchmarks/prompts/*.jsonl) or "
                   "AudioCaps/MusicCaps-style CSV with a caption column")
    p.add_argument("--reference", default=None, help="reference audio folder (the prompts' file names are relative "
                   "to it; every clip in it when they name none)")
    p.add_argument("--out", required=True, help="output folder: generated/, results.json/.csv, report.md/.html; "
                   "rerunning resumes")
    p.add_argument("--num-per-prompt", type=_bounded(int, 1, 64), default=1, help="clips per prompt (default: 1)")
    p.add_argument("--seed", type=seed_type, default=0, help="clip k of prompt i gets seed + i * K + k (default: 0)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N prompts")
    p.add_argument("--batch-size", type=_bounded(int, 1, 4096), default=8, help="clips per pipeline call (default: 8)")
    p.add_argument("--duration", type=positive_float, default=None, help="seconds per clip (default: the model's)")
    p.add_argument("--steps", type=_bounded(int, 1, 1000), default=None, help="sampler steps (default: the model's)")
    p.add_argument("--guidance", type=_bounded(float, 0, 100), default=None, help="guidance scale (default: the model's)")
    p.add_argument("--scheduler", default=None, help="sampler name (default: the model's)")
    p.add_argument("--negative", "--negative-prompt", dest="negative", default=None, help="what to steer away from")
    p.add_argument("--no-watermark", action="store_true", help="skip the generation watermark")
    p.add_argument("--device", default="auto", help="auto (each accelerate process's device), cpu, cuda[:N] or mps")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="model precision (default: fp32)")
    scoring_options(p)
    add_threads_option(p)
    p.set_defaults(func=cmd_eval_run)

    p = esub.add_parser("score", help="score a folder of generated clips against reference clips (fadtk-style)")
    p.add_argument("--generated", required=True, help="folder of generated clips (JSON sidecars give prompts, "
                   "paired references and labels)")
    p.add_argument("--reference", default=None, help="folder of reference clips (needed by fad and kl)")
    p.add_argument("--out", default=None, help="write results.json/.csv and report.md/.html here")
    p.add_argument("--device", default="cpu", help="where the embedding models run (default: cpu)")
    scoring_options(p)
    p.set_defaults(func=cmd_eval_score)

    p = esub.add_parser("index", help="embed a corpus split for the novelty metric (cached; prints its folder)")
    p.add_argument("data", help="corpus folder (metadata.jsonl), the data the model was trained on")
    p.add_argument("--split", choices=("train", "valid", "test"), default="train", help="corpus split (default: train)")
    p.add_argument("--out", default=None, help="index folder (default: under the cache, found again from DATA)")
    p.add_argument("--embedder", default="clap", help="eval embedder (default: clap, our CLAP audio tower); "
                   "`eval run/score --novelty-index DATA` finds the index of their --embedding")
    p.add_argument("--embedder-checkpoint", default=None, help="its weights (default: the shipped/standard ones)")
    p.add_argument("--device", default="cpu", help="where the embedder runs (default: cpu)")
    p.add_argument("--cache-dir", default=None, help="embedding cache and default index place (default: "
                   "$SOUNDSMITH_CACHE or ~/.cache/soundsmith/eval)")
    p.set_defaults(func=cmd_eval_index)

    p = esub.add_parser("train-labels", help="train the label classifier (prompt adherence) on a labelled corpus")
    p.add_argument("--data", required=True, help="corpus folder (metadata.jsonl with labels, train/valid/test)")
    # --out has no default: the shipped models/labels may be an installed package, which nothing writes to
    p.add_argument("--out", required=True, help="output folder (the shipped one is models/labels in a checkout)")
    p.add_argument("--clap", default=str(DEFAULT_MODEL_DIR / "clap"), help="our CLAP folder (default: %(default)s)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: $SOUNDSMITH_CACHE or "
                   "~/.cache/soundsmith/eval)")
    p.add_argument("--epochs", type=positive_int, default=None, help="full-batch training epochs (default: 300)")
    p.add_argument("--seed", type=seed_type, default=None, help="initialisation seed (default: 0)")
    p.set_defaults(func=cmd_eval_train_labels)

    p = esub.add_parser("train-feature-labels", help="train the second label classifier, on hand-crafted audio "
                        "features (no CLAP), on a labelled corpus")
    p.add_argument("--data", required=True, help="corpus folder (metadata.jsonl with labels, train/valid/test)")
    p.add_argument("--out", required=True, help="output folder (the shipped one is models/labels-features in a "
                   "checkout; no default, as for train-labels)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: $SOUNDSMITH_CACHE or "
                   "~/.cache/soundsmith/eval)")
    p.set_defaults(func=cmd_eval_train_feature_labels)

    p = sub.add_parser("app", help="start the Streamlit app (headless; prints the URL to open)")
    p.add_argument("--port", type=_bounded(int, 1, 65535), default=8501, help="port (default: %(default)s)")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="folder of model folders to offer "
                   "(default: the shipped models/); a model folder inside it can also be typed in the app")
    p.add_argument("--address", default="127.0.0.1", help="address to serve on (default: %(default)s, this machine "
                   "only; 0.0.0.0 serves every interface)")
    p.add_argument("--novelty-index", default=None, metavar="DIR", help="training index or corpus folder "
                   "(`soundsmith eval index DATA`): each result names its nearest training clip (default: the "
                   "repository's data/corpus when indexed)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder that keeps the generated clips and "
                   "the History across reloads and restarts (default: $SOUNDSMITH_APP_OUT, else outputs/app)")
    p.add_argument("--allow-any-folder", action="store_true", help="let the app's folder fields read any folder "
                   "of this machine (default: only inside --model-dir, --out and the standard corpus)")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("detect", help="look for the generation watermark in audio files")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (WAV, FLAC, OGG, MP3), 0.5 s or longer")
    p.add_argument("--key", default="soundsmith", help="watermark key (default: the one soundsmith marks with)")
    p.set_defaults(func=cmd_detect)

    assemble = sub.add_parser("assemble", help="build a model folder: join trained token parts (tokens) or merge "
                              "LoRA adapters into a model's weights (merge)")
    asub = assemble.add_subparsers(dest="assemble_command", required=True, metavar="ASSEMBLE_COMMAND",
                                   parser_class=OneLineParser)
    p = asub.add_parser("tokens", help="build a token model folder from trained parts (each run's export/)")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--clap", default=str(DEFAULT_MODEL_DIR / "clap"), help="CLAP folder (default: %(default)s)")
    p.add_argument("--cond-rvq", required=True, help="train cond-rvq export folder")
    p.add_argument("--kmeans", required=True, help="train kmeans export folder")
    p.add_argument("--semantic-lm", required=True, help="train semantic-lm export folder")
    p.add_argument("--coarse-lm", required=True, help="train coarse-lm export folder")
    p.add_argument("--fine-lm", default=None, help="train fine-lm export folder (optional: without it the coarse "
                   "levels alone are decoded)")
    p.add_argument("--codec", required=True, help="train codec export folder")
    p.add_argument("--tempo", default=None, help="train tempo-reader export folder (optional: reads the prompt's "
                   "tempo for a semantic LM with a tempo input or a coarse LM with a beat input)")
    p.add_argument("--fp16", action="store_true", help="store the weights in fp16 (as shipped models are)")
    p.add_argument("--link-clap", action="store_true", help="reference --clap by a relative path instead of copying it")
    p.set_defaults(func=cmd_assemble_tokens)
    p = asub.add_parser("merge", help="merge LoRA adapters into a model's weights: a complete model folder that loads "
                        "without them (a diffusers AudioLDM folder stays in diffusers' layout)")
    p.add_argument("--model", required=True, help="the model folder the adapters were trained on: ours or a diffusers "
                   "AudioLDM/MusicLDM folder")
    add_adapter_options(p, required=True)
    p.add_argument("--out", required=True, help="the model folder to write (new or empty)")
    p.add_argument("--fp16", action="store_true", help="store the weights in fp16 (default: float32, as merged)")
    p.set_defaults(func=cmd_assemble_merge)

    p = sub.add_parser("convert", help="convert a public checkpoint into a soundsmith model folder")
    p.add_argument("source_format", help="format of the source checkpoint")
    p.add_argument("source", help="checkpoint file or folder")
    p.add_argument("out", help="output model folder")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling a .ckpt/.pt you trust")
    p.set_defaults(func=cmd_convert)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("soundsmith").setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `generate` prints the command that resumes it
    _configure_logging(args.verbose)
    try:
        code = args.func(args)  # a handler may return an exit status (data stats: 1 when it found problems)
    except KeyboardInterrupt as stop:  # its text, when it has one, says what was kept
        print(f"soundsmith: interrupted{': ' + str(stop) if str(stop) else ''}", file=sys.stderr)
        return 130
    except (UsageError, ValueError, OSError) as err:
        if args.verbose:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"soundsmith: error: {message}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
