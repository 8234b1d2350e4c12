"""Beat-synchronous mixup (MusicLDM, Chen et al. 2023, arXiv 2308.01546) for training the latent-diffusion UNet.

Two music clips whose tempi are close are put on one beat grid and mixed with lambda ~ Beta(5, 5):

    clip b --time-stretch to a's tempo--> --shift so its downbeats land on a's--> b'
    audio mixup:  wave  = lambda * a + (1 - lambda) * b'         (then encoded by the VAE like any clip)
    latent mixup: z     = lambda * z_a + (1 - lambda) * z_b'      (b' built on the cached latents, 25 Hz)

so the model sees new, musically plausible material between its training clips, which MusicLDM found
to make generations less like any one training clip. Where b' does not reach the end of a's window it
continues by whole bars (the stretched clip repeated bar-wise), so beats stay on the grid.

Beats come from the corpus labels (`tempo_bpm`, `beats`, `downbeats`, `time_signature`, written by
`soundsmith.train.music`), or, for user data without them, from librosa's beat tracker (`track_beats`).
Pairs are drawn among clips with the same beats per bar and tempi within `max_tempo_ratio`
(`tempo_partners`). In `train_unet`:

- `mixup: "latent"`: `make_batch` mixes cached latent windows on the fly. The condition is the
  L2-normalised lambda-weighted sum of the two clips' CLAP embeddings (audio or caption, whichever the
  example drew): the cache holds no mixture audio to embed, a CLAP text forward inside `make_batch`
  would make every batch wait for the conditioner, and the mix is what CLAP says of a mixture anyway:
  over 40 corpus pairs (benchmarks/mixup_condition.py) the CLAP audio embedding of the real mixture
  has a median cosine of 0.95 with the mixed embeddings (0.86 / 0.84 with either clip alone), and
  the mixed caption embeddings match it slightly better than the combined caption's own embedding
  (0.75 vs 0.72). The caption given to cross-attention is the combined caption.
- `mixup: "audio"`: `pairs_per_clip` mixtures per music clip are rendered, VAE-encoded and cached once
  beside the latent cache (`<split>-mixup.*`), with the CLAP audio embedding of the mixture and the CLAP
  text embedding of the combined caption, exactly like a corpus clip; `make_batch` swaps them in.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .latent_cache import build_cache, fingerprint_data

log = logging.getLogger(__name__)

MIXUP_MODES = ("none", "latent", "audio")
DEFAULT_ALPHA = 5.0  # lambda ~ Beta(5, 5) (MusicLDM)
BEATS_FORMAT = "soundsmith-beat-index/1"


# ------------------------------------------------------------------------------------------ beat grids


@dataclass(frozen=True)
class BeatGrid:
    """The beat of one clip: tempo, beat and downbeat times in seconds from the clip's start."""

    tempo_bpm: float
    beats: tuple[float, ...]
    downbeats: tuple[float, ...]
    beats_per_bar: int = 4

    @property
    def bar_s(self) -> float:
        """Seconds per bar."""
        return self.beats_per_bar * 60.0 / self.tempo_bpm

    def stretched(self, rate: float) -> BeatGrid:
        """The grid of the clip time-stretched by `rate` (> 1: faster and shorter)."""
        return BeatGrid(self.tempo_bpm * rate, tuple(t / rate for t in self.beats),
                        tuple(t / rate for t in self.downbeats), self.beats_per_bar)

    def to_dict(self) -> dict[str, Any]:
        return {"tempo_bpm": self.tempo_bpm, "beats": list(self.beats), "downbeats": list(self.downbeats),
                "beats_per_bar": self.beats_per_bar}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BeatGrid:
        return cls(float(d["tempo_bpm"]), tuple(d["beats"]), tuple(d["downbeats"]), int(d["beats_per_bar"]))


def beats_from_labels(labels: Mapping[str, Any] | None) -> BeatGrid | None:
    """The grid in our corpus's music labels (tempo_bpm, beats, downbeats, time_signature); None if absent."""
    if not labels:
        return None
    tempo, downbeats = labels.get("tempo_bpm"), labels.get("downbeats")
    if not tempo or not downbeats:
        return None
    meter = str(labels.get("time_signature") or "4/4").split("/")[0]
    beats_per_bar = int(meter) if meter.isdigit() and int(meter) > 0 else 4
    return BeatGrid(float(tempo), tuple(float(t) for t in labels.get("beats") or downbeats),
                    tuple(float(t) for t in downbeats), beats_per_bar)


