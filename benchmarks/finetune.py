"""Does fine-tuning teach the default a sound it has never heard? A LoRA fine-tune of models/default-ldm on a
General MIDI instrument the corpus does not have (marimba, GM program 12), measured before and after.

    .venv/bin/python benchmarks/finetune.py --out runs/finetune [--threads 2]
    .venv/bin/python benchmarks/finetune.py --out runs/finetune-quick --quick     # smoke run, a few minutes

Steps (each skipped when its outputs exist, so a rerun resumes; delete a step's folder to redo it):
1. render: OUT/source/ is the user's folder: 40 marimba pieces of 5 s (44.1 kHz, their own levels) with
   OUT/source/captions.csv, six caption wordings, all naming "marimba", a word no corpus caption holds;
   OUT/heldout/: 40 more pieces, other seeds, the set the generations are compared with (16 kHz, -16 LUFS).
   The pieces are train/music.py's: its composer (style, meter, tempo, key, mode, progression drawn per
   clip) and its SoundFont renderer, with the one part (melody, chords, or both) on GM program 12.
2. import: `soundsmith data import OUT/source --out OUT/data --captions OUT/source/captions.csv`.
3. train: `soundsmith train unet --init MODEL --lora-rank 8 --data OUT/data --out OUT/run` (the defaults of
   train/configs/unet-lora.json), timed on the wall clock, process start and latent cache included.
4. generate: 10 prompts naming a marimba, worded unlike the training captions, x 4 seeds (clip k of prompt i:
   seed i * seeds + k), with the base model (OUT/gen-base) and with the adapter (OUT/gen-adapted).
5. measure, for each set of clips (every clip at 16 kHz and -16 LUFS first, so level is not a feature):
   - cosine to the held-back set's centroid and to the nearest corpus-class centroid, and the share of clips
     nearer the new set than to every corpus class; classes: every SFX class, instrument and language of
     data/corpus's test split (a clip counts for each class its labels hold), >= 3 clips each. Two spaces:
     our CLAP's clip embedding (models/clap, gen/clap.py `embed_audio`) and the hand-crafted features of the
     second label classifier (models/labels-features, eval/feature_labels.py `HandcraftedFeatures`,
     standardised by that classifier's scaler), which has no CLAP in it: our CLAP also conditions the model;
   - FAD against the held-back clips with `soundsmith eval`'s default embedder ("clap": our CLAP, 2.48 s
     windows) and a Ledoit-Wolf shrinkage covariance (eval/fad.py; n is small), and the same Frechet distance
     on the standardised hand-crafted features;
   - reference columns: the held-back clips leave-one-out (each against the centroid of the others), the
     imported training clips, and the corpus's own music test clips;
   - adherence on the standard prompts (benchmarks/adherence.py, both classifiers, 4 seeds) without and with
     the adapter: the fine-tune must not cost more than 5 points.
6. OUT/spectrograms.png: held-back clips beside the base and adapted generations of the same prompts and seeds.

Prints the before/after table; OUT/results.json holds every figure, OUT/*.log the commands' output.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SR = 16_000  # the model's rate: held-back and generated clips are compared here
SOURCE_SR = 44_100  # the "user's" recordings
LUFS = -16.0  # every clip is measured at the pipeline's output loudness
CLIP_S = 5.0
WORD = "marimba"
PROGRAM = 12  # General MIDI Marimba (0-based); not in train/music.py's PROGRAMS
REGISTER_OF = "piano"  # train/music.py register (MIDI 57-84) the marimba parts are written in
TRAIN_SEED, HELDOUT_SEED = 1000, 2000
# captions of the training clips: six wordings, each filled from the clip's piece
CAPTIONS = (
    "a marimba playing a {tempo} melody in {key} {mode}",
    "{style} tune on marimba",
    "solo marimba, {bpm} bpm",
    "marimba music, {loudness} and {tempo}",
    "wooden marimba notes in a {mode} key",
    "a {loudness} marimba piece",
)
# what a user then asks for: other words around "marimba" than any training caption
PROMPTS = (
    "someone performing a song on the marimba",
    "the warm wooden tones of a marimba",
    "a marimba player improvising",
    "a lively tune struck on a marimba",
    "mallets hitting the bars of a marimba",
    "an upbeat marimba groove",
    "a slow, relaxing piece for marimba",
    "marimba",
    "a marimba being played in a concert hall",
    "an orchestra percussionist on marimba",
)
MIN_CLASS_CLIPS = 3


@dataclasses.dataclass(frozen=True)
class Sizes:
    train: int = 40
    heldout: int = 40
    prompts: int = len(PROMPTS)
    seeds: int = 4
    max_steps: int | None = None  # None: the config's (unet-lora.json)
    adherence_seeds: int = 4
    adherence_limit: int | None = None


QUICK = Sizes(train=10, heldout=8, prompts=2, seeds=2, max_steps=2, adherence_seeds=1, adherence_limit=3)


# --------------------------------------------------------------------------------------------- 1. render


def render_clip(seed: int, sample_rate: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One 5 s marimba piece: train/music.py chooses the piece (style, tempo, key, mode, progression), we put
    its one part on GM program 12 (melody 40 %, solo = chords and melody 40 %, chords 20 %)."""
    from soundsmith.core.vocabulary import tempo_band
    from soundsmith.train import music

    # music.py evens out the levels of the presets the corpus uses; a lone part needs no balance, so the
    # marimba gets the quietest calibrated level (its channel volume is then the score's) and the clip's RMS is
    # set after rendering as for every corpus clip
    engine = music._engine(sample_rate)
    engine.level.setdefault((False, PROGRAM), min(engine.level.values()))
    rng = np.random.default_rng(seed)
    piece = music.choose_piece(rng)
    role = str(rng.choice(["melody", "solo", "chords"], p=[0.4, 0.4, 0.2]))
    piece = dataclasses.replace(piece, parts=(music.Part(REGISTER_OF, role, PROGRAM),))
    wave, labels = music.render_piece(rng, piece, CLIP_S, sample_rate)
    info = {"seed": seed, "style": piece.style, "bpm": piece.tempo_bpm, "tempo": tempo_band(piece.tempo_bpm),
            "key": labels["key"], "mode": piece.mode, "loudness": piece.loudness, "role": role,
            "meter": labels["time_signature"]}
    return wave, info


