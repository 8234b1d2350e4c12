"""Listen and look: the same prompts through several models / vocoders, as WAV files and one spectrogram grid.

    .venv/bin/python benchmarks/listen_grid.py --out outputs/grid \
        --variant ldm=models/default-ldm --variant ldm-hifigan-v1=models/default-ldm@hifigan:keep-level \
        --variant ldm-universal=models/default-ldm@hifigan-universal --variant tokens=models/default-tokens

A variant is `NAME=MODEL_DIR[@VOCODER][:keep-level]`: `@VOCODER` replaces the model's vocoder by a registry
name (`hifigan` = the trained HiFi-GAN beside the model's VAE), `:keep-level` turns the output loudness
normalisation off (how clips came out before it existed). Default prompts: a siren, rain, a dog, piano,
violin, drums, English and French speech, worded unlike the corpus's caption templates.

Writes OUT/NAME/NN-prompt.wav, OUT/grid.png (rows: prompts, columns: variants; log-mel, 0-8 kHz) and
OUT/labels.json; prints what both label classifiers (models/labels on CLAP features, models/labels-features
on hand-crafted ones) hear in each clip, so the picture comes with two independent readings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "an ambulance siren wailing as it passes",
    "heavy rain drumming on a roof",
    "a large dog barking at a stranger",
    "someone playing a gentle melody on the piano",
    "a solo violin playing a slow, expressive tune",
    "a drummer keeping a steady rock groove",
    "a man talking in English",
    "a woman speaking French",
]


def parse_variant(text: str) -> dict:
    name, _, rest = text.partition("=")
    if not name or not rest:
        raise SystemExit(f"--variant must be NAME=MODEL_DIR[@VOCODER][:keep-level], got {text!r}")
    keep_level = rest.endswith(":keep-level")
    rest = rest.removesuffix(":keep-level")
    model, _, vocoder = rest.partition("@")
    return {"name": name, "model": model, "vocoder": vocoder or None, "keep_level": keep_level}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, help="NAME=MODEL_DIR[@VOCODER][:keep-level]")
    parser.add_argument("--out", default="outputs/grid")
    parser.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable; default: 8 prompts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from soundsmith.codecs.audio import read_audio
    from soundsmith.pipelines import load_pipeline

    prompts = args.prompt or PROMPTS
    out = Path(args.out)
    variants = [parse_variant(v) for v in args.variant]
    clips: dict[str, list[Path]] = {}
    for v in variants:
        folder = out / v["name"]
        folder.mkdir(parents=True, exist_ok=True)
        kwargs = {}
        if v["vocoder"] == "hifigan":
            kwargs["vocoder"] = {"name": "hifigan", "path": "vocoder"}
        elif v["vocoder"]:
            kwargs["vocoder"] = v["vocoder"]
        pipe = load_pipeline(ROOT / v["model"] if not Path(v["model"]).is_absolute() else v["model"], **kwargs)
        pipe.progress_bar = False
        paths = []
        t0 = time.perf_counter()
        for i, prompt in enumerate(prompts):
            path = folder / f"{i:02d}-{prompt[:40].replace(' ', '-').replace(',', '')}.wav"
            if not path.is_file():
                output = pipe(prompt, duration_s=args.duration, seed=args.seed,
                              loudness_lufs=None if v["keep_level"] else -16.0)
                output.save(path)
            paths.append(path)
        clips[v["name"]] = paths
        print(f"{v['name']}: {len(prompts)} clips in {time.perf_counter() - t0:.1f} s -> {folder}", flush=True)

    waves = {name: [read_audio(p, sample_rate=16_000, channels=1)[0][0] for p in paths]
             for name, paths in clips.items()}
    readings = read_labels(waves, prompts)
    (out / "labels.json").write_text(json.dumps(readings, indent=1), encoding="utf-8")
    for name, rows in readings.items():
        print(f"\n{name}")
        for prompt, row in zip(prompts, rows):
            print(f"  {prompt[:44]:44s} CLAP-feature: {row['labels']:38s} hand-crafted: {row['feature_labels']}")
    grid = draw_grid(waves, prompts, out / "grid.png")
    print(f"\ngrid: {grid}")
    return 0


def read_labels(waves: dict[str, list[np.ndarray]], prompts: list[str]) -> dict[str, list[dict]]:
    """What each classifier predicts per clip: domain and the domain's label ("music: piano")."""
    from soundsmith.eval.feature_labels import FeatureLabelClassifier
    from soundsmith.eval.labels import LabelClassifier

    judges = {"labels": LabelClassifier.from_pretrained(ROOT / "models" / "labels"),
              "feature_labels": FeatureLabelClassifier.from_pretrained(ROOT / "models" / "labels-features")}
    readings = {}
    for name, clips in waves.items():
        rows = []
        for wave in clips:
            row = {}
            for key, judge in judges.items():
                pred = judge.predict(torch.from_numpy(wave)[None], 16_000)
                domain = pred.get("domain")
                detail = {"sfx": pred.get("sfx_class"), "music": pred.get("instrument"),
                          "speech": pred.get("language")}.get(domain)
                row[key] = f"{domain}: {detail}"
            rows.append(row)
        readings[name] = rows
    return readings


def draw_grid(waves: dict[str, list[np.ndarray]], prompts: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from soundsmith.codecs.mel import MelConfig, MelSpectrogram

    front = MelSpectrogram(MelConfig())
    names = list(waves)
    fig, axes = plt.subplots(len(prompts), len(names), figsize=(3.2 * len(names), 1.6 * len(prompts)), squeeze=False)
    for c, name in enumerate(names):
        for r, wave in enumerate(waves[name]):
            mel = front(torch.from_numpy(wave)[None])[0].numpy()  # [64, S]
            ax = axes[r, c]
            ax.imshow(mel, origin="lower", aspect="auto", vmin=mel.max() - 9, vmax=mel.max(),
                      extent=(0, mel.shape[1] / 100, 0, 64))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(prompts[r][:22], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
