"""The mel front-end against librosa, an independent implementation of the same convention."""

import librosa
import numpy as np
import pytest
import torch
from soundsmith.codecs.mel import MelConfig, MelSpectrogram, mel_filterbank


def reference_log_mel(y: np.ndarray, cfg: MelConfig) -> np.ndarray:
    pad = (cfg.n_fft - cfg.hop_length) // 2
    y = np.pad(y, (pad, pad), mode="reflect")
    spec = np.abs(librosa.stft(y, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                               window="hann", center=False))
    basis = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min,
                                fmax=cfg.f_max, htk=False, norm="slaney")
    return np.log(np.clip(basis @ spec, cfg.log_floor, None))


def test_filterbank_matches_librosa():
    cfg = MelConfig()
    ours = mel_filterbank(cfg).numpy()
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0, fmax=8000, htk=False, norm="slaney")
    assert ours.shape == ref.shape == (64, 513)
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=1e-4)


def test_log_mel_matches_librosa_on_a_real_signal():
    cfg = MelConfig()
    # a chirp with harmonics, a noise burst and silence: exercises every bin and the log floor
    sr = cfg.sample_rate
    t = np.arange(2 * sr) / sr
    y = 0.4 * librosa.chirp(fmin=80, fmax=7000, sr=sr, duration=2.0) + 0.1 * np.sin(2 * np.pi * 220 * t)
    y[sr // 2: sr] += 0.2 * np.random.default_rng(0).standard_normal(sr // 2)
    y[int(1.5 * sr):] = 0.0
    y = y.astype(np.float32)
    ours = MelSpectrogram(cfg)(torch.from_numpy(y)[None])[0].numpy()
    ref = reference_log_mel(y.astype(np.float64), cfg)
    assert ours.shape == ref.shape == (64, len(y) // 160)
    # float32 STFT vs librosa's float64: tight where the energy is, looser near the 1e-5 floor
    loud = ref > np.log(1e-3)
    assert loud.mean() > 0.3
    np.testing.assert_allclose(ours[loud], ref[loud], atol=2e-4)
    np.testing.assert_allclose(ours[~loud], ref[~loud], atol=1e-2)
    np.testing.assert_allclose(np.exp(ours), np.exp(ref), atol=1e-5 * np.exp(ref).max())


def test_batched_shapes_and_frame_count():
    mel = MelSpectrogram()
    x = torch.randn(3, 2, 16000 * 2 + 40)
    out = mel(x)
    assert out.shape == (3, 2, 64, (16000 * 2 + 40) // 160) and out.dtype == torch.float32
    torch.testing.assert_close(out[1, 0], mel(x[1, 0][None])[0])


def test_config_is_checked():
    with pytest.raises(ValueError, match="f_max"):
        MelConfig(f_max=9000)
    with pytest.raises(ValueError, match="hop_length"):
        MelConfig(hop_length=0)
    with pytest.raises(ValueError, match="need more than"):
        MelSpectrogram()(torch.zeros(1, 100))
