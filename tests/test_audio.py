import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from soundsmith.codecs import audio


@pytest.mark.parametrize("suffix,subtype,tol", [(".wav", "PCM_16", 1e-4), (".wav", "FLOAT", 0), (".flac", "PCM_24", 1e-6)])
def test_write_read_round_trip(tmp_path, tone, suffix, subtype, tol):
    wave, sr = tone
    path = audio.write_audio(tmp_path / f"x{suffix}", wave, sr, subtype=subtype, metadata={"prompt": "a tone", "seed": 3})
    back, back_sr = audio.read_audio(path)
    assert back_sr == sr and back.dtype == np.float32 and back.shape == wave.shape
    np.testing.assert_allclose(back, wave, atol=tol)
    assert json.loads(path.with_suffix(".json").read_text()) == {"prompt": "a tone", "seed": 3}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_read_ogg_and_options(tmp_path, tone):
    wave, sr = tone
    sf.write(tmp_path / "x.ogg", wave.T, sr, format="OGG", subtype="VORBIS")
    back, back_sr = audio.read_audio(tmp_path / "x.ogg", sample_rate=8000, channels=1, offset_s=0.25, duration_s=0.5)
    assert back_sr == 8000 and back.shape == (1, 4000)


def test_write_accepts_torch_and_mono(tmp_path, tone):
    wave, sr = tone
    path = audio.write_audio(tmp_path / "t.wav", torch.from_numpy(wave[0]), sr)
    assert sf.info(path).channels == 1


def test_write_is_atomic(tmp_path, tone, monkeypatch):
    wave, sr = tone
    target = tmp_path / "x.wav"
    audio.write_audio(target, wave, sr)
    before = target.read_bytes()

    def broken_write(*args, **kwargs):
        with open(args[0], "wb") as f:
            f.write(b"RIFF half")
        raise OSError("disk full")

    monkeypatch.setattr(audio.sf, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        audio.write_audio(target, wave * 0.5, sr)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]


def test_resample_keeps_pitch_and_type(tone):
    wave, sr = tone
    out = audio.resample(wave, sr, 24_000)
    assert out.shape == (2, audio.resampled_length(sr, sr, 24_000)) == (2, 24_000)
    spectrum = np.abs(np.fft.rfft(out[0]))
    assert abs(np.argmax(spectrum) * 24_000 / out.shape[-1] - 440) < 2
    t = audio.resample(torch.from_numpy(wave)[None], sr, 8000)
    assert isinstance(t, torch.Tensor) and t.shape == (1, 2, 8000)


def test_channels(tone):
    wave, _ = tone
    mono = audio.to_channels(wave, 1)
    np.testing.assert_allclose(mono[0], wave.mean(0))
    assert audio.to_channels(mono, 2).shape == (2, wave.shape[1])
    assert audio.to_channels(torch.from_numpy(mono)[None], 2).shape == (1, 2, wave.shape[1])
    with pytest.raises(ValueError, match="channels must be 1"):
        audio.to_channels(wave, 3)


def test_peak_and_loudness_normalize(tone):
    wave, sr = tone
    peaked = audio.peak_normalize(wave, -3.0)
    assert np.isclose(np.abs(peaked).max(), 10 ** (-3 / 20))
    quiet = wave * 0.05
    out = audio.loudness_normalize(quiet, sr, target_lufs=-20.0)
    assert abs(audio.loudness(out, sr) - -20.0) < 0.05
    # too loud a target is capped by the peak limit rather than clipped
    loud = audio.loudness_normalize(wave, sr, target_lufs=-1.0, peak_db=-1.0)
    assert np.abs(loud).max() <= 10 ** (-1 / 20) + 1e-6
    silent = np.zeros((1, sr), np.float32)
    assert audio.loudness_normalize(silent, sr) is silent


# ------------------------------------------------------------------------------------------ bad input


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio file not found: .*nope.wav"):
        audio.read_audio(tmp_path / "nope.wav")


def test_corrupt_and_unsupported_files(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    (tmp_path / "notes.txt").write_text("hello")
    for name in ("bad.wav", "notes.txt"):
        with pytest.raises(ValueError, match=f"{name}: not a readable audio file"):
            audio.read_audio(tmp_path / name)


def test_zero_length_and_nan(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(ValueError, match="empty"):
        audio.read_audio(tmp_path / "empty.wav")
    sf.write(tmp_path / "nan.wav", np.full((100, 1), np.nan, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="NaN"):
        audio.read_audio(tmp_path / "nan.wav")
    for bad in (np.full((1, 100), np.inf, np.float32), np.zeros((1, 0), np.float32)):
        with pytest.raises(ValueError):
            audio.write_audio(tmp_path / "out.wav", bad, 16000)
    assert not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize("sr", [0, -16000, 16000.5])
def test_bad_sample_rate(tmp_path, tone, sr):
    with pytest.raises(ValueError, match="sample_rate"):
        audio.write_audio(tmp_path / "x.wav", tone[0], sr)
    with pytest.raises(ValueError, match="orig_sr"):
        audio.resample(tone[0], sr, 16000)
    assert not (tmp_path / "x.wav").exists()


def test_bad_output_paths(tmp_path, tone, monkeypatch):
    wave, sr = tone
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        audio.write_audio(tmp_path / "missing" / "x.wav", wave, sr)
    with pytest.raises(ValueError, match="unsupported output format '.mp3'"):
        audio.write_audio(tmp_path / "x.mp3", wave, sr)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits: make the access check see what a user would
        real_access = os.access
        monkeypatch.setattr(audio.os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    with pytest.raises(PermissionError, match="not writable"):
        audio.write_audio(locked / "x.wav", wave, sr)
    assert list(locked.iterdir()) == []