def track_beats(wave: Any, sample_rate: int, *, beats_per_bar: int = 4, max_tempo_cv: float = 0.08
                ) -> BeatGrid | None:
    """Beats of a clip without labels, from librosa's dynamic-programming beat tracker (Ellis 2007).

    librosa has no downbeat tracker, so the downbeat is the phase (one of `beats_per_bar`) whose beats
    are followed by the most energy below 200 Hz: the kick drum and the bass usually land on beat 1 in
    the music this mixup is for (a heuristic; labelled downbeats are used wherever they exist). A clip without a steady beat (fewer than 2 bars of beats, or
    inter-beat intervals whose coefficient of variation exceeds `max_tempo_cv`) gives None: speech,
    most sound effects and rubato music are not mixed.

    Args:
        wave: `[C, T]` or `[T]` samples (numpy or torch), mixed down to mono.
        sample_rate: Hz.
        beats_per_bar: the meter assumed for the downbeat (default 4).
        max_tempo_cv: steadiness needed, std / mean of the inter-beat intervals (default 0.08).
    """
    try:
        import librosa
    except ImportError:  # a test extra, not a core dependency
        raise ImportError("beat tracking needs librosa: pip install 'librosa>=0.10'") from None

    y = wave.detach().cpu().numpy() if isinstance(wave, Tensor) else np.asarray(wave)
    y = y.reshape(-1, y.shape[-1]).mean(0).astype(np.float32)  # [T]
    hop = 256
    onset = librosa.onset.onset_strength(y=y, sr=sample_rate, hop_length=hop)
    _, frames = librosa.beat.beat_track(onset_envelope=onset, sr=sample_rate, hop_length=hop)
    beats = librosa.frames_to_time(frames, sr=sample_rate, hop_length=hop)
    if len(beats) < 2 * beats_per_bar:
        return None
    intervals = np.diff(beats)
    if intervals.std() / intervals.mean() > max_tempo_cv:
        return None
    bass = librosa.feature.melspectrogram(y=y, sr=sample_rate, hop_length=hop, n_mels=16, fmax=200.0).sum(0)  # [S]
    after = max(1, round(0.1 * sample_rate / hop))  # the 100 ms after each beat
    strength = np.array([bass[f:f + after].mean() for f in np.minimum(frames, len(bass) - 1)])  # [n_beats]
    phase = int(np.argmax([strength[p::beats_per_bar].mean() for p in range(beats_per_bar)]))
    return BeatGrid(60.0 / float(np.median(intervals)), tuple(float(t) for t in beats),
                    tuple(float(t) for t in beats[phase::beats_per_bar]), beats_per_bar)


def can_mix(grid: BeatGrid | None, duration_s: float) -> bool:
    """A grid can be mixed when it has a downbeat and at least one whole bar fits in the clip."""
    return grid is not None and bool(grid.downbeats) and 0.0 < grid.bar_s <= duration_s


def tempo_partners(grids: Sequence[BeatGrid | None], durations_s: Sequence[float], *,
                   max_tempo_ratio: float = 1.05) -> list[list[int]]:
    """For each clip, the other clips it can be mixed with: same beats per bar, tempi within the ratio.

    MusicLDM groups tracks by tempo so that time-stretching stays small; a ratio of 1.05 stretches by
    at most 5 %, well inside what a phase-vocoder stretcher does cleanly.
    """
    if not max_tempo_ratio >= 1.0:
        raise ValueError(f"max_tempo_ratio must be >= 1, got {max_tempo_ratio}")
    usable = [i for i, g in enumerate(grids) if can_mix(g, durations_s[i])]
    by_meter: dict[int, list[tuple[float, int]]] = {}
    for i in usable:
        by_meter.setdefault(grids[i].beats_per_bar, []).append((grids[i].tempo_bpm, i))
    partners: list[list[int]] = [[] for _ in grids]
    for group in by_meter.values():
        group.sort()
        tempi = [t for t, _ in group]
        for t, i in group:
            lo = bisect.bisect_left(tempi, t / max_tempo_ratio - 1e-9)
            hi = bisect.bisect_right(tempi, t * max_tempo_ratio + 1e-9)
            partners[i] = sorted(j for _, j in group[lo:hi] if j != i)
    return partners


# ------------------------------------------------------------------------------------------ alignment


