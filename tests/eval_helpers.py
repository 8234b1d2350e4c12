"""Shared by the eval harness tests: a tiny labelled corpus whose classes are told apart by simple signals,
and a tiny deterministic embedder (log band energies of 0.1 s windows), a test double for eval/embedders.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from soundsmith.codecs.audio import resample, write_audio

SR = 16_000
SECONDS = 3.2  # long enough for the tempo profile's slowest beat (40 BPM: two 1.5 s periods)
# (domain, label) -> how its clips sound
CLASSES = [("sfx", "siren"), ("sfx", "dog barking"), ("music", "piano"), ("music", "violin"),
           ("speech", "de"), ("speech", "fr")]
PER_SPLIT = {"train": 4, "valid": 2, "test": 2}


def clip(domain: str, label: str, seed: int, seconds: float = SECONDS, bpm: float = 140.0) -> np.ndarray:
    """`[1, T]` float32: sfx = steady tones, music = tone pulses at `bpm`, speech = shaped noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    if domain == "sfx":
        f0 = 1800.0 if label == "siren" else 300.0
        x = 0.4 * np.sin(2 * np.pi * f0 * (1 + 0.05 * np.sin(2 * np.pi * 2 * t)) * t)
    elif domain == "music":
        f0 = 440.0 if label == "piano" else 1100.0
        phase = (t * bpm / 60.0) % 1.0
        x = 0.5 * np.sin(2 * np.pi * f0 * t) * np.exp(-12 * phase)
    else:
        noise = rng.standard_normal(t.size)
        x = np.convolve(noise, np.ones(16) / 16, "same") if label == "de" else np.diff(noise, prepend=0.0) / 2
        x = 0.3 * x / np.abs(x).max()
    x = x + 0.003 * rng.standard_normal(t.size)
    return x[None].astype(np.float32)


def labels_for(domain: str, label: str, bpm: float) -> dict:
    if domain == "sfx":
        return {"domain": "sfx", "classes": [label], "intensity": "moderate", "pitch": "medium", "distance": "near"}
    if domain == "music":
        return {"domain": "music", "instruments": [label], "tempo_bpm": bpm, "mode": "major", "style": "pop"}
    return {"domain": "speech", "language": label, "language_name": label, "voice": "female"}


def write_corpus(root: Path) -> Path:
    """A corpus folder (metadata.jsonl + split/NNNN.wav) with PER_SPLIT clips per class and split."""
    rows, n = [], 0
    for split, count in PER_SPLIT.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for domain, label in CLASSES:
            for j in range(count):
                bpm = 140.0 if j % 2 == 0 else 70.0
                name = f"{split}/{n:04d}.wav"
                write_audio(root / name, clip(domain, label, n, bpm=bpm), SR)
                rows.append({"file_name": name, "caption": f"{label} ({domain})", "domain": domain,
                             "labels": labels_for(domain, label, bpm), "duration": SECONDS, "sample_rate": SR,
                             "seed": 0, "split": split, "index": n})
                n += 1
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


class BandEmbedder:
    """Test double of an eval embedder: mono, 16 kHz, 0.1 s windows -> 8 log band energies `[S, 8]`; its
    `logits` are the same numbers (a "classifier" over 8 bands)."""

    name = "test-bands"
    sample_rate = SR
    dim = 8
    n_classes = 8
    window = 1600

    def __init__(self, offset: float = 0.0):
        self.offset = offset  # a different "model": shifts every embedding

    def embed(self, wave, sample_rate: int) -> np.ndarray:
        mono = resample(np.asarray(wave, dtype=np.float32).mean(0), sample_rate, SR)
        frames = mono[: mono.size // self.window * self.window].reshape(-1, self.window)  # [S, W]
        power = np.abs(np.fft.rfft(frames * np.hanning(self.window), axis=1)) ** 2  # [S, W/2 + 1]
        bands = np.array_split(power, self.dim, axis=1)
        return (np.stack([np.log(b.mean(1) + 1e-8) for b in bands], 1) + self.offset).astype(np.float32)

    def logits(self, wave, sample_rate: int) -> np.ndarray:
        return self.embed(wave, sample_rate)

    def embed_and_logits(self, wave, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        emb = self.embed(wave, sample_rate)
        return emb, emb

    def describe(self) -> dict:
        return {"name": self.name, "sample_rate": SR, "window_s": 0.1, "hop_s": 0.1, "dim": self.dim,
                "pooling": "log band energies", "offset": self.offset}

    def fingerprint(self) -> str:
        return f"bands-{self.offset}"
