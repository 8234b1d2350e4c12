"""Prompt adherence of a generation model: `--seeds` clips per prompt of
benchmarks/prompts/adherence.jsonl with fixed seeds; a clip adheres when its prompt's class (SFX class,
instrument or language) is in the top 3 of its family for the clip. Scorers:
- `labels`: the eval harness's label classifier on our CLAP's features (models/labels);
- `feature-labels`: the second label classifier, on hand-crafted features with no CLAP in it
  (models/labels-features, eval/feature_labels.py), so a model cannot score by pleasing our CLAP alone;
- `both` (default): the two classifiers side by side, and the clips where one says hit and the other miss;
- `clap`: our CLAP ranking the class captions ("the sound of rain", "music played on piano") of the
  prompt's domain (the measure used before the classifiers landed).
Targets: latent diffusion >= 70 %, token backend >= 60 % of clips.

Prompt rows are {"prompt", "domain", "label"} (the family is the domain's: SFX class, instrument, language),
or name a `"family"`: `"tempo"` (label slow / moderate / fast; a hit is the top 1, since the top 3 of three
bands is every band) or `"mixture"` ("X while Y": the corpus labels dict with two SFX classes; a hit is both
classes in the SFX top 3). `--prompts benchmarks/prompts/adherence-families.jsonl` scores those families and
more wordings per instrument and language.

    .venv/bin/python benchmarks/adherence.py --model models/default-ldm [--scorer both|labels|feature-labels|clap]
        [--seeds 4] [--steps N] [--scheduler NAME] [--guidance G] [--guidance-cutoff C] [--duration 5] [--seed 0] [--out DIR] [--limit N]
    .venv/bin/python benchmarks/adherence.py --from-clips DIR --model M   # re-score the clips a run kept
    .venv/bin/python benchmarks/adherence.py --adapter runs/my-lora/export [--adapter-scale 1]  # with a LoRA adapter

Clip k of prompt i uses seed `seed + i * seeds + k` (as `soundsmith eval run`). Prints each prompt's ranks
under each scorer, the hit rate per label family (and overall) for each scorer beside the classifier's own
top-1 accuracy on real corpus test clips (its ceiling, from its config.json), the clips where the two
classifiers disagree, then a JSON summary line. `--out` keeps the clips (WAV + JSON sidecars) for listening.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
SCORERS = ("labels", "feature-labels", "clap")
BOTH = ("labels", "feature-labels")  # what `--scorer both` runs


FAMILY_TOP = {"tempo": 1}  # families with so few classes that the top 3 would hold nearly all of them


def prompt_classes(row: dict) -> tuple[str, list[str]]:
    """The classifier family a prompt is scored in and the class(es) it asks for: a mixture row asks for both of
    its SFX classes at once."""
    family = prompt_family(row)
    if family == "mixture":
        return "sfx_class", [str(c) for c in row["labels"]["classes"]]
    return family, [str(row["label"])]


def family_classes(family: str) -> list[str]:
    """Every class of a classifier family in the corpus vocabulary."""
    from soundsmith.core.vocabulary import tempo_bands
    from soundsmith.pipelines.prompts import DOMAIN_FAMILY

    if family == "tempo":
        return [name for _, _, name in tempo_bands()]
    domain_of = {f: d for d, f in DOMAIN_FAMILY.items()} | {"mixture": "sfx"}
    return class_labels(domain_of[family])


def family_chance(family: str, top: int) -> float:
    """Chance that random class scores put the asked-for class(es) of a `family` prompt in the top `top`."""
    n = len(family_classes(family))
    k = min(FAMILY_TOP.get(family, top), n)
    if family == "mixture":  # both of two classes among the top k
        return k * (k - 1) / (n * (n - 1))
    return k / n


def class_labels(domain: str) -> list[str]:
    """Every class of a domain in the corpus vocabulary (SFX classes, instruments, language codes)."""
    from soundsmith.train import music, sfx, speech

    return {"sfx": list(sfx.SFX_CLASSES), "music": list(music.INSTRUMENTS), "speech": list(speech.LANGUAGES)}[domain]


def prompt_family(row: dict) -> str:
    """The label family a prompt row names: its "family", else its domain's (sfx_class, instrument, language)."""
    from soundsmith.pipelines.prompts import DOMAIN_FAMILY

    return str(row.get("family") or DOMAIN_FAMILY[row["domain"]])


def class_ranks(audio_emb: torch.Tensor, caption_emb: torch.Tensor, true_index: list[int]) -> list[int]:
    """1-based rank of each clip's true class among the candidate captions (`[N, D]` x `[C, D]`, cosine)."""
    sims = audio_emb @ caption_emb.T  # [N, C]
    own = sims[torch.arange(len(true_index)), torch.tensor(true_index)]  # [N]
    return (1 + (sims > own[:, None]).sum(1)).tolist()


