"""Procedural SFX renderer (train/sfx.py): contract, labels, mixtures, and that the classes sound apart."""

import json

import numpy as np
import pytest
from scipy.signal import stft
from soundsmith.train.sfx import (
    DISTANCES,
    INTENSITIES,
    MIX_PROBABILITY,
    PITCHES,
    RENDERERS,
    SFX_CLASSES,
    render_sfx,
    render_sfx_class,
)

SR = 16_000
CANONICAL = ("rain", "wind", "thunder", "ocean waves", "flowing water", "fire crackling", "engine", "car horn",
             "siren", "alarm", "phone ringing", "bell", "clock ticking", "footsteps", "knocking", "birds",
             "crickets", "applause", "dog barking", "glass breaking")


def check_clip(wave: np.ndarray, duration_s: float, sr: int = SR) -> None:
    assert wave.shape == (round(duration_s * sr),)
    assert wave.dtype == np.float32
    assert np.isfinite(wave).all()
    assert np.abs(wave).max() <= 0.99
    assert np.sqrt(np.mean(wave.astype(np.float64) ** 2)) > 1e-3


def check_labels(labels: dict) -> None:
    assert set(labels) == {"domain", "classes", "intensity", "pitch", "distance", "details"}
    assert labels["domain"] == "sfx"
    assert 1 <= len(labels["classes"]) <= 2 and len(set(labels["classes"])) == len(labels["classes"])
    assert all(c in SFX_CLASSES for c in labels["classes"])
    assert labels["intensity"] in INTENSITIES
    assert labels["pitch"] in PITCHES
    assert labels["distance"] in DISTANCES
    # details: one dict of parameters per class (plus the far low-pass cut-off)
    assert set(labels["details"]) - {"far_lowpass_hz"} == set(labels["classes"])
    assert ("far_lowpass_hz" in labels["details"]) == (labels["distance"] == "far")
    assert all(isinstance(labels["details"][c], dict) for c in labels["classes"])
    assert json.loads(json.dumps(labels)) == labels  # plain JSON types only


def test_vocabulary_and_registry():
    assert set(CANONICAL) <= set(SFX_CLASSES)
    assert set(RENDERERS) == set(SFX_CLASSES)
    assert all(callable(fn) for fn in RENDERERS.values())


@pytest.mark.parametrize("name", SFX_CLASSES)
def test_every_class_renders(name):
    for seed in range(3):
        wave, labels = render_sfx_class(name, np.random.default_rng(seed), 1.0, SR)
        check_clip(wave, 1.0)
        check_labels(labels)
        assert labels["classes"] == [name]


@pytest.mark.parametrize("name", ["knocking", "car horn", "glass breaking", "bell", "clock ticking", "dog barking",
                                  "alarm", "phone ringing", "thunder", "footsteps"])
def test_sparse_classes_have_an_event_in_short_clips(name):
    # an event, not a filter tail: a few 10 ms frames within 20 dB of the loudest one
    for seed in range(6):
        wave, _ = render_sfx_class(name, np.random.default_rng(seed), 0.5, SR)
        check_clip(wave, 0.5)
        energy = (wave.reshape(-1, 160).astype(np.float64) ** 2).mean(1)
        assert (energy > 0.01 * energy.max()).sum() >= 2


@pytest.mark.parametrize("sr,duration_s", [(8_000, 0.3), (44_100, 0.25), (16_000, 0.01), (22_050, 1.7)])
def test_other_rates_and_lengths(sr, duration_s):
    for k, name in enumerate(SFX_CLASSES):
        wave, _ = render_sfx_class(name, np.random.default_rng(k), duration_s, sr)
        check_clip(wave, duration_s, sr)


def test_determinism():
    for seed in range(8):
        a, la = render_sfx(np.random.default_rng(seed), 1.0, SR)
        np.random.seed(seed + 1)  # the global RNG must not matter
        b, lb = render_sfx(np.random.default_rng(seed), 1.0, SR)
        assert a.tobytes() == b.tobytes() and la == lb
    c, _ = render_sfx(np.random.default_rng(100), 1.0, SR)
    d, _ = render_sfx(np.random.default_rng(101), 1.0, SR)
    assert c.tobytes() != d.tobytes()


