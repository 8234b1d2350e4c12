"""Tempo conditioning: the tempo a prompt asks for reaches the generator as an input of its own.

The CLAP embedding alone carries tempo too faintly for a generator to follow it: on the corpus's music a
linear probe finds the tempo band in 59 % of the CLAP audio embeddings and 75 % of the caption embeddings,
and the embeddings of one caption with "slow" and with "fast" have a cosine of 0.96. So, as Mustango does
with beats predicted from the text, the tempo is read from the prompt and given to the UNet beside the CLAP
embedding; in training the clip's own tempo is given (dropped at random, so prompts that name no tempo
still work).

    reader = TempoReader.from_pretrained("models/default-ldm/tempo")
    conditioner = TempoConditioner(clap_conditioner, reader)   # embed_prompts -> [B, D + TEMPO_DIM]

- `tempo_features(bpms)`: a BPM (or None: no tempo asked) -> `[TEMPO_DIM]`: a flag, then Gaussian bumps
  over log2 BPM, so near tempi get near features and a tempo between two seen ones is in reach.
- `parse_bpm(text)`: an explicit figure ("96 bpm", "at 140 beats per minute").
- `TempoReader`: explicit figures first; else a tempo word's band, turned into that band's median BPM in the
  training corpus, when a logistic model on the CLAP text embedding (fitted by `soundsmith train
  tempo-reader`) says the prompt asks for music.
- `TempoConditioner`: a CLAP conditioner whose embeddings carry the tempo features after the CLAP part.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

TEMPO_DIM = 16  # 1 flag + 15 bumps
BPM_RANGE = (40.0, 240.0)  # bump centres span this (log-spaced); tempi outside are clamped to it
BAND_EDGES = (85.0, 120.0)  # slow < 85 <= moderate < 120 <= fast (the label classifier's bands)

_BPM = re.compile(r"(?<![\d.])(\d{2,3}(?:\.\d+)?)\s*(?:-\s*)?(?:bpm\b|b\.p\.m\.?|beats?\s+(?:per|a|an|each)\s+minute)",
                  re.IGNORECASE)


def tempo_band(bpm: float) -> str:
    """"slow", "moderate" or "fast" for a BPM (the corpus's and the label classifier's bands)."""
    return "slow" if bpm < BAND_EDGES[0] else "moderate" if bpm < BAND_EDGES[1] else "fast"


def tempo_features(bpms: Sequence[float | None]) -> Tensor:
    """One row `[TEMPO_DIM]` per BPM (None: no tempo -> zeros) -> `[B, TEMPO_DIM]` float32."""
    lo, hi = math.log2(BPM_RANGE[0]), math.log2(BPM_RANGE[1])
    n = TEMPO_DIM - 1
    centres = torch.linspace(lo, hi, n)
    width = (hi - lo) / (n - 1)
    out = torch.zeros(len(bpms), TEMPO_DIM)
    for i, bpm in enumerate(bpms):
        if bpm is None:
            continue
        x = min(max(math.log2(float(bpm)), lo), hi)
        out[i, 0] = 1.0
        out[i, 1:] = torch.exp(-0.5 * ((centres - x) / width) ** 2)
    return out


def parse_bpm(text: str) -> float | None:
    """The tempo a text states as a figure ("96 bpm", "140 beats per minute"), in [20, 400]; else None."""
    for match in _BPM.finditer(text or ""):
        value = float(match.group(1))
        if 20.0 <= value <= 400.0:
            return value
    return None


# Tempo words by band, matched as whole words (case-insensitive). The corpus's caption words are among them; the
# rest are the everyday and Italian words for the same bands, so a prompt worded unlike any caption still reads.
TEMPO_WORDS: dict[str, tuple[str, ...]] = {
    "slow": ("slow", "slowly", "slow-paced", "slower", "unhurried", "leisurely", "relaxed", "laid-back", "laid back",
             "languid", "languorous", "sluggish", "lazy", "plodding", "downtempo", "down-tempo", "half-time",
             "largo", "lento", "adagio", "larghetto", "glacial"),
    "moderate": ("moderate", "moderate-paced", "medium", "medium-paced", "mid-tempo", "midtempo", "mid tempo",
                 "steady", "andante", "andantino", "moderato", "walking pace", "walking tempo"),
    "fast": ("fast", "fast-paced", "faster", "quick", "quickly", "brisk", "briskly", "lively", "up-tempo", "uptempo",
             "up tempo", "rapid", "rapidly", "speedy", "frantic", "frenetic", "racing", "hurried", "breakneck",
             "high-tempo", "allegro", "presto", "prestissimo", "vivace", "vivo", "double-time"),
}
_WORDS = re.compile(r"(?<![\w-])(" + "|".join(sorted((re.escape(w) for ws in TEMPO_WORDS.values() for w in ws),
                                                      key=len, reverse=True)) + r")(?![\w-])", re.IGNORECASE)
_BAND_OF = {w: band for band, ws in TEMPO_WORDS.items() for w in ws}


def word_band(text: str) -> str | None:
    """The band of the first tempo word of `text` ("slow", "moderate", "fast"), or None."""
    match = _WORDS.search(text or "")
    return None if match is None else _BAND_OF[match.group(1).lower()]


@dataclass
class TempoReaderConfig:
    dim: int = 512  # the CLAP text embedding it reads
    band_bpm: dict[str, float] = field(default_factory=lambda: {"slow": 69.0, "moderate": 107.0, "fast": 136.0})
    threshold: float = 0.5  # P(music) a prompt needs before a tempo word counts (a figure always counts)
    fit: dict[str, Any] = field(default_factory=dict)  # what the fit measured (written by the trainer)


class TempoReader:
    """Prompt -> requested BPM or None: a figure ("96 bpm") as stated; else a tempo word (`TEMPO_WORDS`) as its
    band's median tempo in the training corpus (`band_bpm`), when the prompt asks for music: P(music) from a
    logistic model on the CLAP text embedding (`weight [D]`, `bias []`), so "speaking quickly" or "steady
    footsteps" give no tempo. A learned band classifier was tried first and dropped: on the CLAP embedding it
    confused style with tempo ("uptempo dance track" read as slow, "lively ambient" as slow)."""

    def __init__(self, weight: Tensor, bias: Tensor, config: TempoReaderConfig | None = None):
        self.config = config or TempoReaderConfig(dim=weight.shape[-1])
        if tuple(weight.shape) != (self.config.dim,) or tuple(bias.shape) != ():
            raise ValueError(f"tempo reader: weight {tuple(weight.shape)} / bias {tuple(bias.shape)} do not match a "
                             f"{self.config.dim}-d embedding (weight [D], bias [])")
        self.weight, self.bias = weight.float(), bias.float()

    def music_probability(self, text_emb: Tensor) -> Tensor:
        """`[B, D]` CLAP text embeddings -> `[B]` P(the prompt asks for music)."""
        return torch.sigmoid(text_emb.float().cpu() @ self.weight + self.bias)

    def read(self, texts: Sequence[str], text_emb: Tensor) -> list[float | None]:
        """The BPM each text asks for (None: no tempo, or not a music prompt)."""
        music = self.music_probability(text_emb)
        out: list[float | None] = []
        for text, p in zip(texts, music.tolist()):
            stated = parse_bpm(text)
            band = word_band(text)
            if stated is not None:
                out.append(stated)
            elif band is not None and p >= self.config.threshold:
                out.append(float(self.config.band_bpm[band]))
            else:
                out.append(None)
        return out

    def save_pretrained(self, folder: str | Path) -> Path:
        from soundsmith.core.files import write_json
        from soundsmith.core.weights import save_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()},
                         folder / "model.safetensors")
        write_json(folder / "config.json", {"kind": "soundsmith-tempo-reader", **asdict(self.config)})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> TempoReader:
        from safetensors.torch import load_file
        from soundsmith.core.files import read_json_object

        folder = Path(folder)
        config_path, weights = folder / "config.json", folder / "model.safetensors"
        if not config_path.is_file() or not weights.is_file():
            raise FileNotFoundError(f"{folder} is not a tempo reader folder (needs config.json and model.safetensors)")
        raw = read_json_object(config_path)
        if raw.pop("kind", None) != "soundsmith-tempo-reader":
            raise ValueError(f"{config_path}: not a tempo reader config (kind must be 'soundsmith-tempo-reader')")
        try:
            config = TempoReaderConfig(**raw)
        except TypeError as err:
            raise ValueError(f"{config_path}: {err}") from None
        tensors = load_file(str(weights))
        return cls(tensors["weight"], tensors["bias"], config)


class TempoConditioner:
    """A CLAP conditioner whose prompt embeddings end in the tempo features of what each prompt asks for:
    `[B, D + TEMPO_DIM]`. The unconditional embedding has no tempo (zeros), so guidance steers towards the
    tempo too. Everything else (`score`, `model`, `fingerprint`: the CLAP's, which a UNet records as the CLAP it
    was trained with) is the wrapped conditioner's."""

    def __init__(self, inner: Any, reader: TempoReader, scale: float = 1.0):
        if reader.config.dim != inner.dim:
            raise ValueError(f"the tempo reader reads {reader.config.dim}-d embeddings but the CLAP gives {inner.dim}-d")
        self.inner, self.reader, self.scale = inner, reader, float(scale)

    def __getattr__(self, name: str) -> Any:  # only reached for what this class does not define
        return getattr(self.__dict__["inner"], name)

    @property
    def dim(self) -> int:
        return self.inner.dim + TEMPO_DIM

    def to(self, device: Any = None, dtype: Any = None) -> TempoConditioner:
        self.inner.to(device, dtype)
        return self

    def read_tempo(self, texts: Sequence[str | None], clap_emb: Tensor | None = None) -> list[float | None]:
        """The BPM each prompt asks for (None for None or no tempo)."""
        real = [t for t in texts if t is not None]
        if not real:
            return [None] * len(texts)
        emb = self.inner.embed_prompts(real) if clap_emb is None else clap_emb[[i for i, t in enumerate(texts)
                                                                                 if t is not None]]
        found = iter(self.reader.read(real, emb))
        return [None if t is None else next(found) for t in texts]

    def embed_prompts(self, texts: Sequence[str | None], tempo_scale: float | None = None) -> Tensor:
        """`[B, D + TEMPO_DIM]`: the CLAP embeddings, then the tempo features times `tempo_scale` (default
        `self.scale`). A UNet's class embedding is linear in them, so the scale strengthens the learned tempo
        direction the way a guidance scale strengthens the prompt, at no cost (0: the tempo is ignored)."""
        clap = self.inner.embed_prompts(texts)  # [B, D]
        tempo = tempo_features(self.read_tempo(texts, clap)).to(clap.device, clap.dtype)  # [B, TEMPO_DIM]
        return torch.cat([clap, tempo * (self.scale if tempo_scale is None else float(tempo_scale))], dim=-1)

    def null_embedding(self, n: int) -> Tensor:
        null = self.inner.null_embedding(n)
        return torch.cat([null, torch.zeros(n, TEMPO_DIM, device=null.device, dtype=null.dtype)], dim=-1)


