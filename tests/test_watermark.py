"""The generation watermark (pipelines/watermark.py): embed/detect round trip, payload and CRC, shapes, rates
and types, robustness to the benchmark's transformations on one clip, unmarked audio, errors, the CLI and
the pipeline marking its outputs by default."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from soundsmith.codecs.audio import resample, write_audio
from soundsmith.pipelines.watermark import MAX_PAYLOAD, crc8, detect, detect_file, embed, min_samples

from soundsmith.cli import main

SR = 16000


def music(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    """A chord with vibrato, note changes and a little noise: `[1, T]` float32 (a stand-in for generated audio)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wave = np.zeros_like(t)
    for k, f0 in enumerate(rng.uniform(110, 440, 3)):
        f = f0 * (1 + 0.003 * np.sin(2 * np.pi * 5 * t)) * np.where((t % 1.0) < 0.5, 1.0, 1.25)
        for h in range(1, 6):
            wave += 0.1 / h * np.sin(2 * np.pi * h * np.cumsum(f) / sr + k)
    wave += 0.01 * rng.standard_normal(t.size)
    return (0.5 * wave / np.abs(wave).max())[None].astype(np.float32)


def snr_db(clean: np.ndarray, marked: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum((marked - clean).astype(np.float64) ** 2)))


def test_round_trip_payload_and_key():
    x = music(2.0)
    y = embed(x, SR, 0xBEEF)
    assert y.shape == x.shape and y.dtype == np.float32 and snr_db(x, y) >= 35.0
    found = detect(y, SR)
    assert found.present and found.payload == 0xBEEF and found.confidence > 0.999 and found.blocks == 3  # all phases: 3
    assert found.score > 15 and found.offset_s == 0.0
    clean = detect(x, SR)
    assert not clean.present and clean.score < 5 and clean.confidence < 0.9
    assert not detect(y, SR, key="another key").present  # keyed
    assert detect(embed(x, SR, 0), SR).payload == 0 and detect(embed(x, SR, MAX_PAYLOAD), SR).payload == MAX_PAYLOAD
    assert "present" in found.describe() and "0xbeef" in found.describe()


def test_crc8_is_the_standard_one():
    assert crc8(int.from_bytes(b"123456789", "big"), bits=72) == 0xF4  # CRC-8 (poly 0x07) check value
    assert crc8(0) == 0 and crc8(1) != crc8(2)


def test_shapes_rates_and_types():
    stereo = np.concatenate([music(1.5, seed=1, sr=44100), music(1.5, seed=2, sr=44100)])  # [2, T] at 44.1 kHz
    batch = torch.from_numpy(np.stack([stereo, stereo[::-1].copy()]))  # [B=2, C=2, T]
    marked = embed(batch, 44100, 1234)
    assert isinstance(marked, torch.Tensor) and marked.shape == batch.shape and marked.dtype == torch.float32
    for b in range(2):
        assert detect(marked[b], 44100).payload == 1234  # each item; detect mixes down to mono
        assert snr_db(batch[b].numpy(), marked[b].numpy()) >= 35.0
    mono = music(1.0)[0]  # [T]
    assert embed(mono, SR, 7).shape == mono.shape
    short = music(0.4)
    assert np.array_equal(embed(short, SR, 7), short)  # shorter than a block: nothing to mark
    assert min_samples(SR) == 8000 and min_samples(44100) == 22050


def test_robust_to_the_benchmark_transformations():
    x = music(3.0, seed=3)
    y = embed(x, SR, 0x5A17)
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    sf.write(buf, np.clip(y, -1, 1).T, SR, format="OGG", subtype="VORBIS")
    buf.seek(0)
    variants = {
        "resample-8k": resample(resample(y, SR, 8000), 8000, SR),
        "noise-20dB": y + rng.standard_normal(y.shape).astype(np.float32) * np.sqrt(np.mean(y**2) / 100),
        "gain-6dB": 0.5 * y,
        "crop-1s": y[:, 12345:12345 + SR],
        "ogg": sf.read(buf, dtype="float32", always_2d=True)[0].T,
    }
    for name, wave in variants.items():
        found = detect(wave, SR)
        assert found.present and found.payload == 0x5A17, (name, found)


def test_unmarked_audio_scores_low():
    rng = np.random.default_rng(1)
    clips = [0.1 * rng.standard_normal((1, 2 * SR)), music(2.0, seed=5), np.zeros((1, SR)) + 1e-4,
             0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)[None]]
    for clip in clips:
        found = detect(clip.astype(np.float32), SR)
        assert not found.present and found.score < 5.5


def test_errors():
    with pytest.raises(ValueError, match=r"clip is 0.40 s; detecting the watermark needs at least 0.50 s"):
        detect(music(0.4), SR)
    with pytest.raises(ValueError, match=r"payload must be an integer in \[0, 65535\]"):
        embed(music(1.0), SR, 70000)
    with pytest.raises(ValueError, match="NaN"):
        detect(np.full((1, SR), np.nan, dtype=np.float32), SR)


def test_cli_detect(tmp_path, capsys):
    marked = write_audio(tmp_path / "marked.wav", embed(music(1.2), SR, 0x0ACE), SR)
    plain = write_audio(tmp_path / "plain.flac", music(1.2, seed=9), SR)
    assert main(["detect", str(marked), str(plain)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{marked}: present (confidence") and lines[0].endswith("payload 0x0ace)")
    assert lines[1].startswith(f"{plain}: absent")

    (tmp_path / "notes.wav").write_text("not audio")
    short = write_audio(tmp_path / "short.wav", music(0.3), SR)
    for bad, message in ((tmp_path / "notes.wav", "not a readable audio file"), (short, "needs at least 0.50 s"),
                         (tmp_path / "missing.wav", "not found")):
        assert main(["detect", str(bad)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err and str(bad) in err
    assert main(["detect", str(marked), str(short)]) == 2  # several files: each one reported, then a summary
    captured = capsys.readouterr()
    assert "present" in captured.out and "1 of 2 files could not be checked" in captured.err


def test_detect_file_reads_mp3(tmp_path):
    path = tmp_path / "marked.mp3"
    sf.write(path, np.clip(embed(music(4.0), SR, 99), -1, 1).T, SR, format="MP3")  # sparse tones: 4 s
    assert detect_file(path).payload == 99


# diffusers' schedulers trip a numpy 2 deprecation (np.array(..., copy=False) on a tensor): not ours
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_pipeline_marks_its_outputs_by_default(tmp_path):
    from ldm_helpers import tiny_pipeline
    from soundsmith.gen.text_encoder import SentenceEncoder

    pipe = tiny_pipeline(SentenceEncoder())
    out = pipe("rain on a roof", duration_s=1.0, seed=0)
    plain = pipe("rain on a roof", duration_s=1.0, seed=0, watermark=False)
    assert out.parameters["watermarked"] is True and out.parameters["watermark_payload"] == pipe.watermark_payload
    assert plain.parameters["watermarked"] is False and plain.parameters["watermark_payload"] is None
    assert snr_db(plain.audios.numpy(), out.audios.numpy()) >= 35.0
    found = detect(out.audios[0], out.sample_rate)
    assert found.present and found.payload == pipe.watermark_payload and not detect(plain.audios[0], SR).present
    sidecar = json.loads(out.save(tmp_path)[0].with_suffix(".json").read_text())
    assert sidecar["watermarked"] is True and sidecar["watermark_scheme"] == "soundsmith-stdm/1"
    assert detect_file(out.save(tmp_path, overwrite=True)[0]).payload == pipe.watermark_payload  # through PCM_16
