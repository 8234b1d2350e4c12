"""Music clips for the synthetic corpus: pieces composed with pretty_midi, rendered by tinysoundfont.

A piece is a style (meter, tempo range, comping, bass and drum patterns), a key and mode, a
four-chord progression and one to four parts (instrument + role: chords, melody, bass, drums, or a
solo that plays chords and melody on one instrument). The score is a `pretty_midi.PrettyMIDI`; its
tempo and time signature give the beat and downbeat labels. The clip is a window that starts at a
random point of the piece (30% of clips start on its first downbeat), so beat 1 is not always at 0 s.

Sound: the General MIDI SoundFont that ships inside pretty_midi (TimGM6mb.sf2), drums on MIDI
channel 9 (GM channel 10). One `tinysoundfont.Synth` is loaded per process and sample rate, and reset
before each clip, so the same rng state gives the same bytes whatever was rendered before.

    wave, labels = render_music(np.random.default_rng(0), 5.0, 16_000)   # wave [T] float32
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np
from soundsmith.core.vocabulary import INSTRUMENTS, MODES

STYLES: tuple[str, ...] = ("waltz", "rock", "ballad", "march", "ambient", "arpeggio", "jazz", "bossa nova")
LOUDNESS: tuple[str, ...] = ("soft", "medium", "loud")
KEYS: tuple[str, ...] = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")  # pitch class 0..11

# General MIDI programs (0-based) per instrument; a piece picks one. Drums: bank-128 kit on channel 9.
PROGRAMS: dict[str, tuple[int, ...]] = {
    "piano": (0, 1), "organ": (16, 19), "acoustic guitar": (24, 25), "electric guitar": (26, 27, 29),
    "bass": (32, 33, 34), "violin": (40,), "cello": (42,), "strings": (48, 49), "trumpet": (56,),
    "brass": (61,), "saxophone": (65, 66), "flute": (73,), "synth lead": (80, 81), "synth pad": (88, 89),
    "drums": (0,),
}
# Where a style wants a particular sound of an instrument (overdriven rock guitar, no church organ in jazz).
STYLE_PROGRAMS: dict[tuple[str, str], tuple[int, ...]] = {
    ("rock", "electric guitar"): (29, 30), ("jazz", "electric guitar"): (26,), ("bossa nova", "acoustic guitar"): (24,),
    ("rock", "organ"): (16, 18), ("jazz", "organ"): (16, 17),
}
# Range (MIDI notes, inclusive) in which an instrument plays lines; chords sit near the low end.
REGISTERS: dict[str, tuple[int, int]] = {
    "piano": (57, 84), "organ": (55, 81), "acoustic guitar": (52, 76), "electric guitar": (52, 79),
    "bass": (31, 55), "violin": (62, 88), "cello": (43, 69), "strings": (55, 81), "trumpet": (58, 82),
    "brass": (52, 76), "saxophone": (53, 79), "flute": (67, 93), "synth lead": (60, 86), "synth pad": (55, 79),
}
HARMONY = ("piano", "organ", "acoustic guitar", "electric guitar", "strings", "synth pad", "brass")  # can comp
DRUM = {"kick": 36, "stick": 37, "snare": 38, "clap": 39, "low tom": 45, "closed hat": 42, "pedal hat": 44,
        "open hat": 46, "mid tom": 47, "crash": 49, "high tom": 50, "ride": 51, "tambourine": 54, "shaker": 70}
# Mix balance per role as MIDI channel volume (CC7), on top of the per-preset level calibration.
ROLE_VOLUME = {"melody": 118, "solo": 118, "chords": 100, "bass": 112, "drums": 108}

SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}  # natural minor
QUALITIES = {"": (0, 4, 7), "m": (0, 3, 7), "dim": (0, 3, 6), "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11),
             "m7": (0, 3, 7, 10), "m7b5": (0, 3, 6, 10)}
NUMERALS = ("I", "II", "III", "IV", "V", "VI", "VII")
# Roman numerals relative to the mode's scale: case gives major/minor triads, a suffix names other chords.
PROGRESSIONS = {
    "major": ("I V vi IV", "I IV V I", "I vi IV V", "vi IV I V", "I IV vi V", "I iii IV V", "I V IV V",
              "IV I V vi", "I ii IV V", "ii V I I"),
    "minor": ("i VI III VII", "i iv V i", "i VII VI V", "i iv VII III", "i VI iv V", "i v iv i",
              "i III VII iv", "iidim V i i"),
}
SEVENTH_PROGRESSIONS = {  # jazz and bossa nova
    "major": ("ii7 V7 Imaj7 Imaj7", "Imaj7 vi7 ii7 V7", "iii7 vi7 ii7 V7", "Imaj7 IVmaj7 iii7 vi7", "ii7 V7 Imaj7 vi7"),
    "minor": ("iim7b5 V7 i7 i7", "i7 iv7 V7 i7", "i7 iv7 VIImaj7 IIImaj7", "i7 VImaj7 iim7b5 V7"),
}


@dataclass(frozen=True)
class StyleSpec:
    meters: tuple[int, ...]      # beats per bar, quarter-note beats (2 -> 2/4, 3 -> 3/4, 4 -> 4/4)
    tempo: tuple[int, int]       # bpm range, inclusive
    harmony: tuple[str, ...]     # instruments that comp the chords
    melody: tuple[str, ...]      # instruments that carry the tune
    bass: tuple[str, ...]        # instruments that play the bass line
    drums: float                 # chance that an ensemble has a drum kit
    rhythm: tuple[float, ...]    # melody note lengths in beats to draw from (more copies = more likely)
    sevenths: bool = False       # harmony in seventh chords
    swing: bool = False          # off-beat eighths played late (2/3 of the beat)


STYLE_SPECS: dict[str, StyleSpec] = {
    "waltz": StyleSpec((3,), (84, 176), ("piano", "acoustic guitar", "strings", "organ"),
                       ("violin", "flute", "cello", "saxophone", "piano"), ("bass", "cello"), 0.4,
                       (1, 1, 2, 0.5, 0.5, 3)),
    "rock": StyleSpec((4,), (96, 152), ("electric guitar", "piano", "organ", "acoustic guitar"),
                      ("synth lead", "electric guitar", "saxophone", "organ"), ("bass",), 0.95,
                      (0.5, 0.5, 1, 1, 1.5, 2)),
    "ballad": StyleSpec((4, 4, 3), (58, 84), ("piano", "acoustic guitar", "strings", "synth pad"),
                        ("violin", "flute", "saxophone", "cello", "trumpet", "piano"), ("bass", "cello"), 0.5,
                        (1, 1, 2, 0.5, 1.5, 3)),
    "march": StyleSpec((2, 4), (100, 128), ("brass", "piano", "organ"), ("trumpet", "flute", "brass"),
                       ("bass",), 0.9, (0.5, 0.5, 1, 0.75, 0.25, 1)),
    "ambient": StyleSpec((4, 3), (56, 80), ("synth pad", "strings", "organ"),
                         ("flute", "synth lead", "piano", "violin", "cello"), ("bass", "cello"), 0.15,
                         (2, 3, 4, 1.5, 1)),
    "arpeggio": StyleSpec((4, 4, 3), (80, 132),
                          ("piano", "acoustic guitar", "electric guitar", "synth lead", "synth pad", "organ"),
                          ("flute", "violin", "synth lead", "trumpet", "strings"), ("bass", "cello"), 0.35,
                          (1, 1, 2, 0.5, 1.5)),
    "jazz": StyleSpec((4,), (100, 200), ("piano", "electric guitar", "organ", "brass"),
                      ("saxophone", "trumpet", "flute", "violin"), ("bass",), 0.9,
                      (0.5, 0.5, 0.5, 1, 1, 1.5), sevenths=True, swing=True),
    "bossa nova": StyleSpec((4,), (112, 144), ("acoustic guitar", "piano"),
                            ("flute", "saxophone", "trumpet", "synth lead", "brass"), ("bass",), 0.9,
                            (0.5, 1, 1, 1.5, 2), sevenths=True),
}
PIECE_START_P = 0.3   # chance that a clip starts on the piece's first downbeat
PREROLL_S = 0.25      # rendered before the window and dropped, so held notes do not all attack at 0 s
LEVEL_RMS = {"soft": (0.035, 0.05), "medium": (0.07, 0.1), "loud": (0.12, 0.16)}   # target clip RMS
VELOCITY = {"soft": (44, 58), "medium": (68, 86), "loud": (96, 114)}               # base MIDI velocity
MAX_DURATION_S = 600.0


@dataclass(frozen=True)
class Part:
    instrument: str
    role: str        # "chords" | "melody" | "bass" | "drums" | "solo" (chords + melody on one instrument)
    program: int


@dataclass(frozen=True)
class Piece:
    style: str
    beats_per_bar: int
    tempo_bpm: int
    tonic: int                   # pitch class, 0 = C
    mode: str
    progression: tuple[str, ...]
    parts: tuple[Part, ...]
    loudness: str
    velocity: float              # base MIDI velocity of an unaccented note

    @property
    def bar_s(self) -> float:
        return self.beats_per_bar * 60.0 / self.tempo_bpm


# ---------------------------------------------------------------------------------------------------
# Choosing a piece


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def choose_parts(rng: np.random.Generator, style: str) -> tuple[Part, ...]:
    """One to four (instrument, role) parts that suit the style; about one piece in four is a solo."""
    spec = STYLE_SPECS[style]
    programs = lambda name: STYLE_PROGRAMS.get((style, name), PROGRAMS[name])  # noqa: E731
    if rng.random() < 0.25:  # solo: any pitched instrument the style uses
        pool = sorted(set(spec.harmony + spec.melody + (("bass",) if style == "jazz" else ())))
        name = _pick(rng, pool)
        role = "solo" if name in HARMONY else ("bass" if name == "bass" else "melody")
        return (Part(name, role, _pick(rng, programs(name))),)
    size = int(rng.integers(2, 5))
    roles = ["chords"]
    optional = ["melody", "bass"] + (["drums"] if rng.random() < spec.drums else [])
    for i in rng.permutation(len(optional))[: size - 1]:
        roles.append(optional[int(i)])
    parts, used = [], set()
    for role in roles:
        if role == "drums":
            parts.append(Part("drums", "drums", 0))
            continue
        pool = {"chords": spec.harmony, "melody": spec.melody, "bass": spec.bass}[role]
        free = [name for name in pool if name not in used]
        if not free:
            continue
        name = _pick(rng, free)
        used.add(name)
        parts.append(Part(name, role, _pick(rng, programs(name))))
    return tuple(parts)


def choose_piece(rng: np.random.Generator, style: str | None = None) -> Piece:
    """Style, meter, tempo, key, mode, progression, parts and loudness of one piece."""
    style = style or _pick(rng, STYLES)
    if style not in STYLE_SPECS:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    spec = STYLE_SPECS[style]
    mode = _pick(rng, MODES)
    table = SEVENTH_PROGRESSIONS if spec.sevenths else PROGRESSIONS
    loudness = _pick(rng, LOUDNESS)
    if style == "ambient" and loudness == "loud":  # an ambient pad is never loud; keep the label honest
        loudness = "medium"
    return Piece(
        style=style,
        beats_per_bar=int(_pick(rng, spec.meters)),
        tempo_bpm=int(rng.integers(spec.tempo[0], spec.tempo[1] + 1)),
        tonic=int(rng.integers(12)),
        mode=mode,
        progression=tuple(_pick(rng, table[mode]).split()),
        parts=choose_parts(rng, style),
        loudness=loudness,
        velocity=float(rng.uniform(*VELOCITY[loudness])),
    )


# ---------------------------------------------------------------------------------------------------
# Harmony


def parse_chord(symbol: str, tonic: int, mode: str) -> tuple[int, tuple[int, ...]]:
    """Roman numeral -> (root pitch class, pitch classes). Degrees come from the mode's scale: in A
    minor "V" is E major (raised leading tone), "VI" is F major, "iidim" is B diminished."""
    match = re.fullmatch(r"([IViv]+)(|7|maj7|m7b5|dim)", symbol)
    if match is None:
        raise ValueError(f"chord symbol must be a roman numeral with an optional 7/maj7/m7b5/dim, got {symbol!r}")
    numeral, suffix = match.groups()
    degree = NUMERALS.index(numeral.upper())
    root = (tonic + SCALES[mode][degree]) % 12
    quality = {"7": "7" if numeral.isupper() else "m7"}.get(suffix, suffix)
    if numeral.islower() and quality == "":
        quality = "m"
    return root, tuple((root + i) % 12 for i in QUALITIES[quality])


def _scale_for(chord: tuple[int, ...], scale: tuple[int, ...]) -> tuple[int, ...]:
    """The scale the melody walks over this chord: chord tones outside the key (the raised seventh
    of a minor key's V) replace the scale notes a semitone away, so lines do not clash with chords."""
    out = set(scale)
    for pc in chord:
        if pc not in out:
            out -= {(pc - 1) % 12, (pc + 1) % 12}
            out.add(pc)
    return tuple(sorted(out))


def _voicing(chord: tuple[int, ...], center: int) -> list[int]:
    """Close voicing inside [center - 6, center + 6): every chord keeps to one octave window, which
    gives smooth voice leading between chords for free."""
    return sorted(center - 6 + (pc - (center - 6)) % 12 for pc in chord)


def _in_range(pc: int, lo: int) -> int:
    """The lowest MIDI note >= lo with pitch class pc."""
    return lo + (pc - lo) % 12


# ---------------------------------------------------------------------------------------------------
# Parts: each returns notes as (onset_beats, length_beats, pitch, accent); accent scales velocity.

Notes = list[tuple[float, float, int, float]]


def _comp(rng: np.random.Generator, piece: Piece, chords, instrument: str, with_bass: bool) -> Notes:
    style, bpb = piece.style, piece.beats_per_bar
    lo, hi = REGISTERS[instrument]
    center = lo + 7
    notes: Notes = []
    shape = _pick(rng, ("up", "updown", "alberti")) if style == "arpeggio" else ""
    step = 0.25 if style == "arpeggio" and piece.tempo_bpm < 104 else 0.5
    quarters = style == "rock" and instrument in ("piano", "organ") and rng.random() < 0.5
    for bar, (root, pcs) in enumerate(chords):
        t0 = bar * bpb
        chord = _voicing(pcs, center)
        low = _in_range(root, center - 19)  # the root an octave and more below the chord
        hits: list[tuple[float, float, list[int], float]] = []
        if style == "waltz":
            hits += [(1, 0.8, chord, 0.75), (2, 0.8, chord, 0.7)]
            if with_bass:
                hits.append((0, 1.0, [low if bar % 2 == 0 else low + 7], 1.0))
        elif style == "rock":
            if instrument == "electric guitar":  # power chord: root, fifth, octave
                chord = [low + 12, low + 19, low + 24]
            grid = 1.0 if quarters else 0.5
            hits += [(k * grid, grid * 0.9, chord, 1.0 if (k * grid) % 1 == 0 else 0.8)
                     for k in range(int(bpb / grid))]
            if with_bass:
                hits += [(b, 0.9, [low], 1.0) for b in range(0, bpb, 2)]
        elif style == "ballad":
            hold = 2 if bpb == 4 else 3
            hits += [(b, hold, chord, 0.85 if b == 0 else 0.7) for b in range(0, bpb, hold)]
            if with_bass or instrument == "piano":
                hits.append((0, bpb, [low], 0.9))
        elif style == "march":  # oom-pah: bass on the beats, chord on the off-beats
            hits += [(b + 0.5, 0.4, chord, 0.8) for b in range(bpb)]
            if with_bass:
                hits += [(b, 0.45, [low if b % 2 == 0 else low + 7], 1.0) for b in range(bpb)]
        elif style == "ambient":  # held chord, slightly overlapping the next for a legato pad
            hits.append((0, bpb + 0.1, chord + ([low + 12] if with_bass else []), 0.8))
        elif style == "arpeggio":
            tones = [p for p in chord] + [p + 12 for p in chord]
            order = {"up": tones, "updown": tones + tones[-2:0:-1],
                     "alberti": [tones[0], tones[2], tones[1], tones[2]]}[shape]
            n = int(bpb / step)
            hits += [(k * step, step * 1.8, [order[k % len(order)]], 0.9 if (k * step) % 1 == 0 else 0.7)
                     for k in range(n)]
            if with_bass:
                hits.append((0, bpb, [low], 0.9))
        elif style == "jazz":  # comping: two or three short syncopated stabs per bar
            spots = rng.choice([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5], size=int(rng.integers(2, 4)), replace=False)
            hits += [(float(s), float(rng.choice([0.4, 0.9])), chord, 0.8) for s in sorted(spots)]
            if with_bass:
                hits += [(b, 0.9, [low if b % 2 == 0 else low + 7], 0.9) for b in range(bpb)]
        elif style == "bossa nova":  # two-bar syncopated comping figure, thumb on beats 1 and 3
            spots = (0, 1.5, 3) if bar % 2 == 0 else (1, 2.5)
            hits += [(s, 0.6, chord, 0.8) for s in spots]
            if with_bass or instrument == "acoustic guitar":
                hits += [(0, 1.5, [low], 0.9), (2, 1.5, [low + 7], 0.85)]
        for onset, length, pitches, accent in hits:
            notes += [(t0 + onset, length, p, accent) for p in pitches]
    return notes


def _melody(rng: np.random.Generator, piece: Piece, chords, lo: int, hi: int) -> Notes:
    """A tune: a two-bar rhythm motif repeated in four-bar phrases (A A B A), chord tones on strong
    beats and steps along the scale between them, a long chord tone at the end of each phrase."""
    spec, bpb = STYLE_SPECS[piece.style], piece.beats_per_bar
    scale = tuple((piece.tonic + s) % 12 for s in SCALES[piece.mode])

    def bar_rhythm() -> list[tuple[float, float, bool]]:  # (onset, length, is_rest)
        out, t = [], 0.0
        while t < bpb - 1e-9:
            length = min(float(_pick(rng, spec.rhythm)), bpb - t)
            out.append((t, length, t > 0 and rng.random() < 0.1))
            t += length
        return out

    motifs = [bar_rhythm(), bar_rhythm()]
    notes: Notes = []
    pitch = _in_range(chords[0][0], (lo + hi) // 2 - 6)
    direction = 1
    for bar, (_, pcs) in enumerate(chords):
        allowed = [p for p in range(lo, hi + 1) if p % 12 in _scale_for(pcs, scale)]
        chord_tones = [p for p in allowed if p % 12 in pcs]
        phrase_end = bar % 4 == 3
        rhythm = [(0.0, float(bpb), False)] if phrase_end and rng.random() < 0.5 else motifs[int(bar % 4 == 2)]
        for onset, length, rest in rhythm:
            if rest:
                continue
            strong = onset == 0 or (onset % 2 == 0 and bpb == 4) or length >= 1.5
            if strong or phrase_end:  # land on the chord tone nearest a small leap
                target = pitch + int(rng.integers(-4, 5))
                pitch = min(chord_tones, key=lambda p: (abs(p - target), p))
            else:  # step along the scale, mostly in the same direction, turning at the edges
                if rng.random() < 0.25:
                    direction = -direction
                i = min(range(len(allowed)), key=lambda k: abs(allowed[k] - pitch))
                i += direction * (1 if rng.random() < 0.75 else 2)
                if not 0 <= i < len(allowed):
                    direction = -direction
                    i = min(max(i, 0), len(allowed) - 1)
                pitch = allowed[i]
            notes.append((bar * bpb + onset, length * 0.95, pitch, 1.0 if strong else 0.85))
    return notes


def _bass(rng: np.random.Generator, piece: Piece, chords, instrument: str) -> Notes:
    style, bpb = piece.style, piece.beats_per_bar
    lo = REGISTERS[instrument][0] + 2
    notes: Notes = []
    for bar, (root, pcs) in enumerate(chords):
        t0 = bar * bpb
        r = _in_range(root, lo)
        fifth = r + 7
        nxt = _in_range(chords[(bar + 1) % len(chords)][0], lo)
        if style == "waltz":
            line = [(0, 1.0, r if bar % 2 == 0 else fifth, 1.0)]
        elif style == "rock":
            line = [(k * 0.5, 0.45, r + (12 if k == 5 and rng.random() < 0.3 else 0), 1.0 if k % 2 == 0 else 0.8)
                    for k in range(2 * bpb)]
        elif style == "ballad":
            line = [(0, 2.0, r, 1.0), (2, 2.0, fifth if rng.random() < 0.5 else r, 0.85)] if bpb == 4 else \
                   [(0, 3.0, r, 1.0)]
        elif style == "march":
            line = [(b, 0.5, r if b % 2 == 0 else fifth, 1.0) for b in range(bpb)]
        elif style == "ambient":
            line = [(0, bpb + 0.1, r, 0.9)]
        elif style == "arpeggio":
            line = [(b, 0.9, r, 0.9) for b in range(bpb)] if rng.random() < 0.5 else [(0, float(bpb), r, 0.9)]
        elif style == "jazz":  # walking bass: root, chord tones, then a chromatic approach to the next root
            tones = sorted(_in_range(pc, lo) for pc in pcs)
            walk = [r] + [int(_pick(rng, tones)) for _ in range(bpb - 2)] + [nxt + int(_pick(rng, (-1, 1)))]
            line = [(b, 0.9, p, 1.0 if b % 2 == 0 else 0.85) for b, p in enumerate(walk)]
        else:  # bossa nova
            line = [(0, 1.4, r, 1.0), (1.5, 0.4, fifth, 0.8), (2, 1.4, fifth, 0.9), (3.5, 0.4, r, 0.8)]
        notes += [(t0 + onset, length, pitch, accent) for onset, length, pitch, accent in line]
    return notes


def _drums(rng: np.random.Generator, piece: Piece, n_bars: int) -> Notes:
    style, bpb = piece.style, piece.beats_per_bar
    d = DRUM
    notes: Notes = []
    for bar in range(n_bars):
        t0 = bar * bpb
        fill = bar % 4 == 3 and rng.random() < 0.5
        hits: list[tuple[float, int, float]] = []  # (onset beats, drum key, accent)
        if bar % 4 == 0 and style in ("rock", "march", "arpeggio") and rng.random() < 0.7:
            hits.append((0, d["crash"], 0.9))
        if style == "rock":
            hits += [(k * 0.5, d["closed hat"], 0.8 if k % 2 == 0 else 0.6) for k in range(2 * bpb)]
            hits += [(0, d["kick"], 1.0), (2, d["kick"], 0.95), (2.5, d["kick"], 0.8), (1, d["snare"], 1.0),
                     (3, d["snare"], 1.0)]
            if fill:
                hits += [(3 + k * 0.25, (d["high tom"], d["mid tom"], d["low tom"], d["low tom"])[k], 0.9)
                         for k in range(4)]
        elif style == "waltz":
            hits += [(0, d["kick"], 0.9), (1, d["pedal hat"], 0.6), (2, d["pedal hat"], 0.6),
                     (1, d["stick"], 0.5), (2, d["stick"], 0.45)]
        elif style == "ballad":
            hits += [(b, d["closed hat"], 0.5) for b in range(bpb)] + [(0, d["kick"], 0.8)]
            hits += [(b, d["stick"], 0.7) for b in range(1, bpb, 2)] + ([(2.5, d["kick"], 0.6)] if bpb == 4 else [])
        elif style == "march":  # snare ruffs on every beat, bass drum on the beats
            for b in range(bpb):
                hits += [(b, d["kick"], 1.0), (b, d["snare"], 1.0), (b + 0.5, d["snare"], 0.7),
                         (b + 0.75, d["snare"], 0.8)]
        elif style == "ambient":
            hits += [(b, d["ride"], 0.5) for b in range(bpb)] + [(0, d["kick"], 0.5)]
            hits += [(k * 0.5, d["shaker"], 0.4) for k in range(2 * bpb)]
        elif style == "arpeggio":  # four on the floor
            hits += [(b, d["kick"], 1.0) for b in range(bpb)] + [(b + 0.5, d["closed hat"], 0.7) for b in range(bpb)]
            hits += [(b, d["clap"], 0.8) for b in range(1, bpb, 2)]
        elif style == "jazz":  # ride "ding ding-a ding ding-a", hi-hat foot on 2 and 4
            hits += [(b, d["ride"], 0.8) for b in range(bpb)] + [(b + 0.5, d["ride"], 0.6) for b in (1, 3)]
            hits += [(b, d["pedal hat"], 0.7) for b in (1, 3)] + [(0, d["kick"], 0.4)]
            if rng.random() < 0.5:
                hits.append((float(_pick(rng, (1.5, 2.5, 3.5))), d["snare"], 0.5))
        else:  # bossa nova: rim clicks on the two-bar clave, kick with the bass, shaker eighths
            clave = (0, 1.5, 3) if bar % 2 == 0 else (1, 2.5)
            hits += [(s, d["stick"], 0.8) for s in clave] + [(k * 0.5, d["shaker"], 0.5) for k in range(8)]
            hits += [(0, d["kick"], 0.8), (1.5, d["kick"], 0.6), (2, d["kick"], 0.8), (3.5, d["kick"], 0.6)]
        # Drum samples decay on their own; an early note-off would choke them (cymbals most of all).
        notes += [(t0 + onset, 2.0, key, accent) for onset, key, accent in hits]
    return notes


# ---------------------------------------------------------------------------------------------------
# Score


def compose(rng: np.random.Generator, piece: Piece, n_bars: int):
    """The piece's first `n_bars` bars as a `pretty_midi.PrettyMIDI` (tempo, time signature, one
    instrument per part, channel volume CC7 per part for the mix)."""
    import pretty_midi

    spb = 60.0 / piece.tempo_bpm
    pm = pretty_midi.PrettyMIDI(initial_tempo=float(piece.tempo_bpm))
    pm.time_signature_changes.append(pretty_midi.TimeSignature(piece.beats_per_bar, 4, 0.0))
    cycle = [parse_chord(s, piece.tonic, piece.mode) for s in piece.progression]
    chords = [cycle[i % len(cycle)] for i in range(n_bars)]
    swing = STYLE_SPECS[piece.style].swing
    for part in piece.parts:
        name = part.instrument
        if part.role == "drums":
            notes = _drums(rng, piece, n_bars)
        elif part.role == "bass":
            notes = _bass(rng, piece, chords, name)
        elif part.role == "melody":
            notes = _melody(rng, piece, chords, *REGISTERS[name])
        else:  # chords; a solo adds the tune above its own chords and plays its own bass notes
            with_bass = part.role == "solo" or not any(p.role == "bass" for p in piece.parts)
            notes = _comp(rng, piece, chords, name, with_bass)
            if part.role == "solo":
                lo, hi = REGISTERS[name]
                notes += _melody(rng, piece, chords, lo + 12, hi + 5)
        inst = pretty_midi.Instrument(part.program, is_drum=part.role == "drums", name=name)
        inst.control_changes.append(pretty_midi.ControlChange(7, ROLE_VOLUME[part.role], 0.0))
        jitter = rng.normal(0.0, 0.004, size=len(notes))  # seconds: played by hand, not by a grid
        gains = rng.normal(1.0, 0.06, size=len(notes))
        for (onset, length, pitch, accent), dt, g in zip(notes, jitter, gains):
            if swing and onset % 1 == 0.5:  # swung eighth: the "and" lands at 2/3 of the beat
                onset, length = onset + 1 / 6, length - 1 / 6
            start = max(0.0, onset * spb + float(dt))
            velocity = min(max(round(piece.velocity * accent * float(g)), 1), 127)
            inst.notes.append(pretty_midi.Note(velocity, int(pitch), start, start + max(length, 0.1) * spb))
        pm.instruments.append(inst)
    return pm


# ---------------------------------------------------------------------------------------------------
# Rendering


def soundfont_path() -> str:
    import pretty_midi

    return os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")


class _Engine:
    """One loaded SoundFont per process and sample rate, plus each preset's level. Loading the sf2 is
    tens of milliseconds, about a clip's whole budget, so it happens once."""

    CALIBRATION_S = 0.5

    def __init__(self, sample_rate: int):
        import tinysoundfont

        self.sample_rate = sample_rate
        self.synth = tinysoundfont.Synth(samplerate=sample_rate)
        self.synth.sfload(soundfont_path())
        self.level = self._calibrate()

    def reset(self) -> None:
        """Silence every voice and reset every controller, so nothing of the last clip carries over:
        sounds_off (CC120) fades voices out within ~256 samples, rendering 2048 frees them."""
        self.synth.sounds_off()
        self.synth.generate_simple(2048)
        for ch in range(16):
            self.synth.control_change(ch, 121, 0)  # reset all controllers: volume, pan, pitch wheel

    def _calibrate(self) -> dict[tuple[bool, int], float]:
        """RMS of each preset we use at velocity 100: a triad in its register (the TimGM6mb presets
        differ by up to 18 dB, piano quietest, flute loudest) and for the kit a bar of rock beat."""
        n = int(self.CALIBRATION_S * self.sample_rate)
        level = {}
        programs = {(name, p) for name, ps in PROGRAMS.items() for p in ps}
        programs |= {(name, p) for (_, name), ps in STYLE_PROGRAMS.items() for p in ps}
        for name, program in sorted(programs):
            self.reset()
            if name == "drums":
                self.synth.program_change(9, program, True)
                hits = [(0, DRUM["kick"]), (0, DRUM["closed hat"]), (n // 2, DRUM["snare"]), (n // 2, DRUM["closed hat"])]
                level[(True, program)] = _rms(self._play(9, hits, n))
            else:
                self.synth.program_change(0, program)
                root = REGISTERS[name][0] + 5
                hits = [(0, root), (0, root + 4), (0, root + 7)]
                level[(False, program)] = _rms(self._play(0, hits, n))
        return level

    def _play(self, ch: int, hits: list[tuple[int, int]], n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        pos = 0
        for at, key in sorted(hits) + [(n, -1)]:
            if at > pos:
                stereo = np.frombuffer(self.synth.generate_simple(at - pos), np.float32).reshape(-1, 2)
                out[pos:at] = (stereo[:, 0] + stereo[:, 1]) * 0.5
                pos = at
            if key >= 0:
                self.synth.noteon(ch, key, 100)
        return out

    def channel_volume(self, is_drum: bool, program: int, volume: int) -> int:
        """CC7 that plays a preset at the score's volume after evening out preset levels.
        tinysoundfont's channel gain is (cc / 127) ** 3 (measured: 100 -> -6.2 dB, 64 -> -17.6 dB)."""
        gain = (volume / 127) ** 3 * min(self.level.values()) / self.level[(is_drum, program)]
        if is_drum:
            gain *= 3.0  # drums are transient: at equal RMS they sound buried under sustained parts
        return int(np.clip(round(127 * min(gain, 1.0) ** (1 / 3)), 1, 127))


_ENGINES: dict[int, _Engine] = {}


def _engine(sample_rate: int) -> _Engine:
    if sample_rate not in _ENGINES:
        _ENGINES[sample_rate] = _Engine(sample_rate)
    return _ENGINES[sample_rate]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def render_score(pm, sample_rate: int, start_s: float, num_samples: int) -> np.ndarray:
    """Mono `[num_samples]` float32 of the score from `start_s`. Notes already sounding at `start_s`
    start there. Events go straight to the synth at their exact sample (no .mid round trip)."""
    engine = _engine(sample_rate)
    synth = engine.synth
    engine.reset()
    end_s = start_s + num_samples / sample_rate
    events: list[tuple[int, int, int, int, int]] = []  # (sample, 0 = off before 1 = on, channel, key, vel)
    channels = iter(c for c in range(16) if c != 9)
    for inst in pm.instruments:
        ch = 9 if inst.is_drum else next(channels)
        synth.program_change(ch, inst.program, inst.is_drum)
        volume = next((cc.value for cc in inst.control_changes if cc.number == 7), 100)
        synth.control_change(ch, 7, engine.channel_volume(inst.is_drum, inst.program, volume))
        for note in inst.notes:
            if note.end <= start_s or note.start >= end_s:
                continue
            events.append((max(0, round((note.start - start_s) * sample_rate)), 1, ch, note.pitch, note.velocity))
            off = round((note.end - start_s) * sample_rate)
            if off < num_samples:
                events.append((off, 0, ch, note.pitch, 0))
    events.sort()
    buf = memoryview(bytearray(num_samples * 8))  # interleaved stereo float32
    pos = 0
    for at, on, ch, key, vel in events + [(num_samples, -1, 0, 0, 0)]:
        if at > pos:
            synth.generate_simple(at - pos, buffer=buf[pos * 8: at * 8])
            pos = at
        if on == 1:
            synth.noteon(ch, key, vel)
        elif on == 0:
            synth.noteoff(ch, key)
    stereo = np.frombuffer(buf, np.float32).reshape(-1, 2)  # [T, 2]
    return (stereo[:, 0] + stereo[:, 1]) * np.float32(0.5)  # [T]; .mean(axis=1) is 10x slower here


def render_music(rng: np.random.Generator, duration_s: float, sample_rate: int) -> tuple[np.ndarray, dict]:
    """One music clip: wave `[T]` float32 with T = round(duration_s * sample_rate), peak <= 0.99,
    RMS > 1e-3, and its labels (instruments, tempo, key, mode, meter, style, loudness, beat and
    downbeat times in seconds within the clip). All randomness comes from `rng`."""
    _check_clip(duration_s, sample_rate)  # before drawing anything
    return render_piece(rng, choose_piece(rng), duration_s, sample_rate)


def _check_clip(duration_s: float, sample_rate: int) -> None:
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration_s must be in (0, {MAX_DURATION_S}], got {duration_s}")
    if int(sample_rate) != sample_rate or not 4000 <= sample_rate <= 192_000:
        raise ValueError(f"sample_rate must be an integer in [4000, 192000], got {sample_rate}")


def render_piece(rng: np.random.Generator, piece: Piece, duration_s: float, sample_rate: int) -> tuple[np.ndarray, dict]:
    """Compose `piece` and render a `duration_s` window of it (see `render_music`); a chosen piece
    can be passed in to hear one style or instrument."""
    # 1. check inputs
    _check_clip(duration_s, sample_rate)
    sample_rate = int(sample_rate)
    num_samples = round(duration_s * sample_rate)
    # 2. where the clip starts in the piece
    offset = 0.0 if rng.random() < PIECE_START_P else float(rng.uniform(0.0, 2 * piece.bar_s))
    n_bars = math.ceil((offset + duration_s) / piece.bar_s) + 1
    # 3. compose and render, with a short pre-roll so held notes are mid-sound at the window start
    pm = compose(rng, piece, n_bars)
    start = max(0.0, offset - PREROLL_S)
    skip = round((offset - start) * sample_rate)
    wave = render_score(pm, sample_rate, start, skip + num_samples)[skip:]  # [T]
    # 4. level: a target RMS per loudness, then cap the peak
    rms = _rms(wave)
    if rms == 0.0:
        raise RuntimeError(f"music render is silent (style {piece.style}, parts {piece.parts})")
    gain = float(rng.uniform(*LEVEL_RMS[piece.loudness])) / rms
    gain = min(gain, 0.99 / float(np.max(np.abs(wave))))
    wave = (wave * gain).astype(np.float32)
    # 5. labels: beats and downbeats of the score that fall inside the window
    beats = [round(float(b) - offset, 4) for b in pm.get_beats() if offset - 1e-6 <= b < offset + duration_s]
    downbeats = [round(float(b) - offset, 4) for b in pm.get_downbeats()
                 if offset - 1e-6 <= b < offset + duration_s]
    present = {p.instrument for p in piece.parts}
    labels = {
        "domain": "music",
        "instruments": [name for name in INSTRUMENTS if name in present],
        "tempo_bpm": float(piece.tempo_bpm),
        "key": KEYS[piece.tonic],
        "mode": piece.mode,
        "time_signature": f"{piece.beats_per_bar}/4",
        "style": piece.style,
        "loudness": piece.loudness,
        "beats": [max(0.0, b) for b in beats],
        "downbeats": [max(0.0, b) for b in downbeats],
    }
    return wave, labels