def clip_seeds(num_prompts: int, seeds: int, seed: int) -> list[int]:
    """Seed of clip k of prompt i, flattened prompt-major: seed + i * seeds + k."""
    return [seed + i * seeds + k for i in range(num_prompts) for k in range(seeds)]


def read_clips(folder: Path, rows: list[dict], seeds: list[int]) -> tuple[torch.Tensor, int, dict]:
    """The clips an earlier `--out` run kept: clip j is the one whose sidecar says (rows[j] prompt, seeds[j])."""
    from soundsmith.codecs.audio import read_audio

    by_key = {}
    for sidecar in folder.glob("*.json"):
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        by_key[(meta.get("prompt"), meta.get("seed"))] = (sidecar.with_suffix(".wav"), meta)
    waves, settings, sr = [], {}, None
    for r, s in zip(rows, seeds):
        if (r["prompt"], s) not in by_key:
            raise SystemExit(f"--from-clips: no clip for prompt {r['prompt']!r} with seed {s} in {folder}")
        path, meta = by_key[(r["prompt"], s)]
        sr = int(meta["sample_rate"])
        wave, _ = read_audio(path, sample_rate=sr, channels=1)
        waves.append(torch.from_numpy(wave))
        settings = {k: meta.get(k) for k in ("scheduler", "num_inference_steps", "guidance_scale") if k in meta}
    n = min(w.shape[-1] for w in waves)
    return torch.stack([w[..., :n] for w in waves]), sr, settings


def load_classifier(args: argparse.Namespace, scorer: str) -> Any:
    """The label classifier behind a scorer; both share the API adherence uses (eval/feature_labels.py)."""
    if scorer == "labels":
        from soundsmith.eval.labels import LabelClassifier

        return LabelClassifier.from_pretrained(args.labels)
    from soundsmith.eval.feature_labels import load_feature_label_classifier

    return load_feature_label_classifier(args.feature_labels)


def worst_ranks(rows: list[dict], rank: Any) -> list[int]:
    """Rank of each row's asked-for class, the worst over its classes when it asks for several (all are in the
    top k when it is). `rank(family, idx, labels)` ranks clips `idx` against one class each within `family`."""
    asked = [prompt_classes(r) for r in rows]
    ranks = [0] * len(rows)
    for family in dict.fromkeys(f for f, _ in asked):
        idx = [i for i, (f, _) in enumerate(asked) if f == family]
        for slot in range(max(len(asked[i][1]) for i in idx)):
            have = [i for i in idx if slot < len(asked[i][1])]
            for i, r in zip(have, rank(family, have, [asked[i][1][slot] for i in have])):
                ranks[i] = max(ranks[i], r)
    return ranks


def classifier_ranks(clf: Any, rows: list[dict], waves: torch.Tensor, sample_rate: int) -> list[int]:
    """Rank (1 = top) of each clip's prompt class among its family's classes by the classifier's logits (the
    worst rank for a prompt that asks for several classes)."""
    from soundsmith.eval.feature_labels import family_ranks

    x = clf.features(list(waves), sample_rate)  # [N, D]
    return worst_ranks(rows, lambda family, idx, labels: family_ranks(clf, x[idx], family, labels))


def clap_ranks(args: argparse.Namespace, rows: list[dict], waves: torch.Tensor, sample_rate: int) -> list[int]:
    """Rank of each clip's class caption among its family's class captions by our CLAP (the worst rank for a
    prompt that asks for several classes)."""
    from soundsmith.eval.clap_metrics import canonical_prompt
    from soundsmith.gen.conditioners import ClapConditioner

    if args.clap is None:
        from soundsmith.pipelines import load_pipeline

        scorer = load_pipeline(args.model).conditioner
    else:
        scorer = ClapConditioner.from_pretrained(Path(args.clap))
    if not scorer.has_audio_tower:
        raise SystemExit("this CLAP has no audio tower; pass --clap with our CLAP folder")
    audio_emb = scorer.model.embed_audio(waves, sample_rate).float().cpu()  # [N, D]
    captions = {}  # family -> its class captions embedded once, [C, D]

    def rank(family: str, idx: list[int], labels: list[str]) -> list[int]:
        classes = family_classes(family)
        if family not in captions:
            captions[family] = scorer.embed_text([canonical_prompt(family, c) for c in classes]).cpu()
        return class_ranks(audio_emb[idx], captions[family], [classes.index(label) for label in labels])

    return worst_ranks(rows, rank)


def hit_rates(rows: list[dict], hits: list[bool]) -> dict[str, float]:
    """Share of hits per family (in first-seen order) and over all clips ("all")."""
    out = {}
    for family in dict.fromkeys(prompt_family(r) for r in rows):
        h = [hit for r, hit in zip(rows, hits) if prompt_family(r) == family]
        out[family] = sum(h) / len(h)
    out["all"] = sum(hits) / len(hits)
    return out


