"""Which condition suits a latent-mixup example? Compares, over beat-synchronous audio mixtures of corpus
music pairs, the CLAP audio embedding of the real mixture with the L2-normalised lambda-mix of the two
clips' embeddings (what `mixup: "latent"` uses, train/mixup.py) and with the combined caption's embedding.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mixup_condition.py
        [--clap models/clap] [--data data/corpus] [--pairs 40] [--seed 0]

Prints median cosines over the pairs (train-split music, tempi within 5 %, lambda ~ Beta(5, 5)).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clap", default=str(ROOT / "models" / "clap"), help="CLAP folder (ours or transformers)")
    parser.add_argument("--data", default=str(ROOT / "data" / "corpus"), help="corpus folder (metadata.jsonl)")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from soundsmith.codecs.audio import read_audio
    from soundsmith.gen.conditioners import ClapConditioner
    from soundsmith.train.mixup import audio_mixup, beats_from_labels, combine_captions, tempo_partners

    conditioner = ClapConditioner.from_pretrained(Path(args.clap))
    rows = [json.loads(line) for line in (Path(args.data) / "metadata.jsonl").read_text().splitlines() if line.strip()]
    music = [r for r in rows if r.get("split") == "train" and r.get("domain") == "music"]
    grids = [beats_from_labels(r["labels"]) for r in music]
    partners = tempo_partners(grids, [float(r.get("duration", 5.0)) for r in music], max_tempo_ratio=1.05)
    rng = np.random.default_rng(args.seed)
    cosines = []
    for i in rng.permutation(len(music)):
        if len(cosines) == args.pairs:
            break
        if not partners[i]:
            continue
        j, lam = int(rng.choice(partners[i])), float(rng.beta(5, 5))
        a, sr = read_audio(Path(args.data) / music[i]["file_name"], channels=1)
        b, _ = read_audio(Path(args.data) / music[j]["file_name"], sample_rate=sr, channels=1)
        mix = audio_mixup(a, grids[i], b, grids[j], sr, lam).wave
        with torch.no_grad():
            audio = torch.nn.functional.normalize(
                conditioner.model.embed_audio(torch.from_numpy(np.stack([a, b[:, :a.shape[-1]], mix])), sr).float(), dim=-1)
            text = torch.nn.functional.normalize(conditioner.embed_text(
                [music[i]["caption"], music[j]["caption"], combine_captions(music[i]["caption"], music[j]["caption"])]
            ).float(), dim=-1)
        mixed_audio = torch.nn.functional.normalize(lam * audio[0] + (1 - lam) * audio[1], dim=0)
        mixed_text = torch.nn.functional.normalize(lam * text[0] + (1 - lam) * text[1], dim=0)
        cosines.append([float(audio[2] @ mixed_audio), float(audio[2] @ audio[0]), float(audio[2] @ audio[1]),
                        float(text[2] @ mixed_text), float(audio[2] @ text[2]), float(audio[2] @ mixed_text)])
    c = np.median(np.array(cosines), axis=0)
    print(f"{len(cosines)} mixtures of train-split music pairs, CLAP {args.clap}; median cosines:")
    print(f"  CLAP(mixture audio) vs lambda-mix of the two audio embeddings  {c[0]:.3f}")
    print(f"  CLAP(mixture audio) vs clip a's / clip b's audio embedding      {c[1]:.3f} / {c[2]:.3f}")
    print(f"  combined caption's text embedding vs lambda-mix of the two      {c[3]:.3f}")
    print(f"  CLAP(mixture audio) vs combined caption / lambda-mix of texts   {c[4]:.3f} / {c[5]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