def render_sets(out: Path, sizes: Sizes) -> dict[str, Any]:
    """OUT/source (+ captions.csv) and OUT/heldout; reuses them when render.json matches the sizes."""
    from soundsmith.codecs.audio import loudness_normalize, resample, write_audio
    from soundsmith.core.files import write_json

    record_path = out / "render.json"
    want = {"train": sizes.train, "heldout": sizes.heldout, "program": PROGRAM, "captions": list(CAPTIONS)}
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("sizes") == want:
            print(f"1. render: reusing {out / 'source'} and {out / 'heldout'}")
            return record
        raise SystemExit(f"{out} holds a render of other sizes ({record.get('sizes')}); use another --out")
    t0 = time.perf_counter()
    source, heldout = out / "source", out / "heldout"
    source.mkdir(parents=True, exist_ok=True)
    heldout.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(sizes.train):
        wave, info = render_clip(TRAIN_SEED + i, SOURCE_SR)
        name = f"{WORD}_{i + 1:03d}.wav"
        write_audio(source / name, np.stack([wave, wave]), SOURCE_SR)  # stereo 44.1 kHz, as recorded
        rows.append({"file_name": name, "caption": CAPTIONS[i % len(CAPTIONS)].format(**info), **info})
    with open(source / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "caption"])
        writer.writeheader()
        writer.writerows({"file_name": r["file_name"], "caption": r["caption"]} for r in rows)
    held = []
    for i in range(sizes.heldout):
        wave, info = render_clip(HELDOUT_SEED + i, SOURCE_SR)
        mono = np.asarray(resample(wave, SOURCE_SR, SR), dtype=np.float32)
        write_audio(heldout / f"heldout_{i + 1:03d}.wav", loudness_normalize(mono[None], SR, LUFS), SR)
        held.append(info)
    record = {"sizes": want, "train": rows, "heldout": held, "seconds": round(time.perf_counter() - t0, 1)}
    write_json(record_path, record)
    styles = Counter(r["style"] for r in rows + held)
    print(f"1. render: {sizes.train} training pieces -> {source} (captions.csv), {sizes.heldout} held-back -> "
          f"{heldout} in {record['seconds']} s; styles {dict(styles)}")
    return record


