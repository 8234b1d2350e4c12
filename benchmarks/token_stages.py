"""Where does the token backend lose what identifies a sound? Each stage scored on real test clips.

    .venv/bin/python benchmarks/token_stages.py --model models/default-tokens [--per 20] [--threads 2]

Clips: the corpus test split (`--data`, default data/corpus), the first `--per` single-label clips of the sfx
and music domains and `--per / 2` of speech, 5 s each. Every row is scored by both label classifiers
(models/labels on CLAP features, models/labels-features on hand-crafted ones): the share of clips whose true
class (SFX class / instrument / language) is in the family's top `--top` (3, as benchmarks/adherence.py),
after levelling to -16 LUFS as the pipeline does. Rows:

    real            the clips themselves: the classifiers' ceiling
    codec           codec round trip, the levels the model decodes: the acoustic tokens' ceiling
    oracle          the clip's real semantic tokens -> coarse (+ fine) LM -> decoder: the acoustic stage
                    alone, given a perfect plan (one row per coarse sampling setting, `--coarse-sampling`)
    text            the clip's caption -> the whole pipeline (unless `--skip-text`)
    plan (proxy)    semantic tokens only: the plan's k-means centroids pooled through CLAP's audio head,
                    ranked against the family's class captions by CLAP (real plan, and the plan the
                    semantic LM samples from the caption). CLAP judges its own space here: a proxy, not a
                    listener's measure.

`--checkpoint DIR` swaps in the EMA weights of a coarse-LM run checkpoint (OUT/checkpoints/step-N), so a run
can be followed while it trains.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
FAMILY = {"sfx": "sfx class", "music": "instrument", "speech": "language"}


def test_clips(data: Path, per: int, seconds: float, sample_rate: int) -> tuple[list[dict], torch.Tensor]:
    """(rows {prompt, domain, label}, waves [N, 1, T]) of single-label test clips, in metadata order."""
    from soundsmith.codecs.audio import read_audio

    rows, waves, count = [], [], {"sfx": 0, "music": 0, "speech": 0}
    limit = {"sfx": per, "music": per, "speech": max(1, per // 2)}
    n = int(seconds * sample_rate)
    for line in (data / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
        meta = json.loads(line)
        domain, labels = meta.get("domain"), meta.get("labels", {})
        if meta.get("split") != "test" or domain not in count or count[domain] >= limit[domain]:
            continue
        found = {"sfx": labels.get("classes"), "music": labels.get("instruments"),
                 "speech": [labels.get("language")]}[domain]
        if not found or len(found) != 1:
            continue
        wave, _ = read_audio(data / meta["file_name"], sample_rate=sample_rate, channels=1)
        if wave.shape[-1] < n:
            continue
        count[domain] += 1
        rows.append({"prompt": meta["caption"], "domain": domain, "label": found[0]})
        waves.append(torch.from_numpy(wave[..., :n]))
    return rows, torch.stack(waves)


def hit_rates(ranks: list[int], rows: list[dict], top: int) -> dict[str, float]:
    out = {}
    for domain, family in FAMILY.items():
        hits = [r <= top for r, row in zip(ranks, rows) if row["domain"] == domain]
        out[family] = 100.0 * sum(hits) / max(1, len(hits))
    out["all"] = 100.0 * sum(r <= top for r in ranks) / len(ranks)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "default-tokens"), help="token model folder")
    p.add_argument("--data", default=str(ROOT / "data" / "corpus"))
    p.add_argument("--per", type=int, default=20, help="clips per sfx / music (speech: half)")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--checkpoint", default=None, help="coarse-LM run checkpoint whose EMA weights to use")
    p.add_argument("--coarse-sampling", default="", help="more oracle rows: TEMPERATURE:TOP_K,... (besides the "
                   "model's default)")
    p.add_argument("--skip-text", action="store_true", help="leave out the whole-pipeline row")
    p.add_argument("--labels", default=str(ROOT / "models" / "labels"))
    p.add_argument("--feature-labels", default=str(ROOT / "models" / "labels-features"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from adherence import class_labels, classifier_ranks, load_classifier
    from soundsmith.codecs.audio import DEFAULT_LOUDNESS_LUFS, loudness_normalize
    from soundsmith.core.captions import class_caption
    from soundsmith.gen.token_lm import SamplingParams
    from soundsmith.pipelines import load_pipeline
    from soundsmith.pipelines.tokens import resolve_sampling

    pipe = load_pipeline(args.model)
    pipe.progress_bar = False
    if pipe.backend != "tokens" or not hasattr(pipe, "kmeans"):
        raise SystemExit(f"{args.model}: needs a soundsmith token model (semantic tokens)")
    if args.checkpoint:
        from safetensors import safe_open

        prefix = "ema/shadow/"
        with safe_open(str(Path(args.checkpoint) / "state.safetensors"), "pt") as f:
            state = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        pipe.coarse_lm.load_state_dict(state)
    sr = pipe.sample_rate
    rows, waves = test_clips(Path(args.data), args.per, 5.0, sr)
    scorers = {"CLAP-feature": load_classifier(args, "labels"), "hand-crafted": load_classifier(args, "feature-labels")}
    table: list[dict] = []

    def score(name: str, audio: torch.Tensor, level: bool = True) -> None:
        if level:
            audio = torch.stack([torch.as_tensor(loudness_normalize(x.numpy(), sr, DEFAULT_LOUDNESS_LUFS))
                                 for x in audio.float()])
        row = {"row": name}
        for scorer, clf in scorers.items():
            row[scorer] = hit_rates(classifier_ranks(clf, rows, audio, sr), rows, args.top)
        table.append(row)
        print(f"{name:22s} " + "   ".join(f"{s}: " + " / ".join(f"{v:5.1f}" for v in row[s].values())
                                          for s in scorers), flush=True)

    def plan_proxy(name: str, semantic: torch.Tensor) -> None:
        emb = pipe.kmeans.audio_embedding(semantic.cpu()).float()  # [N, D], L2-normalised
        out = {}
        for domain, family in FAMILY.items():
            idx = [i for i, r in enumerate(rows) if r["domain"] == domain]
            labels = class_labels(domain)
            captions = F.normalize(pipe.conditioner.embed_text([class_caption(domain, x) for x in labels]).float(), dim=-1)
            sims = emb[idx] @ captions.T.to(emb.device)
            own = sims[torch.arange(len(idx)), torch.tensor([labels.index(rows[i]["label"]) for i in idx])]
            out[family] = 100.0 * float(((1 + (sims > own[:, None]).sum(1)) <= args.top).float().mean())
        table.append({"row": name, "CLAP proxy": out})
        print(f"{name:22s} CLAP proxy: " + " / ".join(f"{v:5.1f}" for v in out.values()), flush=True)

    counts = {d: sum(r["domain"] == d for r in rows) for d in FAMILY}
    print(f"{args.model}: {counts} test clips; hit = true class in the top {args.top}; columns sfx class / "
          "instrument / language / all", flush=True)
    t0 = time.perf_counter()
    score("real", waves)
    semantic, codes = pipe._tokenize_prompt(waves)  # [N, S], [N, K, F]
    levels = pipe.coarse_lm.config.n_coarse + (pipe.fine_lm.config.n_fine if pipe.fine_lm is not None else 0)
    score("codec", pipe.codec.decode(codes[:, :levels], num_samples=waves.shape[-1]))
    plan_proxy("plan (proxy), real", semantic)

    cond = pipe._cond_tokens([r["prompt"] for r in rows])
    sampling = resolve_sampling(pipe.config, None, None, None)
    coarse_guidance = pipe.config.guidance_scale if "coarse" in pipe.config.guided_stages else 1.0
    settings = [("oracle", sampling["coarse"])]
    for item in filter(None, args.coarse_sampling.split(",")):
        temperature, top_k = item.split(":")
        settings.append((f"oracle {item}", SamplingParams(temperature=float(temperature), top_k=int(top_k))))
    for name, params in settings:
        outs = []
        for start in range(0, len(rows), 8):
            idx = list(range(start, min(start + 8, len(rows))))
            generators = [torch.Generator().manual_seed(i) for i in idx]
            coarse = pipe.coarse_lm.generate(cond[idx], semantic[idx], codes.shape[-1], guidance_scale=coarse_guidance,
                                             sampling=params, generators=generators,
                                             context_fraction=pipe.config.context_fraction)
            if pipe.fine_lm is not None:
                fine = pipe.fine_lm.generate(coarse, sampling=sampling["fine"], generators=generators,
                                             context_fraction=pipe.config.fine_context_fraction)
                coarse = torch.cat([coarse, fine], dim=1)
            outs.append(pipe.codec.decode(coarse, num_samples=waves.shape[-1]))
        score(name, torch.cat(outs))
    plans = pipe.semantic_lm.generate(cond, semantic.shape[1], guidance_scale=pipe.config.guidance_scale,
                                      sampling=sampling["semantic"],
                                      generators=[torch.Generator().manual_seed(i) for i in range(len(rows))],
                                      context_fraction=pipe.config.context_fraction)
    plan_proxy("plan (proxy), sampled", plans)
    if not args.skip_text:
        out = pipe([r["prompt"] for r in rows], duration_s=5.0, seed=list(range(len(rows))), watermark=False)
        score("text", torch.as_tensor(out.audios), level=False)  # the pipeline levels its output itself
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "clips": counts, "rows": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