def ceilings(clf: Any) -> dict[str, float]:
    """A classifier's top-1 accuracy per family on real corpus test clips (true domain given), from the
    training report in its config.json: what adherence could reach if every clip were a perfect example."""
    acc = (clf.report or {}).get("test_accuracy", {})
    return {f: float(m["accuracy"]) for f, m in acc.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "default-ldm"), help="pipeline folder")
    p.add_argument("--scorer", choices=(*SCORERS, "both"), default="both",
                   help="both (default): the two label classifiers side by side; labels: the CLAP-feature "
                   "classifier; feature-labels: the hand-crafted-feature classifier; clap: our CLAP ranks the "
                   "class captions")
    p.add_argument("--labels", default=str(ROOT / "models" / "labels"), help="CLAP-feature label classifier folder")
    p.add_argument("--feature-labels", default=str(ROOT / "models" / "labels-features"),
                   help="hand-crafted-feature label classifier folder")
    p.add_argument("--clap", default=None, help="CLAP folder for --scorer clap (default: the pipeline's own CLAP)")
    p.add_argument("--from-clips", default=None, help="score the clips an earlier run kept with --out (same "
                   "prompts, seed and seeds) instead of generating")
    p.add_argument("--prompts", default=str(ROOT / "benchmarks" / "prompts" / "adherence.jsonl"))
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--scheduler", default=None, help="sampler (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--guidance-cutoff", type=float, default=None,
                   help="latent diffusion: share of the steps that run guidance (default: the model's)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0, help="clip k of prompt i uses seed + i * seeds + k (default 0)")
    p.add_argument("--seeds", type=int, default=4, help="clips per prompt, each scored (default 4)")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="keep the clips here (WAV + JSON)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocoder", default=None, help="replace the model's vocoder (a registry name of "
                   "soundsmith.codecs.vocoders; 'hifigan' = the trained HiFi-GAN beside its VAE); mel-path models only")
    p.add_argument("--adapter", action="append", default=None, metavar="DIR",
                   help="apply this LoRA adapter folder (repeatable; load_pipeline's adapters=): whether a "
                   "fine-tune kept the model's adherence")
    p.add_argument("--adapter-scale", type=float, action="append", default=None, metavar="S",
                   help="adapter scale in [0, 2], one for all adapters or one per --adapter (default 1)")
    p.add_argument("--no-loudness", action="store_true", help="keep the decoder's level (as clips came out before "
                   "loudness normalisation)")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.adapter_scale and not args.adapter:
        p.error("--adapter-scale needs --adapter")
    if args.adapter and args.from_clips:
        p.error("--adapter applies when generating; --from-clips re-scores clips already made")
    torch.set_num_threads(args.threads)
    scorers = BOTH if args.scorer == "both" else (args.scorer,)

    from soundsmith.codecs.audio import DEFAULT_LOUDNESS_LUFS
    from soundsmith.pipelines import load_pipeline

    prompts = [json.loads(line) for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = prompts[: args.limit] if args.limit else prompts
    rows = [r for r in prompts for _ in range(args.seeds)]  # one row per clip, prompt-major
    seeds = clip_seeds(len(prompts), args.seeds, args.seed)
    kwargs = {k: v for k, v in (("num_inference_steps", args.steps), ("scheduler", args.scheduler),
                                ("guidance_scale", args.guidance), ("guidance_cutoff", args.guidance_cutoff))
              if v is not None}
    classifiers = {s: load_classifier(args, s) for s in scorers if s != "clap"}  # before generating: fail early

    # 1. `seeds` clips per prompt (or the clips of an earlier run)
    t0 = time.perf_counter()
    if args.from_clips:
        waves, sample_rate, settings = read_clips(Path(args.from_clips), rows, seeds)
    else:
        vocoder = {"name": "hifigan", "path": "vocoder"} if args.vocoder == "hifigan" else args.vocoder
        extra = {"vocoder": vocoder} if vocoder else {}
        if args.adapter:
            extra["adapters"] = list(args.adapter)
            if args.adapter_scale:
                extra["adapter_scales"] = list(args.adapter_scale)
        pipe = load_pipeline(args.model, **extra)
        pipe.progress_bar = False
        out = pipe([r["prompt"] for r in rows], duration_s=args.duration, seed=seeds, batch_size=args.batch_size,
                   watermark=False, loudness_lufs=None if args.no_loudness else DEFAULT_LOUDNESS_LUFS, **kwargs)
        if args.out:
            out.save(args.out)
        waves, sample_rate = torch.as_tensor(out.audios), out.sample_rate
        settings = {k: out.parameters[k] for k in ("scheduler", "num_inference_steps", "guidance_scale",
                                                   "guidance_cutoff") if k in out.parameters}
        if args.adapter:
            settings["adapters"] = [{"folder": a.get("folder"), "scale": a.get("scale")}
                                    for a in out.parameters.get("adapters", [])]
    seconds = time.perf_counter() - t0

    # 2. rank each clip's prompt class among its family's classes, under each scorer
    ranks = {s: clap_ranks(args, rows, waves, sample_rate) if s == "clap" else
             classifier_ranks(classifiers[s], rows, waves, sample_rate) for s in scorers}
    tops = [FAMILY_TOP.get(prompt_family(r), args.top) for r in rows]
    hits = {s: [rank <= k for rank, k in zip(ranks[s], tops)] for s in scorers}

    # 3. per prompt: the ranks of its clips under each scorer
    print(f"ranks of each prompt's class in the {args.seeds} clip(s) of the prompt (hits = in the top {args.top})")
    print(f"{'family':<11} {'label':<15} " + " ".join(f"{s:<{3 * args.seeds + 8}}" for s in scorers) + " prompt")
    for i, r in enumerate(prompts):
        cells = []
        for s in scorers:
            mine = ranks[s][i * args.seeds:(i + 1) * args.seeds]
            text = " ".join(map(str, mine)) + f" ({sum(x <= tops[i * args.seeds] for x in mine)}/{args.seeds})"
            cells.append(f"{text:<{3 * args.seeds + 8}}")
        print(f"{prompt_family(r):<11} {'+'.join(prompt_classes(r)[1]):<15} " + " ".join(cells) + f" {r['prompt']}")

    # 4. hit rate per family for each scorer, beside each classifier's accuracy on real test clips
    rates = {s: hit_rates(rows, hits[s]) for s in scorers}
    ceiling = {s: ceilings(classifiers[s]) for s in classifiers}
    n_family = {f: sum(prompt_family(r) == f for r in rows) for f in rates[scorers[0]] if f != "all"}
    n_family["all"] = len(rows)
    chance = {f: family_chance(f, args.top) for f in n_family if f != "all"}
    print(f"\ntop-{args.top} adherence (tempo: top 1; mixture: both classes in the SFX top {args.top}) over {len(rows)} clips ({len(prompts)} prompts x {args.seeds} seeds); "
          "in brackets: the classifier's top-1 accuracy on real corpus test clips (its ceiling)")
    print(f"{'family':<11}{'clips':>6}{'chance':>8}  " + "".join(f"{s:<24}" for s in scorers))
    for f, n in n_family.items():
        cells = []
        for s in scorers:
            c = ceiling.get(s, {}).get(f)
            cells.append(f"{rates[s][f]:>6.1%}" + (f" ({c:.3f})" if c is not None else "") + " " * 10)
        print(f"{f:<11}{n:>6}{format(chance[f], '>8.0%') if f in chance else '':>8}  "
              + "".join(f"{c:<24}" for c in cells))
    print("targets: latent diffusion >= 70%, tokens >= 60%")

    # 5. where the two classifiers disagree: a hit under one, a miss under the other
    disagree = None
    if len(scorers) == 2:
        a, b = scorers
        idx = [j for j in range(len(rows)) if hits[a][j] != hits[b][j]]
        disagree = {"clips": len(idx), "prompts": len({j // args.seeds for j in idx}),
                    f"only_{a}": sum(hits[a][j] for j in idx), f"only_{b}": sum(hits[b][j] for j in idx)}
        print(f"\n{a} and {b} disagree (hit under one, miss under the other) on {len(idx)} of {len(rows)} clips "
              f"({disagree['prompts']} of {len(prompts)} prompts): hit only under {a} {disagree[f'only_{a}']}, "
              f"only under {b} {disagree[f'only_{b}']}")
        if idx:
            print(f"{'rank ' + a:>14} {'rank ' + b:>22} {'seed':>6}  prompt")
            for j in idx:
                print(f"{ranks[a][j]:>14} {ranks[b][j]:>22} {seeds[j]:>6}  {rows[j]['prompt']}")

    source = f"read from {args.from_clips}" if args.from_clips else "generated"
    print(f"clips: {len(rows)} x {args.duration} s {source} in {seconds:.1f} s; settings {settings}")
    print(json.dumps({"model": args.model, "scorers": list(scorers), "top": args.top, "seeds": args.seeds,
                      "num_prompts": len(prompts), "num_clips": len(rows),
                      "adherence": {s: rates[s]["all"] for s in scorers},
                      "per_family": {s: {f: v for f, v in rates[s].items() if f != "all"} for s in scorers},
                      "ceiling": ceiling, "chance": chance, "disagree": disagree, **settings,
                      "seconds": round(seconds, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