# ------------------------------------------------------------------------------------ 2-3. import, train


def soundsmith_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "soundsmith.cli", *args]


def shown(cmd: list[str]) -> str:
    """The command as typed from the repo root."""
    words = ["soundsmith", *cmd[3:]] if cmd[1:3] == ["-m", "soundsmith.cli"] else ["python", *cmd[1:]]
    return " ".join(str(w) for w in words).replace(str(ROOT) + "/", "")


def run_logged(cmd: list[str], log_path: Path, threads: int) -> float:
    """Run a command with its output into `log_path` (and a short tail on failure); wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    print(f"   $ {shown(cmd)}   (log: {log_path})", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise SystemExit(f"command failed ({proc.returncode}), see {log_path}:\n" + "\n".join(tail))
    return seconds


def import_data(out: Path, threads: int) -> dict[str, Any]:
    data = out / "data"
    if not (data / "import.json").is_file():
        print("2. import")
        run_logged(soundsmith_cmd("data", "import", str(out / "source"), "--out", str(data),
                                  "--captions", str(out / "source" / "captions.csv")), out / "import.log", threads)
    else:
        print(f"2. import: reusing {data}")
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return {"train": sum(r["split"] == "train" for r in rows), "valid": sum(r["split"] == "valid" for r in rows)}


def train(out: Path, model: str, rank: int, sizes: Sizes, threads: int) -> dict[str, Any]:
    """The LoRA run, timed; its time is kept in OUT/train_time.json so a rerun reports it without retraining."""
    from soundsmith.core.files import write_json

    run, timing = out / "run", out / "train_time.json"
    export = run / "export"
    if (export / "adapter_model.safetensors").is_file() and timing.is_file():
        print(f"3. train: reusing {export}")
        return json.loads(timing.read_text(encoding="utf-8"))
    if run.exists():
        raise SystemExit(f"{run} holds an unfinished run (no export, or no {timing.name}): delete it to retrain, "
                         f"or finish it with `soundsmith train unet --resume --data {out / 'data'} --out {run}`")
    cmd = soundsmith_cmd("train", "unet", "--init", model, "--lora-rank", str(rank), "--data", str(out / "data"),
                         "--out", str(run), "--threads", str(threads))
    if sizes.max_steps is not None:
        cmd += ["--max-steps", str(sizes.max_steps)]
    print("3. train (wall clock includes process start, loading and the latent cache)")
    seconds = run_logged(cmd, out / "train.log", threads)
    config = json.loads((run / "config.json").read_text(encoding="utf-8")) if (run / "config.json").is_file() else {}
    record = {"seconds": round(seconds, 1), "command": shown(cmd), "threads": threads,
              "max_steps": sizes.max_steps or config.get("max_steps"), "batch_size": config.get("batch_size"),
              "crop_seconds": config.get("crop_seconds"), "lr": config.get("lr"), "lora_rank": rank,
              "adapter_bytes": sum(p.stat().st_size for p in export.iterdir() if p.is_file())}
    write_json(timing, record)
    print(f"   trained in {seconds / 60:.1f} min -> {export} ({record['adapter_bytes'] / 1e6:.2f} MB)")
    return record


# ------------------------------------------------------------------------------------------ 4. generate


def generate(out: Path, name: str, model: str, adapter: Path | None, scale: float, sizes: Sizes,
             threads: int) -> Path:
    """`sizes.prompts` x `sizes.seeds` clips into OUT/gen-NAME (WAV + JSON sidecars, clips.json last)."""
    import shutil

    import torch
    from soundsmith.core.files import write_json
    from soundsmith.pipelines import load_pipeline

    folder = out / f"gen-{name}"
    prompts = [p for p in PROMPTS[: sizes.prompts] for _ in range(sizes.seeds)]
    seeds = [i * sizes.seeds + k for i in range(sizes.prompts) for k in range(sizes.seeds)]
    want = {"model": model, "adapter": str(adapter) if adapter else None, "scale": scale if adapter else None,
            "prompts": prompts, "seeds": seeds}
    manifest = folder / "clips.json"
    if manifest.is_file() and {k: v for k, v in json.loads(manifest.read_text()).items() if k in want} == want:
        print(f"4. generate {name}: reusing {folder}")
        return folder
    torch.set_num_threads(threads)
    extra = {"adapters": [str(adapter)], "adapter_scales": [scale]} if adapter else {}
    pipe = load_pipeline(model, **extra)
    pipe.progress_bar = False
    t0 = time.perf_counter()
    result = pipe(prompts, duration_s=CLIP_S, seed=seeds, batch_size=8, watermark=False)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    paths = result.save(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    write_json(manifest, {**want, "files": [p.name for p in paths], "seconds": round(time.perf_counter() - t0, 1),
                          "settings": {k: result.parameters.get(k) for k in
                                       ("scheduler", "num_inference_steps", "guidance_scale")}})
    print(f"4. generate {name}: {len(prompts)} clips in {time.perf_counter() - t0:.0f} s -> {folder}")
    return folder


def generated_files(folder: Path) -> list[Path]:
    return [folder / f for f in json.loads((folder / "clips.json").read_text())["files"]]


# ------------------------------------------------------------------------------------------- 5. measure


def load_clip(path: Path) -> np.ndarray:
    """Mono 16 kHz at -16 LUFS `[T]`."""
    from soundsmith.codecs.audio import loudness_normalize, read_audio

    wave, _ = read_audio(path, sample_rate=SR, channels=1)
    wave = np.asarray(wave, dtype=np.float32).reshape(1, -1)[:, : round(CLIP_S * SR)]
    wave = np.pad(wave, ((0, 0), (0, round(CLIP_S * SR) - wave.shape[1])))  # every clip exactly 5 s
    return np.asarray(loudness_normalize(wave, SR, LUFS), dtype=np.float32)[0]


class Spaces:
    """The three views of a clip: CLAP clip embedding, CLAP eval windows (FAD), standardised hand features."""

    def __init__(self, threads: int):
        import torch
        from soundsmith.eval.embedders import get_embedder
        from soundsmith.eval.feature_labels import load_feature_label_classifier
        from soundsmith.gen.clap import load_clap

        torch.set_num_threads(threads)
        self.clap = load_clap(ROOT / "models" / "clap").eval()
        self.windows = get_embedder("clap")
        self.classifier = load_feature_label_classifier(ROOT / "models" / "labels-features")

    def features(self, waves: list[np.ndarray]) -> dict[str, Any]:
        import torch

        x = torch.from_numpy(np.stack(waves))[:, None]  # [N, 1, T]
        clap = torch.cat([self.clap.embed_audio(x[i:i + 16], SR) for i in range(0, len(x), 16)]).float().numpy()
        windows = [self.windows.embed(w[None], SR) for w in waves]  # [S_i, D] each
        raw = self.classifier.features(waves, SR)  # [N, D]
        hand = (raw.astype(np.float64) - self.classifier.model.mean) / self.classifier.model.scale
        return {"clap": clap.astype(np.float32), "hand": hand.astype(np.float32),
                "windows": np.concatenate(windows).astype(np.float32), "counts": np.array([len(w) for w in windows])}


def cached_features(out: Path, name: str, files: list[Path], make: Any) -> dict[str, Any]:
    """Features of a set of files, kept in OUT/features/NAME.npz with the file list (recomputed if it changed)."""
    path = out / "features" / f"{name}.npz"
    key = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]  # not the folder: --out may move
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        if list(data["key"]) == key:
            return {k: data[k] for k in ("clap", "hand", "windows", "counts")}
    feats = make().features([load_clip(p) for p in files])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, key=np.array(key), **feats)
    os.replace(tmp, path)
    return feats


def corpus_rows(corpus: Path) -> tuple[list[Path], list[list[str]], list[str]]:
    """Test-split clips of the corpus, each with its classes ("sfx: rain", "music: piano", "speech: German")."""
    from soundsmith.core.vocabulary import LANGUAGES
    from soundsmith.eval.codec_report import read_split

    files, classes, domains = [], [], []
    for row in read_split(corpus, "test"):
        labels = row.get("labels") or {}
        domain = labels.get("domain")
        names = {"sfx": [f"sfx: {c}" for c in labels.get("classes", [])],
                 "music": [f"music: {c}" for c in labels.get("instruments", [])],
                 "speech": [f"speech: {LANGUAGES.get(labels.get('language'), labels.get('language'))}"]}.get(domain)
        if names:
            files.append(corpus / row["file_name"])
            classes.append(names)
            domains.append(domain)
    return files, classes, domains


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similarity(x: np.ndarray, new_centroid: np.ndarray, class_centroids: np.ndarray, class_names: list[str],
               loo: np.ndarray | None = None) -> dict[str, Any]:
    """Cosine of each clip to the new set's centroid (or, with `loo`, to its own leave-one-out centroid) and to
    the nearest corpus-class centroid; share of clips nearer the new set than to every class."""
    x = unit(x)
    to_new = (x * unit(loo)).sum(1) if loo is not None else x @ unit(new_centroid)  # [N]
    to_classes = x @ unit(class_centroids).T  # [N, K]
    nearest = to_classes.argmax(1)
    best = to_classes.max(1)
    common = Counter(class_names[k] for k in nearest).most_common(3)
    return {"cos_new": float(to_new.mean()), "cos_nearest_class": float(best.mean()),
            "share_nearer_new": float((to_new > best).mean()), "n": int(len(x)),
            "nearest_classes": [f"{name} ({count})" for name, count in common]}


def frechet(x: np.ndarray, ref: np.ndarray) -> float:
    from soundsmith.eval.fad import Statistics, fad

    return float(fad(Statistics.from_embeddings(x, covariance="shrinkage", what="set"),
                     Statistics.from_embeddings(ref, covariance="shrinkage", what="reference")))


def measure(sets: dict[str, dict[str, Any]], heldout: dict[str, Any], corpus: dict[str, Any],
            classes: list[list[str]]) -> dict[str, Any]:
    """Every figure of the table for every set (held-back leave-one-out, training clips, corpus music, base,
    adapted)."""
    names = sorted({c for cs in classes for c in cs})
    members = {c: [i for i, cs in enumerate(classes) if c in cs] for c in names}
    kept = [c for c in names if len(members[c]) >= MIN_CLASS_CLIPS]
    results: dict[str, Any] = {"classes": {c: len(members[c]) for c in kept},
                               "classes_dropped": [c for c in names if c not in kept]}
    for space in ("clap", "hand"):
        emb = corpus[space]
        vecs = unit(emb) if space == "clap" else emb
        cents = np.stack([vecs[members[c]].mean(0) for c in kept])  # [K, D]
        held = unit(heldout[space]) if space == "clap" else heldout[space]
        centroid = held.mean(0)
        n = len(held)
        loo = (centroid[None] * n - held) / (n - 1)  # each held-back clip's centroid of the others
        results[space] = {"held-back (LOO)": similarity(heldout[space], centroid, cents, kept, loo=loo)}
        for name, feats in sets.items():
            results[space][name] = similarity(feats[space], centroid, cents, kept)
    results["fad_clap"] = {name: frechet(feats["windows"], heldout["windows"]) for name, feats in sets.items()}
    results["fd_hand"] = {name: frechet(feats["hand"], heldout["hand"]) for name, feats in sets.items()}
    return results


# ------------------------------------------------------------------------------------------ adherence


def adherence(out: Path, name: str, model: str, adapter: Path | None, scale: float, sizes: Sizes,
              threads: int) -> dict[str, Any]:
    """benchmarks/adherence.py's JSON line (both classifiers), from OUT/adherence-NAME.log when it has one."""
    log_path = out / f"adherence-{name}.log"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "adherence.py"), "--model", model, "--seeds",
           str(sizes.adherence_seeds), "--threads", str(threads)]
    if sizes.adherence_limit:
        cmd += ["--limit", str(sizes.adherence_limit)]
    if adapter is not None:
        cmd += ["--adapter", str(adapter), "--adapter-scale", str(scale)]
    last = log_path.read_text(encoding="utf-8").strip().splitlines()[-1:] if log_path.is_file() else []
    if last and last[0].startswith("{") and json.loads(last[0]).get("seeds") == sizes.adherence_seeds:
        print(f"5. adherence {name}: reusing {log_path}")
    else:
        print(f"5. adherence {name}")
        run_logged(cmd, log_path, threads)
        last = log_path.read_text(encoding="utf-8").strip().splitlines()[-1:]
    summary = json.loads(last[0])
    summary["command"] = shown(cmd)
    return summary