def aligned_positions(grid_a: BeatGrid, grid_b: BeatGrid, *, rate_hz: float, start: int, length: int,
                      source_length: int) -> np.ndarray:
    """Where to read clip b so that its downbeats land on clip a's: one index into b per output frame.

    Both grids are on the same tempo already (b stretched to a's). Output frame k (k = start ...
    start + length - 1, in a's frames at `rate_hz`) reads b at k + delta, with delta a whole number of
    bars away from "b's first downbeat on a's first downbeat", chosen so the window covers as much of b
    as possible; frames that still fall outside b read it a whole number of bars earlier or later
    (b repeated bar-wise). Returns int64 `[length]`, each in [0, source_length).
    """
    bar = grid_b.bar_s * rate_hz  # frames per bar (a's and b's agree after stretching)
    period = math.floor(source_length / bar) * bar  # whole bars of b, the repeat period
    if period <= 0:
        raise ValueError(f"clip b ({source_length} frames) is shorter than one bar ({bar:.1f} frames)")
    base = (grid_b.downbeats[0] - grid_a.downbeats[0]) * rate_hz
    # of the shifts by whole bars, the one that leaves the fewest frames outside b (then the smallest)
    lo_j = math.floor((-start - base - length) / bar) - 1
    hi_j = math.ceil((source_length - start - base) / bar) + 1

    def outside(delta: float) -> float:
        return max(0.0, -(start + delta)) + max(0.0, start + delta + length - source_length)

    best = min((base + j * bar for j in range(lo_j, hi_j + 1)), key=lambda d: (outside(d), abs(d)))
    pos = np.arange(start, start + length, dtype=np.float64) + best  # [length]
    below, above = pos < 0, pos > source_length - 1
    pos[below] += period * np.ceil(-pos[below] / period)
    pos[above] -= period * np.ceil((pos[above] - (source_length - 1)) / period)
    return np.clip(np.rint(pos), 0, source_length - 1).astype(np.int64)


def combine_captions(caption_a: str, caption_b: str) -> str:
    """The caption of a mixture: both captions joined ("a, mixed with b")."""
    return f"{caption_a.rstrip(' .')}, mixed with {caption_b.strip()}"


def sample_lambda(g: torch.Generator, alpha: float = DEFAULT_ALPHA) -> float:
    """lambda ~ Beta(alpha, alpha), drawn from (a seed taken from) `g` so batches stay reproducible.

    torch's Beta sampler takes no generator, so a seed from `g` drives numpy's.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def time_stretch(wave: np.ndarray, sample_rate: int, rate: float) -> np.ndarray:
    """`[C, T]` -> `[C, ~T / rate]` at the same pitch (Rubber Band through pedalboard, already a dependency)."""
    import pedalboard

    if abs(rate - 1.0) < 1e-6:
        return wave
    out = pedalboard.time_stretch(np.ascontiguousarray(wave, dtype=np.float32), float(sample_rate),
                                  stretch_factor=float(rate))
    return np.asarray(out, dtype=np.float32).reshape(wave.shape[0], -1)


@dataclass
class AudioMix:
    """An audio mixture: wave `[C, T_a]` on clip a's timeline and grid, lambda, b's stretch rate."""

    wave: np.ndarray
    lam: float
    rate: float
    grid: BeatGrid


def audio_mixup(wave_a: np.ndarray, grid_a: BeatGrid, wave_b: np.ndarray, grid_b: BeatGrid, sample_rate: int,
                lam: float) -> AudioMix:
    """Beat-synchronous audio mixup: b time-stretched to a's tempo, its downbeats put on a's, then
    `lam * a + (1 - lam) * b'` over a's whole length (`[C, T]` numpy, same channels and rate)."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    rate = grid_a.tempo_bpm / grid_b.tempo_bpm
    stretched = time_stretch(wave_b, sample_rate, rate)  # [C, T_b']
    pos = aligned_positions(grid_a, grid_b.stretched(rate), rate_hz=sample_rate, start=0,
                            length=wave_a.shape[-1], source_length=stretched.shape[-1])
    mixed = lam * wave_a + (1.0 - lam) * stretched[:, pos]
    return AudioMix(mixed.astype(np.float32), lam, rate, grid_a)


def stretch_frames(x: Tensor, rate: float) -> Tensor:
    """Latent `[C, S, F]` resampled along time to round(S / rate) frames (linear interpolation).

    Latent frames are 40 ms mel-like time slices, so resampling them in time is the latent version
    of a time stretch for the small ratios pairs are drawn with (<= 5 %).
    """
    if abs(rate - 1.0) < 1e-6:
        return x
    c, s, f = x.shape
    out = F.interpolate(x.permute(0, 2, 1).reshape(1, c * f, s), size=max(1, round(s / rate)), mode="linear",
                        align_corners=False)  # [1, C*F, S']
    return out.reshape(c, f, -1).permute(0, 2, 1)  # [C, S', F]


