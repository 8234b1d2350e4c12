"""Prompt adherence of a generation model (DESIGN.md, "Standard material"): one clip per prompt of
benchmarks/prompts/adherence.jsonl with fixed seeds; the prompt adheres when its class (SFX class,
instrument or language) is in the top 3 of its family for the clip. Scorers: the eval harness's label
classifier (`--scorer labels`, default: models/labels, 83-99 % test accuracy per family on corpus clips), or our
CLAP ranking the class captions ("the sound of rain", "music played on piano") of the prompt's domain
(`--scorer clap`, the measure used before the classifier landed). Targets: latent diffusion >= 70 %,
token backend >= 60 % of prompts.

    .venv/bin/python benchmarks/adherence.py --model models/default-ldm [--scorer labels|clap]
        [--steps N] [--scheduler NAME] [--guidance G] [--duration 5] [--seed 0] [--out DIR] [--limit N]
    .venv/bin/python benchmarks/adherence.py --from-clips DIR --scorer clap --model M   # re-score kept clips

Prints one line per prompt (rank of its class) and the hit rate per domain and overall, then a JSON
summary line. `--out` keeps the clips (WAV + JSON sidecars) for listening.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def class_labels(domain: str) -> list[str]:
    """Every class of a domain in the corpus vocabulary (SFX classes, instruments, language codes)."""
    from soundsmith.train import music, sfx, speech

    return {"sfx": list(sfx.SFX_CLASSES), "music": list(music.INSTRUMENTS), "speech": list(speech.LANGUAGES)}[domain]


def class_ranks(audio_emb: torch.Tensor, caption_emb: torch.Tensor, true_index: list[int]) -> list[int]:
    """1-based rank of each clip's true class among the candidate captions (`[N, D]` x `[C, D]`, cosine)."""
    sims = audio_emb @ caption_emb.T  # [N, C]
    own = sims[torch.arange(len(true_index)), torch.tensor(true_index)]  # [N]
    return (1 + (sims > own[:, None]).sum(1)).tolist()


def read_clips(folder: Path, rows: list[dict], seed: int) -> tuple[torch.Tensor, int, dict]:
    """The clips an earlier `--out` run kept: prompt i is the clip whose sidecar says (prompt i, seed + i)."""
    from soundsmith.codecs.audio import read_audio

    by_key = {}
    for sidecar in folder.glob("*.json"):
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        by_key[(meta.get("prompt"), meta.get("seed"))] = (sidecar.with_suffix(".wav"), meta)
    waves, settings, sr = [], {}, None
    for i, r in enumerate(rows):
        if (r["prompt"], seed + i) not in by_key:
            raise SystemExit(f"--from-clips: no clip for prompt {i} ({r['prompt']!r}, seed {seed + i}) in {folder}")
        path, meta = by_key[(r["prompt"], seed + i)]
        sr = int(meta["sample_rate"])
        wave, _ = read_audio(path, sample_rate=sr, channels=1)
        waves.append(torch.from_numpy(wave))
        settings = {k: meta.get(k) for k in ("scheduler", "num_inference_steps", "guidance_scale") if k in meta}
    n = min(w.shape[-1] for w in waves)
    return torch.stack([w[..., :n] for w in waves]), sr, settings


def label_ranks(args: argparse.Namespace, rows: list[dict], waves: torch.Tensor, sample_rate: int) -> list[int]:
    """Rank (1 = top) of each prompt's class among its family's classes by the label classifier's logits."""
    from soundsmith.eval.labels import LabelClassifier
    from soundsmith.eval.prompts import DOMAIN_FAMILY

    clf = LabelClassifier.from_pretrained(args.labels)
    logits = clf.family_logits(clf.features(list(waves), sample_rate))
    ranks = []
    for i, r in enumerate(rows):
        fam = DOMAIN_FAMILY[r["domain"]]
        scores = logits[fam][i]
        true = clf.classes[fam].index(r["label"])
        ranks.append(1 + int((scores > scores[true]).sum()))
    return ranks