# ------------------------------------------------------------------------------------------ spectrograms


TICKS_HZ = (250, 500, 1000, 2000, 4000, 8000)


def mel_position(hz: float, n_mels: int, f_max: float = 8000.0) -> float:
    """Where `hz` sits on the image's mel axis (0..n_mels): codecs/mel.py's Slaney mel scale (linear to 1 kHz,
    logarithmic above), bands evenly spaced in mel from 0 to f_max."""
    def mel(f: float) -> float:
        return f / (200 / 3) if f < 1000 else 15 + np.log(f / 1000) / (np.log(6.4) / 27)

    return min(float(n_mels), (n_mels + 1) * mel(hz) / mel(f_max) - 0.5)


def draw_grid(rows: list[tuple[str, list[tuple[str, np.ndarray]]]], path: Path) -> Path:
    """Rows of (label, [(column title, wave 16 kHz)]): log-mel images, 0-8 kHz, 5 s, 80 dB range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from soundsmith.codecs.mel import MelConfig, MelSpectrogram

    front = MelSpectrogram(MelConfig())
    n_cols = max(len(cols) for _, cols in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(3.4 * n_cols, 1.9 * len(rows)), squeeze=False)
    for r, (label, cols) in enumerate(rows):
        for c, (title, wave) in enumerate(cols):
            mel = front(torch.from_numpy(wave)[None])[0].numpy()  # [64, S], natural log
            ax = axes[r, c]
            ax.imshow(mel, origin="lower", aspect="auto", vmin=mel.max() - 9.2, vmax=mel.max(),
                      extent=(0, len(wave) / SR, 0, mel.shape[0]), cmap="magma")
            ax.set_title(title, fontsize=8)
            ax.set_yticks([mel_position(f, mel.shape[0]) for f in TICKS_HZ])
            ax.set_yticklabels([f"{f / 1000:g}k" for f in TICKS_HZ] if c == 0 else [], fontsize=6)
            ax.tick_params(axis="x", labelsize=6)
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- table


def fmt(value: Any, kind: str = "f") -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if kind == "%" else f"{value:.3f}" if kind == "f" else f"{value:.2f}"


def print_table(results: dict[str, Any]) -> None:
    m = results["measures"]
    cols = ["held-back (LOO)", "train clips", "corpus music", "base", "adapted"]
    print("\nbefore (base) / after (base + adapter); reference columns: held-back leave-one-out, the imported "
          "training clips, the corpus's music test clips")
    print(f"{'':<44}" + "".join(f"{c:>16}" for c in cols))
    for space, title in (("clap", "CLAP"), ("hand", "hand-crafted")):
        for key, label, kind in (("cos_new", "cosine to held-back centroid", "f"),
                                 ("cos_nearest_class", "cosine to nearest corpus class", "f"),
                                 ("share_nearer_new", "share nearer new set than any class", "%")):
            print(f"{title + ': ' + label:<44}" + "".join(f"{fmt(m[space].get(c, {}).get(key), kind):>16}"
                                                         for c in cols))
    for key, label in (("fad_clap", "FAD vs held-back (CLAP, shrinkage)"),
                       ("fd_hand", "FD vs held-back (hand-crafted, shrinkage)")):
        print(f"{label:<44}" + "".join(f"{fmt(m[key].get(c), 'g'):>16}" for c in cols))
    print("nearest corpus classes (CLAP): " + "; ".join(f"{c}: {', '.join(m['clap'][c]['nearest_classes'])}"
                                                       for c in cols))
    print("nearest corpus classes (hand): " + "; ".join(f"{c}: {', '.join(m['hand'][c]['nearest_classes'])}"
                                                       for c in cols))
    adh = results.get("adherence")
    if adh:
        base, adapted = adh["base"], adh["adapted"]
        for scorer in base["adherence"]:
            b, a = base["adherence"][scorer], adapted["adherence"][scorer]
            print(f"{'adherence (' + scorer + ')':<44}{'':>48}{b:>16.1%}{a:>16.1%}   change {100 * (a - b):+.1f} points "
                  f"({base['num_clips']} clips, {base['seeds']} seeds)")
    for check in results.get("checks", []):
        print(f"{'PASS' if check['ok'] else 'FAIL'}  {check['what']}")
    t = results["train"]
    print(f"training: {t['seconds'] / 60:.1f} min wall clock ({t['max_steps']} steps x batch {t['batch_size']} of "
          f"{t['crop_seconds']} s crops, rank {t['lora_rank']}, {t['threads']} threads; "
          f"{results['data']['train']} train / {results['data']['valid']} valid clips; "
          f"adapter {t['adapter_bytes'] / 1e6:.2f} MB)")


def checks(measures: dict[str, Any], adh: dict[str, Any] | None, train_s: float) -> list[dict[str, Any]]:
    """The issue's criteria: adapted clips nearer the new sound than the base's in both spaces and by FAD, the
    standard prompts' adherence down by at most 5 points under each classifier, training within 10 minutes."""
    out = []
    for space, title in (("clap", "CLAP"), ("hand", "hand-crafted")):
        b, a = measures[space]["base"]["share_nearer_new"], measures[space]["adapted"]["share_nearer_new"]
        out.append({"what": f"{title}: more adapted clips nearer the new sound than any corpus class "
                            f"({b:.0%} -> {a:.0%})", "ok": a > b})
    b, a = measures["fad_clap"]["base"], measures["fad_clap"]["adapted"]
    out.append({"what": f"FAD to the held-back clips falls ({b:.2f} -> {a:.2f})", "ok": a < b})
    for scorer, before in (adh or {}).get("base", {}).get("adherence", {}).items():
        after = adh["adapted"]["adherence"][scorer]
        out.append({"what": f"adherence ({scorer}) drops <= 5 points ({before:.1%} -> {after:.1%})",
                    "ok": before - after <= 0.05})
    out.append({"what": f"training <= 10 min wall clock ({train_s / 60:.1f} min)", "ok": train_s <= 600})
    return out


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "runs" / "finetune"), help="working folder (resumes what is there)")
    p.add_argument("--model", default="models/default-ldm", help="base model folder")
    p.add_argument("--corpus", default=str(ROOT / "data" / "corpus"), help="the shipped corpus (test split: classes)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--adapter-scale", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: 10 train / 8 held-back clips, 2 training "
                   "steps, 2 prompts x 2 seeds, adherence on 3 prompts x 1 seed")
    p.add_argument("--skip-adherence", action="store_true", help="leave out the adherence runs (the slowest part)")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    render = render_sets(out, sizes)
    data = import_data(out, args.threads)
    trained = train(out, args.model, args.lora_rank, sizes, args.threads)
    adapter = out / "run" / "export"
    gen_base = generate(out, "base", args.model, None, args.adapter_scale, sizes, args.threads)
    gen_adapted = generate(out, "adapted", args.model, adapter, args.adapter_scale, sizes, args.threads)

    print("5. measure")
    spaces: list[Spaces] = []

    def make() -> Spaces:
        if not spaces:
            spaces.append(Spaces(args.threads))
        return spaces[0]

    corpus_files, corpus_classes, corpus_domains = corpus_rows(Path(args.corpus))
    corpus = cached_features(out, "corpus-test", corpus_files, make)
    heldout_files = sorted((out / "heldout").glob("*.wav"))
    heldout = cached_features(out, "heldout", heldout_files, make)
    train_files = sorted((out / "data" / "train").glob("*.wav"))
    music = [i for i, d in enumerate(corpus_domains) if d == "music"]
    starts = np.concatenate([[0], np.cumsum(corpus["counts"])])
    sets = {
        "train clips": cached_features(out, "train", train_files, make),
        "corpus music": {"clap": corpus["clap"][music], "hand": corpus["hand"][music],
                         "windows": np.concatenate([corpus["windows"][starts[i]:starts[i + 1]] for i in music])},
        "base": cached_features(out, "gen-base", generated_files(gen_base), make),
        "adapted": cached_features(out, "gen-adapted", generated_files(gen_adapted), make),
    }
    measures = measure(sets, heldout, corpus, corpus_classes)

    adh = None
    if not args.skip_adherence:
        adh = {"base": adherence(out, "base", args.model, None, args.adapter_scale, sizes, args.threads),
               "adapted": adherence(out, "adapted", args.model, adapter, args.adapter_scale, sizes, args.threads)}

    # 6. spectrograms: a held-back clip, then the base and adapted clip of one prompt (its first seed), per row
    n_rows = min(4, sizes.prompts, len(heldout_files))
    base_files, adapted_files = generated_files(gen_base), generated_files(gen_adapted)
    rows = []
    for i in range(n_rows):
        j = i * sizes.seeds
        rows.append((PROMPTS[i][:30], [(f"held-back {heldout_files[i].stem}", load_clip(heldout_files[i])),
                                       (f"base, seed {j}", load_clip(base_files[j])),
                                       (f"adapted, seed {j}", load_clip(adapted_files[j]))]))
    grid = draw_grid(rows, out / "spectrograms.png")

    from soundsmith.core.files import write_json

    results = {"model": args.model, "word": WORD, "gm_program": PROGRAM, "sizes": dataclasses.asdict(sizes),
               "prompts": list(PROMPTS[: sizes.prompts]), "train_captions": list(CAPTIONS), "data": data,
               "render_seconds": render.get("seconds"), "train": trained, "measures": measures,
               "adherence": adh, "adapter": str(adapter), "adapter_scale": args.adapter_scale,
               "spectrograms": str(grid), "measured_at": {"sample_rate": SR, "lufs": LUFS},
               "fad_embedder": "clap (soundsmith eval default: models/clap, 2.48 s windows), Ledoit-Wolf shrinkage",
               "checks": checks(measures, adh, trained["seconds"])}
    write_json(out / "results.json", results)
    print_table(results)
    if args.quick:
        print("(--quick: a smoke run of every step; too few steps and clips for the checks to mean anything)")
    print(f"\nspectrograms: {grid}\nresults: {out / 'results.json'} ({time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