# ------------------------------------------------------------------------------- training (UNet cache)


@dataclass
class MixupIndex:
    """What `train_unet.make_batch` needs to mix: each cached clip's beat grid and tempo partners, the
    latent frame rate, and for audio mixup the cache of rendered mixtures (`mix_rows[i]`: its rows)."""

    mode: str
    grids: list[BeatGrid | None]
    partners: list[list[int]]
    frame_rate: float
    mixes: Any = None  # a latent_cache.LatentCache of mixtures ("audio")
    mix_rows: list[list[int]] = field(default_factory=list)

    def mixable(self, i: int) -> bool:
        if self.mode == "audio":
            return bool(self.mix_rows and self.mix_rows[i])
        return bool(self.partners[i])

    def mix_example(self, cache: Any, z: Tensor, cond: Tensor, b: int, i: int, start: int, width: int, *,
                    use_audio: bool, dropped: bool, sample_posterior: bool, alpha: float, g: torch.Generator
                    ) -> str | None:
        """Replace example b (clip i, frames start:start+width in z[b]) by a mixture; return its caption
        (None when the condition is the audio embedding or dropped), writing z[b] and cond[b] in place."""
        if self.mode == "audio":  # a rendered mixture on clip i's timeline: read it like a clip
            rows = self.mix_rows[i]
            m = rows[int(torch.randint(0, len(rows), (1,), generator=g))]
            mixes = self.mixes
            lo = int(mixes.offsets[m]) + start
            width = min(width, mixes.frames(m) - start)
            mean, std = mixes.mean[:, lo:lo + width].float(), mixes.std[:, lo:lo + width].float()
            eps = torch.randn(mean.shape, generator=g) if sample_posterior else 0.0
            z[b] = 0.0
            z[b, :, :width] = mean + std * eps
            if dropped:
                cond[b] = 0.0
                return None
            if use_audio:
                cond[b] = mixes.audio_emb[m]
                return None
            row = mixes.caption_rows(m)[0]
            cond[b] = mixes.text_emb[row]
            return mixes.captions[row]

        # latent mixup: partner j stretched to clip i's tempo and put on its downbeats
        partners = self.partners[i]
        j = partners[int(torch.randint(0, len(partners), (1,), generator=g))]
        lam = sample_lambda(g, alpha)
        rate = self.grids[i].tempo_bpm / self.grids[j].tempo_bpm
        lo_j, n_j = int(cache.offsets[j]), cache.frames(j)
        mean = stretch_frames(cache.mean[:, lo_j:lo_j + n_j].float(), rate)  # [C, S_j', F]
        std = stretch_frames(cache.std[:, lo_j:lo_j + n_j].float(), rate)
        pos = torch.from_numpy(aligned_positions(self.grids[i], self.grids[j].stretched(rate), rate_hz=self.frame_rate,
                                                 start=start, length=width, source_length=mean.shape[1]))
        eps = torch.randn((mean.shape[0], width, mean.shape[2]), generator=g) if sample_posterior else 0.0
        z_j = mean[:, pos] + std[:, pos] * eps  # [C, width, F]
        z[b, :, :width] = lam * z[b, :, :width] + (1.0 - lam) * z_j
        if dropped:
            return None
        if use_audio:
            own, other = cache.audio_emb[i], cache.audio_emb[j]
            caption = None
        else:
            rows_i, rows_j = cache.caption_rows(i), cache.caption_rows(j)
            row_i = rows_i[int(torch.randint(0, len(rows_i), (1,), generator=g))]
            row_j = rows_j[int(torch.randint(0, len(rows_j), (1,), generator=g))]
            own, other = cache.text_emb[row_i], cache.text_emb[row_j]
            caption = combine_captions(cache.captions[row_i], cache.captions[row_j])
        cond[b] = F.normalize(lam * own.float() + (1.0 - lam) * other.float(), dim=-1)
        return caption