def grow_unet_for_tempo(unet: Any) -> Any:
    """A copy of a diffusers UNet whose class-embedding projection also takes `TEMPO_DIM` tempo features; the new
    input columns start at zero, so the grown UNet computes exactly what `unet` did until it is trained."""
    from diffusers import UNet2DConditionModel

    cfg = unet.config
    if cfg.class_embed_type != "simple_projection":
        raise ValueError(f"tempo conditioning needs a UNet with class_embed_type 'simple_projection', got "
                         f"{cfg.class_embed_type!r}")
    grown = UNet2DConditionModel.from_config({**dict(cfg), "projection_class_embeddings_input_dim":
                                              cfg.projection_class_embeddings_input_dim + TEMPO_DIM})
    state = dict(unet.state_dict())
    weight = state["class_embedding.weight"]  # [T, D]
    state["class_embedding.weight"] = torch.cat([weight, weight.new_zeros(weight.shape[0], TEMPO_DIM)], dim=1)
    grown.load_state_dict(state)
    return grown.to(weight.device, weight.dtype)


# ------------------------------------------------------------------------------------------ beat grids

BEAT_HARMONICS = 4
BEAT_DIM = 1 + 2 * BEAT_HARMONICS  # 1 flag + (cos, sin) of 1..4 times the beat phase


