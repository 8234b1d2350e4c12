"""The `soundsmith` command.

Each subcommand parses its arguments and calls one library function; the libraries are imported
inside the handlers so that `soundsmith --help` stays fast. A user mistake (bad value, missing or
unreadable file) prints one line, `soundsmith: error: ...`, and exits with status 2; `--verbose`
shows the traceback as well.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from soundsmith import __version__

log = logging.getLogger("soundsmith")

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models"


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


# -------------------------------------------------------------------------------------- subcommands


def cmd_generate(args: argparse.Namespace) -> None:
    from soundsmith.pipelines import load_pipeline
    from soundsmith.pipelines.base import check_output_folder, read_prompts_file

    prompts = list(args.prompt) + (read_prompts_file(args.prompts_file) if args.prompts_file else [])
    if not prompts:
        raise UsageError("give a prompt or --prompts-file FILE")
    out = Path(args.out)
    check_output_folder(out.parent if out.suffix.lower() in (".wav", ".flac") else out)  # before any work
    model = args.model or DEFAULT_MODEL_DIR / f"default-{args.backend or 'ldm'}"
    if not args.verbose:  # the sampling bar is the progress shown; no per-part weight-loading bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    pipe = load_pipeline(model, backend=args.backend, device=args.device, dtype=args.dtype)
    kwargs = {"duration_s": args.duration, "num_waveforms_per_prompt": args.num, "seed": args.seed,
              "negative_prompt": args.negative, "watermark": not args.no_watermark}
    for key, value in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance),
                       ("scheduler", args.scheduler), ("batch_size", args.batch_size)):
        if value is not None:
            kwargs[key] = value
    output = pipe(prompts if len(prompts) > 1 else prompts[0], **kwargs)
    for path in output.save(args.out, format=args.format):
        print(path)


def cmd_data_synth(args: argparse.Namespace) -> None:
    from soundsmith.train.synth import synthesize_corpus

    domains = tuple(d.strip() for d in args.domains.split(",") if d.strip())
    synthesize_corpus(
        args.out, num_clips=args.num_clips, hours=args.hours, seed=args.seed, clip_seconds=args.clip_seconds,
        sample_rate=args.sample_rate, workers=args.workers, domains=domains, caption_style=args.caption_style,
    )


def cmd_data_stats(args: argparse.Namespace) -> None:
    from soundsmith.train.stats import corpus_stats

    print(corpus_stats(args.data))


def cmd_data_prompts(args: argparse.Namespace) -> None:
    from soundsmith.train.prompt_sets import write_prompt_sets

    for path in write_prompt_sets(args.corpus, args.out, seed=args.seed):
        print(path)


def cmd_train(args: argparse.Namespace) -> None:
    _require("soundsmith.train.components", "training")
    from soundsmith.train.components import COMPONENTS

    if args.component not in COMPONENTS:
        known = ", ".join(sorted(COMPONENTS)) or "none installed yet"
        raise UsageError(f"unknown component {args.component!r}; available: {known}")
    train = COMPONENTS[args.component]()
    train(config=args.config, data=args.data, out=args.out, resume=args.resume, max_steps=args.max_steps)


def cmd_eval_codec(args: argparse.Namespace) -> None:
    from soundsmith.eval.codec_report import codec_report

    print(codec_report(args.model, args.data, num_clips=args.num_clips, split=args.split))


def cmd_eval_clap(args: argparse.Namespace) -> None:
    from soundsmith.eval.clap_metrics import clap_report

    print(clap_report(args.model, args.data, split=args.split, num_clips=args.num_clips))


def _require(module: str, feature: str) -> None:
    """Fail with one line if an optional part of soundsmith is not in this version."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{feature} is not part of soundsmith {__version__} yet")


def cmd_app(args: argparse.Namespace) -> None:
    _require("soundsmith.app.launch", "the app")
    from soundsmith.app.launch import launch_app

    launch_app(port=args.port, model_dir=args.model_dir)


