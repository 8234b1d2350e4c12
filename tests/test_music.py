"""Music renderer of the synthetic corpus (train/music.py): contract, determinism, labels, musical sense."""

import collections
import dataclasses
import json

import numpy as np
import pytest
from soundsmith.train import music

SR = 16_000
LABEL_KEYS = {"domain", "instruments", "tempo_bpm", "key", "mode", "time_signature", "style", "loudness",
              "beats", "downbeats"}


def _solo(instrument: str, style: str, seed: int = 0) -> music.Piece:
    role = ("drums" if instrument == "drums" else "solo" if instrument in music.HARMONY
            else "bass" if instrument == "bass" else "melody")
    piece = music.choose_piece(np.random.default_rng(seed), style)
    return dataclasses.replace(piece, parts=(music.Part(instrument, role, music.PROGRAMS[instrument][0]),))


@pytest.mark.parametrize("duration_s, sample_rate", [(2.0, SR), (1.23, 22_050)])
def test_clip_contract(duration_s, sample_rate):
    wave, labels = music.render_music(np.random.default_rng(3), duration_s, sample_rate)
    assert wave.shape == (round(duration_s * sample_rate),) and wave.dtype == np.float32
    assert np.isfinite(wave).all()
    assert np.abs(wave).max() <= 0.99
    assert np.sqrt(np.mean(wave.astype(np.float64) ** 2)) > 1e-3


def test_same_rng_same_bytes_even_after_other_clips():
    first, labels = music.render_music(np.random.default_rng(11), 2.0, SR)
    for seed in (12, 13):  # other pieces leave held notes, other programs and volumes in the cached synth
        music.render_music(np.random.default_rng(seed), 3.0, SR)
    music.render_music(np.random.default_rng(14), 1.0, 22_050)
    again, labels_again = music.render_music(np.random.default_rng(11), 2.0, SR)
    assert first.tobytes() == again.tobytes()
    assert labels == labels_again


def test_labels_schema():
    for seed in range(4):
        _, labels = music.render_music(np.random.default_rng(seed), 1.5, SR)
        assert set(labels) == LABEL_KEYS
        assert json.loads(json.dumps(labels)) == labels  # plain JSON types only
        assert labels["domain"] == "music"
        assert labels["instruments"] and set(labels["instruments"]) <= set(music.INSTRUMENTS)
        assert labels["instruments"] == [n for n in music.INSTRUMENTS if n in labels["instruments"]]
        assert labels["key"] in music.KEYS and labels["mode"] in music.MODES
        assert labels["style"] in music.STYLES and labels["loudness"] in music.LOUDNESS
        assert labels["time_signature"] in {"2/4", "3/4", "4/4"}
        assert isinstance(labels["tempo_bpm"], float)


def test_beats_follow_tempo_and_meter():
    duration = 4.0
    for seed in range(12):
        _, labels = music.render_music(np.random.default_rng(seed), duration, SR)
        period = 60.0 / labels["tempo_bpm"]
        per_bar = int(labels["time_signature"].split("/")[0])
        beats, downbeats = np.array(labels["beats"]), np.array(labels["downbeats"])
        assert 0.0 <= beats[0] < period + 1e-3 and beats[-1] < duration  # no beat missing at the start
        assert len(beats) == pytest.approx(duration / period, abs=1)
        np.testing.assert_allclose(np.diff(beats), period, atol=1e-3)
        assert set(downbeats) <= set(beats)
        np.testing.assert_allclose(np.diff(downbeats), per_bar * period, atol=1e-3)
        assert downbeats[0] < per_bar * period + 1e-3


def test_beat_labels_line_up_with_the_audio():
    """Solo rock drums hit kick or snare on every beat and nothing on the sixteenth after it."""
    piece = dataclasses.replace(_solo("drums", "rock"), tempo_bpm=100)
    wave, labels = music.render_piece(np.random.default_rng(1), piece, 4.0, SR)
    frame = SR // 100  # 10 ms energy frames
    energy = np.convolve(wave ** 2, np.ones(frame) / frame, mode="same")

    def at(t: float) -> float:
        i = int((t + 0.02) * SR)  # just after the attack
        return float(energy[min(i, len(energy) - 1)])

    sixteenth = 15.0 / labels["tempo_bpm"]
    beats = [b for b in labels["beats"] if b + sixteenth + 0.03 < 4.0]
    on = np.median([at(b) for b in beats])
    off = np.median([at(b + sixteenth) for b in beats])
    assert on > 10 * off


