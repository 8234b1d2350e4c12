import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from soundsmith.train.stats import corpus_stats

from soundsmith.cli import main

SR = 16000


def _write(path: Path, wave: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, SR, subtype="FLOAT")


def _tone(seconds: float = 0.5, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * 440 * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


MUSIC = {"domain": "music", "instruments": ["piano", "bass"], "tempo_bpm": 96.0, "key": "D", "mode": "minor",
         "time_signature": "3/4", "style": "waltz", "loudness": "soft", "beats": [0.0, 0.625], "downbeats": [0.0],
         "augmentation": {"reverb": None, "gain_db": -3.0, "noise": {"kind": "pink", "snr_db": 20.0}}}
SPEECH = {"domain": "speech", "language": "de", "language_name": "German", "voice": "female",
          "voice_variant": "f2", "rate_wpm": 150, "rate": "normal", "text": "Hallo.",
          "augmentation": {"reverb": {"room_size": 0.5, "wet": 0.2}, "gain_db": 0.0, "noise": None}}


def _corpus(root: Path, problems: bool) -> Path:
    clips = [("train/0.wav", MUSIC, _tone()), ("train/1.wav", SPEECH, _tone(1.0)), ("valid/2.wav", MUSIC, _tone()),
             ("test/3.wav", SPEECH, _tone())]
    if problems:
        clips += [("train/silent.wav", SPEECH, np.zeros(SR // 2, np.float32)),
                  ("train/clipped.wav", MUSIC, np.clip(4 * _tone(), -1, 1)),
                  ("train/corrupt.wav", MUSIC, None), ("train/missing.wav", SPEECH, None)]
    rows = []
    for name, labels, wave in clips:
        if wave is not None:
            _write(root / name, wave)
        elif "corrupt" in name:
            (root / name).write_bytes(b"RIFF\x00garbage")
        rows.append({"file_name": name, "caption": "c", "domain": labels["domain"], "labels": labels,
                     "duration": 0.5, "sample_rate": SR, "seed": 0, "split": name.split("/")[0]})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_clean_corpus_report(tmp_path):
    report = corpus_stats(_corpus(tmp_path, problems=False), progress=False)
    assert "layout: soundsmith" in report
    assert "clips: 4   hours: 0.001" in report
    lines = [" ".join(line.split()) for line in report.splitlines()]
    assert "train 2 0.000" in lines and "valid 1 0.000" in lines and "test 1 0.000" in lines
    assert "music 2 0.000" in lines and "speech 2 0.000" in lines
    assert "labels of domain music (2 clips)" in report and "labels of domain speech (2 clips)" in report
    assert "piano 2 0.000" in lines and "waltz 2 0.000" in lines and "de 2 0.000" in lines
    assert "augmentation.noise.kind 2 0.000" not in lines and "pink 2 0.000" in lines
    assert any(line.startswith("tempo_bpm: min 96") for line in lines)
    assert "beats" not in report  # per-clip time lists are not label values
    assert report.rstrip().endswith("problems: none")


def test_problem_files_are_reported(tmp_path):
    report = corpus_stats(_corpus(tmp_path, problems=True), progress=False)
    lines = [" ".join(line.split()) for line in report.splitlines()]
    for kind in ("missing", "unreadable", "silent", "clipped"):
        assert any(line.startswith(f"{kind} 1 ") for line in lines), kind
    assert "train/missing.wav: line 8 of" in report
    assert "train/corrupt.wav: " in report and "train/silent.wav: RMS 0.0e+00" in report
    assert report.rstrip().endswith("problems: 1 missing, 1 unreadable, 1 silent, 1 clipped")
    # missing and unreadable files count with the duration the metadata claims
    assert "clips: 8" in report


def test_stats_reads_a_caption_csv(tmp_path):
    _write(tmp_path / "audio" / "Yabc.wav", _tone())
    (tmp_path / "t.csv").write_text("youtube_id,caption\nabc,a tone\n")
    report = corpus_stats(tmp_path / "t.csv", audio_dir=tmp_path / "audio", progress=False)
    assert "layout: csv" in report and "(none)" in report and "problems: none" in report


def test_cli_data_stats(tmp_path, capsys):
    assert main(["data", "stats", str(_corpus(tmp_path, problems=False))]) == 0
    assert "problems: none" in capsys.readouterr().out
    assert main(["data", "stats", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("soundsmith: error: data set not found") and "\n" not in err


def test_unknown_layout_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="unknown data set layout"):
        corpus_stats(tmp_path, progress=False)