def cmd_convert(args: argparse.Namespace) -> None:
    _require("soundsmith.pipelines.convert", "checkpoint conversion")
    from soundsmith.pipelines.convert import CONVERTERS

    if args.source_format not in CONVERTERS:
        known = ", ".join(sorted(CONVERTERS)) or "none installed yet"
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
    p.add_argument("--prompts-file", default=None, help="more prompts: text lines, CSV (a 'prompt' column) or JSONL")
    p.add_argument("--model", default=None, help="model folder, ours or a diffusers AudioLDM/MusicLDM folder "
                   f"(default: the shipped {DEFAULT_MODEL_DIR / 'default-ldm'})")
    p.add_argument("--backend", default=None, choices=("ldm", "tokens"),
                   help="use this backend's shipped default model; with --model, the folder must be this backend")
    p.add_argument("--out", default="outputs", help="output folder (created if missing) or a .wav/.flac file path "
                   "(default: %(default)s)")
    p.add_argument("--duration", type=positive_float, default=None, help="seconds of audio (default: the model's, 5)")
    p.add_argument("--steps", type=_bounded(int, 1, 1000), default=None, help="sampler steps (default: the model's)")
    p.add_argument("--guidance", type=_bounded(float, 0, 100), default=None, help="guidance scale (default: the model's)")
    p.add_argument("--negative", "--negative-prompt", dest="negative", default=None, help="what to steer away from")
    p.add_argument("--scheduler", default=None, help="sampler: dpmsolver++, ddim, euler, euler-ancestral, heun, unipc, "
                   "ddpm, pndm, lms (default: the model's)")
    p.add_argument("--num", "--num-per-prompt", dest="num", type=_bounded(int, 1, 64), default=1,
                   help="waveforms per prompt, best first by CLAP score (default: 1)")
    p.add_argument("--seed", type=seed_type, default=None, help="seed in [0, 2**63-1] (outputs get seed, seed+1, ...); "
                   "default: random, in the file names")
    p.add_argument("--batch-size", type=_bounded(int, 1, 4096), default=None, help="outputs per model batch")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda[:N] or mps")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="model precision (default: fp32)")
    p.add_argument("--format", choices=("wav", "flac"), default="wav")
    p.add_argument("--no-watermark", action="store_true", help="skip the generation watermark")
    p.set_defaults(func=cmd_generate)

    data = sub.add_parser("data", help="synthesize and inspect training corpora")
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
    p = dsub.add_parser("stats", help="clips and hours per domain and label; check the files")
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
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimizer steps")
    p.set_defaults(func=cmd_train)

    evaluation = sub.add_parser("eval", help="score codecs and generated sets")
    esub = evaluation.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND",
                                     parser_class=OneLineParser)
    p = esub.add_parser("codec", help="reconstruction report of a codec (mel L1, MR-STFT, SI-SDR, RTF) per domain")
    p.add_argument("--model", required=True, help="codec folder (config.json), e.g. models/default-mel-codec")
    p.add_argument("--data", required=True, help="corpus folder with metadata.jsonl")
    p.add_argument("--num-clips", type=positive_int, default=None, help="clips to score, spread over domains (default: all)")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test", help="corpus split (default: test)")
    p.set_defaults(func=cmd_eval_codec)
    p = esub.add_parser("clap", help="CLAP retrieval R@k/mAP and zero-shot accuracy per label family")
    p.add_argument("--model", required=True, help="CLAP folder: ours or a transformers ClapModel folder")
    p.add_argument("--data", required=True, help="corpus folder with metadata.jsonl and labels")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test", help="corpus split (default: test)")
    p.add_argument("--num-clips", type=positive_int, default=None, help="clips to score, spread over domains (default: all)")
    p.set_defaults(func=cmd_eval_clap)

    p = sub.add_parser("app", help="start the Streamlit app")
    p.add_argument("--port", type=_bounded(int, 1, 65535), default=8501)
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="folder of model folders to offer")
    p.set_defaults(func=cmd_app)

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
    _configure_logging(args.verbose)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("soundsmith: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, OSError) as err:
        if args.verbose:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"soundsmith: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