def grid_beats(bpm: float, seconds: float) -> list[float]:
    """An even beat grid at `bpm` from time 0 to past `seconds` (the grid a generated clip is asked to follow)."""
    period = 60.0 / float(bpm)
    return [k * period for k in range(int(seconds / period) + 2)]


def beat_phase(beats: Sequence[float], times: Tensor) -> Tensor:
    """The beat phase in [0, 1) at each of `times` `[S]` (seconds): 0 on a beat, 0.5 halfway to the next. Before
    the first beat and after the last, the nearest inter-beat period continues the grid. Needs >= 2 beats."""
    b = torch.as_tensor(sorted(float(t) for t in beats), dtype=torch.float64)
    if b.numel() < 2:
        raise ValueError(f"a beat phase needs at least 2 beats, got {b.numel()}")
    t = times.to(torch.float64)
    k = (torch.searchsorted(b, t, right=True) - 1).clamp(0, b.numel() - 2)  # the beat interval of each time
    start, period = b[k], b[k + 1] - b[k]
    return torch.remainder((t - start) / period.clamp(min=1e-3), 1.0).float()


def beat_features(beats: Sequence[float] | None, frames: int, frame_rate: float) -> Tensor:
    """Per-frame beat features `[frames, BEAT_DIM]` for frames of `1 / frame_rate` s (frame i centred at
    (i + 0.5) / frame_rate): a flag, then cos and sin of 2 pi h times the beat phase for h = 1..BEAT_HARMONICS,
    so a linear map of them can peak sharply on the beat. No beats (None, or fewer than 2): zeros, "no tempo".

    Why per frame and not one tempo vector: a token LM given the tempo once (tempo_dim) learnt nothing from it
    (its valid loss was the same without it), because after a few beats the context already tells the tempo;
    a phase at every frame says where the next onset falls, which the context cannot."""
    out = torch.zeros(frames, BEAT_DIM)
    if beats is None or len(beats) < 2 or frames < 1:
        return out
    phase = beat_phase(beats, (torch.arange(frames, dtype=torch.float64) + 0.5) / frame_rate)  # [S]
    angles = 2 * math.pi * phase[:, None] * torch.arange(1, BEAT_HARMONICS + 1)  # [S, H]
    out[:, 0] = 1.0
    out[:, 1::2], out[:, 2::2] = torch.cos(angles), torch.sin(angles)
    return out
