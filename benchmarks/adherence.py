"""Prompt adherence of a generation model (DESIGN.md, "Standard material"): one clip per prompt of
benchmarks/prompts/adherence.jsonl with fixed seeds; our CLAP ranks the class captions of the prompt's
domain ("the sound of rain", "music played on piano", "a person speaking German") against each clip,
and a prompt adheres when its own class is in the top 3. Target: >= 70 % of prompts.

    .venv/bin/python benchmarks/adherence.py --model models/default-ldm [--clap models/default-clap]
        [--steps N] [--scheduler NAME] [--guidance G] [--duration 5] [--seed 0] [--out DIR] [--limit N]

Prints one line per prompt (rank of its class, CLAP score with its prompt) and the hit rate per domain
and overall, then a JSON summary line. `--out` keeps the clips (WAV + JSON sidecars) for listening.
The eval harness's label classifier replaces this measure once it lands.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "default-ldm"), help="pipeline folder")
    p.add_argument("--clap", default=None, help="CLAP folder for scoring (default: the pipeline's own CLAP)")
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
    from soundsmith.pipelines.ldm import ClapConditioner
    from soundsmith.train.captions import class_caption

    rows = [json.loads(line) for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    pipe = load_pipeline(args.model)
    pipe.progress_bar = False
    scorer = pipe.conditioner if args.clap is None else ClapConditioner.from_pretrained(Path(args.clap))
    if not scorer.has_audio_tower:
        raise SystemExit("the pipeline's CLAP has no audio tower; pass --clap with our CLAP folder")
    kwargs = {k: v for k, v in (("num_inference_steps", args.steps), ("scheduler", args.scheduler),
                                ("guidance_scale", args.guidance)) if v is not None}

    # 1. one clip per prompt, prompt i with seed + i
    t0 = time.perf_counter()
    out = pipe([r["prompt"] for r in rows], duration_s=args.duration, seed=args.seed, batch_size=args.batch_size,
               watermark=False, **kwargs)
    seconds = time.perf_counter() - t0
    if args.out:
        out.save(args.out)

    # 2. rank the class captions of each prompt's domain against its clip
    audio_emb = scorer.model.embed_audio(out.audios, out.sample_rate).float().cpu()  # [N, D]
    prompt_scores = (audio_emb * scorer.embed_text([r["prompt"] for r in rows]).cpu()).sum(-1)  # [N]
    hits: dict[str, list[bool]] = {}
    print(f"{'rank':>4}  {'score':>6}  domain  label            prompt")
    for domain in ("sfx", "music", "speech"):
        idx = [i for i, r in enumerate(rows) if r["domain"] == domain]
        if not idx:
            continue
        labels = class_labels(domain)
        captions = scorer.embed_text([class_caption(domain, label) for label in labels]).cpu()  # [C, D]
        ranks = class_ranks(audio_emb[idx], captions, [labels.index(rows[i]["label"]) for i in idx])
        for i, rank in zip(idx, ranks):
            hits.setdefault(domain, []).append(rank <= args.top)
            r = rows[i]
            print(f"{rank:>4}  {prompt_scores[i]:6.3f}  {domain:<6}  {r['label']:<15}  {r['prompt']}")
    per_domain = {d: sum(h) / len(h) for d, h in hits.items()}
    every = [x for h in hits.values() for x in h]
    overall = sum(every) / len(every)
    chance = {d: min(1.0, args.top / len(class_labels(d))) for d in hits}
    print(f"\ntop-{args.top} adherence: {overall:.1%} of {len(every)} prompts (target >= 70%); "
          + ", ".join(f"{d} {v:.1%} (chance {chance[d]:.0%})" for d, v in per_domain.items()))
    print(f"generation: {seconds:.1f} s for {len(rows)} clips of {args.duration} s; settings "
          f"{out.parameters['scheduler']} x {out.parameters['num_inference_steps']} steps, guidance "
          f"{out.parameters['guidance_scale']}")
    print(json.dumps({"model": args.model, "top": args.top, "adherence": overall, "per_domain": per_domain,
                      "chance": chance, "num_prompts": len(every), "mean_prompt_score": float(prompt_scores.mean()),
                      "scheduler": out.parameters["scheduler"], "steps": out.parameters["num_inference_steps"],
                      "guidance": out.parameters["guidance_scale"], "seconds": round(seconds, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