def test_random_clips_and_mixtures():
    mixes, seen = 0, set()
    for seed in range(200):
        wave, labels = render_sfx(np.random.default_rng(seed), 0.25, SR)
        check_clip(wave, 0.25)
        check_labels(labels)
        seen.add(labels["classes"][0])
        if len(labels["classes"]) == 2:
            mixes += 1
            bg = labels["details"][labels["classes"][1]]
            assert -15.0 <= bg["level_db"] <= -6.0
    assert abs(mixes / 200 - MIX_PROBABILITY) < 0.1
    assert len(seen) >= 18


def test_explicit_parameters_and_background():
    wave, labels = render_sfx_class("dog barking", np.random.default_rng(0), 1.0, SR, intensity="heavy",
                                    pitch="low", distance="far", background="rain", background_db=-9.0)
    check_clip(wave, 1.0)
    check_labels(labels)
    assert labels["classes"] == ["dog barking", "rain"]
    assert (labels["intensity"], labels["pitch"], labels["distance"]) == ("heavy", "low", "far")
    assert labels["details"]["rain"]["level_db"] == -9.0


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "laser"}, "sfx class"),
    ({"intensity": "extreme"}, "intensity"),
    ({"pitch": "ultra"}, "pitch"),
    ({"distance": "mars"}, "distance"),
    ({"background": "rain"}, "differ"),
    ({"duration_s": 0.0}, "duration_s"),
    ({"sample_rate": 4000}, "sample_rate"),
])
def test_bad_arguments(kwargs, match):
    args = {"name": "rain", "rng": np.random.default_rng(0), "duration_s": 1.0, "sample_rate": SR, **kwargs}
    with pytest.raises(ValueError, match=match):
        render_sfx_class(**args)


# ------------------------------------------------------------------------------- the classes sound apart


def centroid(wave: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / SR)
    return float((spec * freqs).sum() / spec.sum())


def render(name, seed, **kwargs):
    kwargs = {"intensity": "moderate", "pitch": "medium", "distance": "near", **kwargs}
    return render_sfx_class(name, np.random.default_rng(seed), 2.0, SR, **kwargs)[0]


def pitch_track_octaves(wave: np.ndarray) -> np.ndarray:
    """log2 of the strongest frequency in each loud 32 ms frame."""
    f, _, z = stft(wave, SR, nperseg=512)
    mag = np.abs(z)  # [F, S]
    loud = mag.max(0) > 0.3 * mag.max()
    return np.log2(f[mag.argmax(0)][loud] + 1.0)


def test_spectral_centroids_order():
    seeds = range(3)
    thunder = np.mean([centroid(render("thunder", s)) for s in seeds])
    crickets = np.mean([centroid(render("crickets", s)) for s in seeds])
    engine = np.mean([centroid(render("engine", s)) for s in seeds])
    birds = np.mean([centroid(render("birds", s)) for s in seeds])
    assert crickets > 2.5 * thunder
    assert birds > 3 * engine


def test_siren_glides_alarm_holds():
    for seed in range(4):
        assert np.std(pitch_track_octaves(render("siren", seed))) > 0.1
        assert np.std(pitch_track_octaves(render("alarm", seed))) < 0.05


def test_parameters_change_the_sound():
    for seed in range(3):
        near, far = render("rain", seed), render("rain", seed, distance="far")
        assert centroid(far) < 0.7 * centroid(near)
        light, heavy = render("applause", seed, intensity="light"), render("applause", seed, intensity="heavy")
        assert np.sqrt(np.mean(heavy ** 2)) > np.sqrt(np.mean(light ** 2))
        low = render_sfx_class("dog barking", np.random.default_rng(seed), 1.0, SR, pitch="low")[1]
        high = render_sfx_class("dog barking", np.random.default_rng(seed), 1.0, SR, pitch="high")[1]
        assert low["details"]["dog barking"]["f0_hz"] < high["details"]["dog barking"]["f0_hz"]