def beat_grids(data: Path, split: str, folder: Path, *, sample_rate: int, track: bool = True
               ) -> tuple[list[BeatGrid | None], list[float]]:
    """Beat grid and duration of every clip of `split`, in the latent cache's order.

    From the labels where they carry beats; else, with `track`, from `track_beats` on the audio of
    clips whose domain is music or unknown. Cached as `folder/<split>-beats.json` (tracking is slow),
    rebuilt when the data's metadata changes.
    """
    from soundsmith.codecs.audio import audio_info, read_audio
    from soundsmith.core.files import write_json

    from .datasets import AudioCaptionDataset

    key = {"format": BEATS_FORMAT, "split": split, "data": fingerprint_data(Path(data)), "track": track}
    path = folder / f"{split}-beats.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return ([None if g is None else BeatGrid.from_dict(g) for g in saved["grids"]],
                    [float(d) for d in saved["durations"]])
    records = AudioCaptionDataset(data, sample_rate=sample_rate, split=split).records
    grids: list[BeatGrid | None] = []
    durations: list[float] = []
    tracked = 0
    for rec in records:
        info = audio_info(rec.path)
        durations.append(info.frames / info.samplerate)
        grid = beats_from_labels(rec.labels)
        if grid is None and track and rec.domain in (None, "music"):
            wave, sr = read_audio(rec.path, channels=1)
            grid = track_beats(wave, sr)
            tracked += 1
        grids.append(grid)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, {"key": key, "grids": [None if g is None else g.to_dict() for g in grids],
                      "durations": durations})
    log.info("beat index %s: %d of %d clips have a beat grid (%d tracked with librosa)", path,
             sum(g is not None for g in grids), len(grids), tracked)
    return grids, durations


class MixtureDataset(torch.utils.data.Dataset):
    """Rendered audio mixtures of a split (what `build_cache` encodes for `mixup: "audio"`).

    Item n mixes clip `pairs[n][0]` (the timeline) with `pairs[n][1]` at `lams[n]`; its caption is the
    combined caption and it has no labels (so the cache keeps just that caption).
    """

    def __init__(self, base: Any, grids: Sequence[BeatGrid | None], pairs: Sequence[tuple[int, int]],
                 lams: Sequence[float]):
        self.base, self.grids, self.pairs, self.lams = base, list(grids), list(pairs), list(lams)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, n: int) -> dict[str, Any]:
        i, j = self.pairs[n]
        a, b = self.base[i], self.base[j]
        mix = audio_mixup(a["wave"].numpy(), self.grids[i], b["wave"].numpy(), self.grids[j],
                          self.base.sample_rate, self.lams[n])
        return {"wave": torch.from_numpy(mix.wave), "caption": combine_captions(a["caption"], b["caption"]),
                "labels": {}, "path": f"mix:{a['path']}+{b['path']}", "index": n, "length": mix.wave.shape[-1]}


def prepare_mixup(cfg: Any, codec: Any, conditioner: Any, data: Path, split: str, folder: Path, cache: Any
                  ) -> MixupIndex:
    """The `MixupIndex` of a split for `cfg.mixup` ("latent" or "audio"), building what it needs once:
    the beat index, and for "audio" the rendered, encoded mixtures (`folder/<split>-mixup.*`)."""
    from .datasets import AudioCaptionDataset

    grids, durations = beat_grids(data, split, folder, sample_rate=codec.sample_rate)
    if len(grids) != len(cache):
        raise ValueError(f"beat index of {split} has {len(grids)} clips, the latent cache {len(cache)}; "
                         f"delete {folder} to rebuild both")
    partners = tempo_partners(grids, durations, max_tempo_ratio=cfg.mixup_max_tempo_ratio)
    index = MixupIndex(cfg.mixup, grids, partners, codec.frame_rate)
    mixable = sum(bool(p) for p in partners)
    if not mixable:
        log.warning("mixup %r: no clip of %s has a tempo partner (beat grids: %d); training without mixup",
                    cfg.mixup, split, sum(g is not None for g in grids))
    if cfg.mixup != "audio" or not mixable:
        return index
    rng = np.random.default_rng([cfg.seed, 23])
    pairs, lams = [], []
    for i, ps in enumerate(partners):
        for _ in range(cfg.mixup_pairs_per_clip if ps else 0):
            pairs.append((i, int(ps[rng.integers(len(ps))])))
            lams.append(float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha)))
    base = AudioCaptionDataset(data, sample_rate=codec.sample_rate, crop_seconds=None, random_crop=False, split=split)
    mixes = build_cache(codec, conditioner, data, split, folder, captions_per_clip=1, seed=cfg.seed,
                        dataset=MixtureDataset(base, grids, pairs, lams), name=f"{split}-mixup",
                        extra_key={"pairs": pairs, "lams": lams, "stretch": "pedalboard-rubberband"})
    rows: list[list[int]] = [[] for _ in grids]
    for n, (i, _) in enumerate(pairs):
        rows[i].append(n)
    index.mixes, index.mix_rows = mixes, rows
    log.info("audio mixup: %d mixtures of %d clips cached", len(pairs), mixable)
    return index