def test_every_instrument_style_and_option_is_reachable():
    rng = np.random.default_rng(0)
    seen = collections.defaultdict(collections.Counter)
    for _ in range(1500):
        piece = music.choose_piece(rng)
        names = {p.instrument for p in piece.parts}
        seen["instrument"].update(names)
        seen["size"][len(names)] += 1
        for field in ("style", "mode", "loudness", "beats_per_bar"):
            seen[field][getattr(piece, field)] += 1
    assert set(seen["instrument"]) == set(music.INSTRUMENTS)
    assert min(seen["instrument"].values()) >= 40  # about 90 per 1000 pieces for the rarest
    assert set(seen["style"]) == set(music.STYLES)
    assert set(seen["size"]) == {1, 2, 3, 4}  # solos and ensembles
    assert set(seen["mode"]) == set(music.MODES) and set(seen["loudness"]) == set(music.LOUDNESS)
    assert set(seen["beats_per_bar"]) == {2, 3, 4}


@pytest.mark.parametrize("style", music.STYLES)
def test_each_style_renders(style):
    rng = np.random.default_rng(5)
    piece = music.choose_piece(rng, style)
    wave, labels = music.render_piece(rng, piece, 1.0, SR)
    assert labels["style"] == style
    assert np.sqrt(np.mean(wave ** 2)) > 1e-3 and np.abs(wave).max() <= 0.99


def test_every_instrument_sounds_on_its_own():
    """Each instrument solo gives sound before levelling, and the presets really differ."""
    centroids = {}
    for name in music.INSTRUMENTS:
        style = "rock" if name in ("drums", "electric guitar") else "ballad"
        piece = _solo(name, style)
        pm = music.compose(np.random.default_rng(2), piece, n_bars=2)
        raw = music.render_score(pm, SR, 0.0, SR)  # [T], one second, no level normalisation
        assert np.sqrt(np.mean(raw ** 2)) > 3e-3, name
        spec = np.abs(np.fft.rfft(raw))
        centroids[name] = float((spec * np.arange(len(spec))).sum() / spec.sum())
    assert len({round(c, -1) for c in centroids.values()}) >= 10


def test_harmony_uses_the_key():
    """A major-key ballad (diatonic progressions only) plays nothing outside the major scale."""
    rng = np.random.default_rng(0)
    pieces = [music.choose_piece(rng, "ballad") for _ in range(20)]
    for piece in [p for p in pieces if p.mode == "major"][:6]:
        pm = music.compose(rng, piece, n_bars=4)
        scale = {(piece.tonic + s) % 12 for s in music.SCALES["major"]}
        pitches = {n.pitch % 12 for inst in pm.instruments if not inst.is_drum for n in inst.notes}
        assert pitches and pitches <= scale


def test_parse_chord():
    a_minor, c_major = 9, 0
    assert music.parse_chord("V", a_minor, "minor") == (4, (4, 8, 11))  # E major: G# leading tone
    assert music.parse_chord("VI", a_minor, "minor") == (5, (5, 9, 0))
    assert music.parse_chord("iidim", a_minor, "minor") == (11, (11, 2, 5))
    assert music.parse_chord("ii7", c_major, "major") == (2, (2, 5, 9, 0))
    assert music.parse_chord("V7", c_major, "major") == (7, (7, 11, 2, 5))
    assert music.parse_chord("Imaj7", c_major, "major") == (0, (0, 4, 7, 11))
    with pytest.raises(ValueError, match="roman numeral"):
        music.parse_chord("X9", c_major, "major")


@pytest.mark.parametrize("duration_s, sample_rate", [(0.0, SR), (-1.0, SR), (1.0, 0), (1.0, 16_000.5)])
def test_bad_arguments(duration_s, sample_rate):
    with pytest.raises(ValueError):
        music.render_music(np.random.default_rng(0), duration_s, sample_rate)