def clap_ranks(args: argparse.Namespace, rows: list[dict], waves: torch.Tensor, sample_rate: int) -> list[int]:
    """Rank of each prompt's class caption among its domain's class captions by our CLAP."""
    from soundsmith.pipelines.ldm import ClapConditioner
    from soundsmith.train.captions import class_caption

    if args.clap is None:
        from soundsmith.pipelines import load_pipeline

        scorer = load_pipeline(args.model).conditioner
    else:
        scorer = ClapConditioner.from_pretrained(Path(args.clap))
    if not scorer.has_audio_tower:
        raise SystemExit("this CLAP has no audio tower; pass --clap with our CLAP folder")
    audio_emb = scorer.model.embed_audio(waves, sample_rate).float().cpu()  # [N, D]
    ranks = [0] * len(rows)
    for domain in ("sfx", "music", "speech"):
        idx = [i for i, r in enumerate(rows) if r["domain"] == domain]
        if idx:
            labels = class_labels(domain)
            captions = scorer.embed_text([class_caption(domain, label) for label in labels]).cpu()  # [C, D]
            for i, rank in zip(idx, class_ranks(audio_emb[idx], captions, [labels.index(rows[i]["label"])
                                                                              for i in idx])):
                ranks[i] = rank
    return ranks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "default-ldm"), help="pipeline folder")
    p.add_argument("--scorer", choices=("labels", "clap"), default="labels",
                   help="labels (default): the eval harness's label classifier ranks the classes of the prompt's "
                   "family; clap: our CLAP ranks the class captions")
    p.add_argument("--labels", default=str(ROOT / "models" / "labels"), help="label classifier folder")
    p.add_argument("--clap", default=None, help="CLAP folder for --scorer clap (default: the pipeline's own CLAP)")
    p.add_argument("--from-clips", default=None, help="score the clips an earlier run kept with --out (same "
                   "prompts and seed) instead of generating")
    p.add_argument("--prompts", default=str(ROOT / "benchmarks" / "prompts" / "adherence.jsonl"))
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--scheduler", default=None, help="sampler (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i (default 0)")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="keep the clips here (WAV + JSON)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from soundsmith.pipelines import load_pipeline

    rows = [json.loads(line) for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    kwargs = {k: v for k, v in (("num_inference_steps", args.steps), ("scheduler", args.scheduler),
                                ("guidance_scale", args.guidance)) if v is not None}

    # 1. one clip per prompt, prompt i with seed + i (or the clips of an earlier run)
    t0 = time.perf_counter()
    if args.from_clips:
        waves, sample_rate, settings = read_clips(Path(args.from_clips), rows, args.seed)
    else:
        pipe = load_pipeline(args.model)
        pipe.progress_bar = False
        out = pipe([r["prompt"] for r in rows], duration_s=args.duration, seed=args.seed,
                   batch_size=args.batch_size, watermark=False, **kwargs)
        if args.out:
            out.save(args.out)
        waves, sample_rate = torch.as_tensor(out.audios), out.sample_rate
        settings = {k: out.parameters[k] for k in ("scheduler", "num_inference_steps", "guidance_scale")}
    seconds = time.perf_counter() - t0

    # 2. rank the classes of each prompt's family (SFX class, instrument, language) for its clip
    ranks_of = label_ranks if args.scorer == "labels" else clap_ranks
    ranks = ranks_of(args, rows, waves, sample_rate)
    hits: dict[str, list[bool]] = {}
    print(f"{'rank':>4}  domain  label            prompt")
    for domain in ("sfx", "music", "speech"):
        for i, r in enumerate(rows):
            if r["domain"] == domain:
                hits.setdefault(domain, []).append(ranks[i] <= args.top)
                print(f"{ranks[i]:>4}  {domain:<6}  {r['label']:<15}  {r['prompt']}")
    per_domain = {d: sum(h) / len(h) for d, h in hits.items()}
    every = [x for h in hits.values() for x in h]
    overall = sum(every) / len(every)
    chance = {d: min(1.0, args.top / len(class_labels(d))) for d in hits}
    print(f"\ntop-{args.top} adherence ({args.scorer} scorer): {overall:.1%} of {len(every)} prompts "
          "(targets: latent diffusion >= 70%, tokens >= 60%); "
          + ", ".join(f"{d} {v:.1%} (chance {chance[d]:.0%})" for d, v in per_domain.items()))
    source = f"read from {args.from_clips}" if args.from_clips else "generated"
    print(f"clips: {len(rows)} x {args.duration} s {source} in {seconds:.1f} s; settings {settings}")
    print(json.dumps({"model": args.model, "scorer": args.scorer, "top": args.top, "adherence": overall,
                      "per_domain": per_domain, "chance": chance, "num_prompts": len(every), **settings,
                      "seconds": round(seconds, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
