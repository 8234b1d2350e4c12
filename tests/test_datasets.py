import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from soundsmith.train.datasets import AudioCaptionDataset, collate, detect_layout, read_records
from torch.utils.data import DataLoader


def _ramp(path: Path, seconds: float = 0.5, sr: int = 16000, channels: int = 1) -> Path:
    """A rising ramp (sample value tells the position) plus a tone in the second channel."""
    n = int(round(seconds * sr))
    ramp = np.linspace(0.0, 0.9, n, endpoint=False)
    data = np.stack([ramp, 0.5 * np.sin(np.arange(n) * 0.05)][:channels], axis=1)  # [T, C]
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = {".wav": "FLOAT", ".flac": "PCM_24", ".ogg": "VORBIS"}[path.suffix]
    sf.write(path, data, sr, subtype=subtype)
    return path


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Our layout: metadata.jsonl + split folders, 3 train / 1 valid / 1 test clips."""
    rows = []
    for i, split in enumerate(["train", "train", "train", "valid", "test"]):
        name = f"{split}/{i:06d}.wav"
        _ramp(tmp_path / name, seconds=0.5 + 0.25 * i)
        labels = {"domain": "sfx", "classes": ["rain"], "intensity": "light", "pitch": "low", "distance": "near",
                  "details": {}}
        rows.append({"file_name": name, "caption": f"clip {i}", "domain": "sfx", "labels": labels,
                     "duration": 0.5 + 0.25 * i, "sample_rate": 16000, "seed": i, "split": split})
    _jsonl(tmp_path / "metadata.jsonl", rows)
    return tmp_path


def test_our_layout_crops_and_splits(corpus):
    assert detect_layout(corpus) == "soundsmith"
    ds = AudioCaptionDataset(corpus, crop_seconds=0.25, random_crop=False, crop_anchor="start")
    assert len(ds) == 3 and ds.layout == "soundsmith"
    item = ds[1]
    assert item["wave"].shape == (1, 4000) and item["wave"].dtype == torch.float32
    assert item["caption"] == "clip 1" and item["labels"]["classes"] == ["rain"] and item["index"] == 1
    assert item["path"].endswith("train/000001.wav") and item["length"] == 4000
    assert abs(float(item["wave"][0, 0])) < 1e-6  # start crop: the ramp starts at 0
    centre = AudioCaptionDataset(corpus, crop_seconds=0.25, random_crop=False)[1]["wave"]  # 0.75 s clip
    assert float(centre[0, 0]) == pytest.approx(0.9 * 0.25 / 0.75, abs=1e-4)  # starts 0.25 s in
    assert len(AudioCaptionDataset(corpus, split="validation")) == 1
    assert len(AudioCaptionDataset(corpus, split=None)) == 5


def test_random_crops_are_seeded(corpus):
    ds = AudioCaptionDataset(corpus, crop_seconds=0.2, seed=3, split=None)
    a, b = ds[4]["wave"], ds[4]["wave"]
    assert torch.equal(a, b)  # same seed, epoch, index -> same crop
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        starts.add(round(float(ds[4]["wave"][0, 0]), 4))
    assert len(starts) > 3  # different epochs -> different crops
    other = AudioCaptionDataset(corpus, crop_seconds=0.2, seed=4, split=None)
    assert not torch.equal(other[4]["wave"], a)


def test_resample_channels_and_padding(tmp_path):
    _ramp(tmp_path / "a.wav", seconds=0.5, sr=22050, channels=2)
    _ramp(tmp_path / "b.wav", seconds=0.3, sr=8000, channels=1)
    _jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.wav", "caption": "stereo"},
                                         {"file_name": "b.wav", "caption": "short mono"}])
    mono = AudioCaptionDataset(tmp_path, crop_seconds=0.4, sample_rate=16000, split=None)
    assert mono[0]["wave"].shape == (1, 6400) and mono[0]["length"] == 6400
    short = mono[1]
    assert short["wave"].shape == (1, 6400) and short["length"] == 4800  # 0.3 s at 16 kHz, then zeros
    assert float(short["wave"][0, 4800:].abs().max()) == 0.0
    stereo = AudioCaptionDataset(tmp_path, crop_seconds=0.4, sample_rate=24000, channels=2, split=None)
    assert stereo[0]["wave"].shape == (2, 9600)
    dup = stereo[1]["wave"]
    assert torch.equal(dup[0], dup[1])  # mono file duplicated to stereo
    whole = AudioCaptionDataset(tmp_path, sample_rate=16000, split=None)  # crop_seconds=None: whole clips
    assert whole[0]["wave"].shape == (1, 8000) and whole[1]["wave"].shape == (1, 4800)
    batch = collate([whole[0], whole[1]])
    assert batch["wave"].shape == (2, 1, 8000) and batch["length"].tolist() == [8000, 4800]
    assert batch["caption"] == ["stereo", "short mono"] and batch["index"].tolist() == [0, 1]


def test_dataloader_with_workers(corpus):
    ds = AudioCaptionDataset(corpus, crop_seconds=0.2, split=None)
    batches = list(DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=2))
    again = list(DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=0))
    assert [b["wave"].shape for b in batches] == [(2, 1, 3200), (2, 1, 3200), (1, 1, 3200)]
    assert all(torch.equal(x["wave"], y["wave"]) for x, y in zip(batches, again))  # worker-independent


def test_hf_audiofolder_with_split_subfolders(tmp_path):
    _ramp(tmp_path / "train" / "x.wav")
    _ramp(tmp_path / "train" / "y.flac")
    _ramp(tmp_path / "validation" / "z.ogg")
    _csv(tmp_path / "train" / "metadata.csv", [{"file_name": "x.wav", "text": "a dog", "speaker": "s1"},
                                               {"file_name": "y.flac", "text": "a cat", "speaker": "s2"}])
    _jsonl(tmp_path / "validation" / "metadata.jsonl", [{"file_name": "z.ogg", "text": "a cow"}])
    assert detect_layout(tmp_path) == "audiofolder"
    train = AudioCaptionDataset(tmp_path, crop_seconds=0.1)
    assert len(train) == 2 and train[1]["caption"] == "a cat" and train[1]["labels"] == {"speaker": "s2"}
    valid = AudioCaptionDataset(tmp_path, split="valid", crop_seconds=0.1)
    assert [valid[0]["caption"]] == ["a cow"]


def test_hf_audiofolder_top_level_csv_without_splits(tmp_path):
    _ramp(tmp_path / "data" / "x.wav")
    _csv(tmp_path / "metadata.csv", [{"file_name": "data/x.wav", "caption": "rain on a roof"}])
    ds = AudioCaptionDataset(tmp_path, split="train")  # no split info: all clips, logged
    assert len(ds) == 1 and ds[0]["caption"] == "rain on a roof"


def test_audiocaps_csv(tmp_path):
    audio = tmp_path / "audio"
    _ramp(audio / "Yabc123.wav")
    _ramp(audio / "sub" / "Ydef456.wav")
    table = tmp_path / "train.csv"
    _csv(table, [{"audiocap_id": "91139", "youtube_id": "abc123", "start_time": "30", "caption": "a bell rings"},
                 {"audiocap_id": "58146", "youtube_id": "def456", "start_time": "0", "caption": "wind blows"}])
    assert detect_layout(table) == "csv"
    ds = AudioCaptionDataset(table, audio_dir=audio, crop_seconds=0.25, split=None)
    assert [ds[i]["caption"] for i in range(2)] == ["a bell rings", "wind blows"]
    assert ds[1]["path"].endswith("sub/Ydef456.wav")
    assert ds[0]["labels"] == {"audiocap_id": "91139", "start_time": "30"}


def test_clotho_csv_picks_one_of_five(tmp_path):
    _ramp(tmp_path / "development" / "birds at dawn.wav")
    table = tmp_path / "clotho_captions_development.csv"
    caps = {f"caption_{k}": f"caption number {k}" for k in range(1, 6)}
    _csv(table, [{"file_name": "birds at dawn.wav", **caps}])
    ds = AudioCaptionDataset(table, audio_dir=tmp_path / "development", crop_seconds=0.1, split=None)
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        seen.add(ds[0]["caption"])
    assert len(seen) > 2 and seen <= set(caps.values())
    assert ds[0]["labels"]["captions"] == list(caps.values())
    fixed = AudioCaptionDataset(table, audio_dir=tmp_path / "development", random_crop=False, split=None)
    assert fixed[0]["caption"] == "caption number 1"
    chosen = AudioCaptionDataset(table, audio_dir=tmp_path / "development", caption_column="caption_3", split=None)
    assert chosen[0]["caption"] == "caption number 3"


def test_redrawn_and_custom_captions(corpus):
    ds = AudioCaptionDataset(corpus, redraw_captions=True, crop_seconds=0.1)
    texts = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        texts.add(ds[0]["caption"])
    assert len(texts) > 1 and all(isinstance(t, str) and t for t in texts)
    custom = AudioCaptionDataset(corpus, caption_fn=lambda labels, rng: "+".join(labels["classes"]))
    assert custom[0]["caption"] == "rain"


def test_redraw_needs_labels(tmp_path):
    _ramp(tmp_path / "x.wav")
    _jsonl(tmp_path / "metadata.jsonl", [{"file_name": "x.wav", "caption": "c"}])
    with pytest.raises(ValueError, match="redraw_captions needs structured labels"):
        AudioCaptionDataset(tmp_path, redraw_captions=True)


# --------------------------------------------------------------------------------------- bad input


def test_missing_audio_file(corpus):
    (corpus / "train" / "000001.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"000001\.wav \(line 2 of .*metadata\.jsonl\)"):
        AudioCaptionDataset(corpus)
    assert len(AudioCaptionDataset(corpus, on_missing="skip")) == 2


def test_missing_audio_file_csv(tmp_path):
    _csv(tmp_path / "t.csv", [{"file_name": "nothere.wav", "caption": "c"}])
    with pytest.raises(FileNotFoundError, match=r"'nothere.wav' \(row 2 of .*t\.csv"):
        AudioCaptionDataset(tmp_path / "t.csv")


def test_corrupt_audio(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wave file")
    _jsonl(tmp_path / "metadata.jsonl", [{"file_name": "bad.wav", "caption": "c"}])
    ds = AudioCaptionDataset(tmp_path, crop_seconds=0.1)
    with pytest.raises(ValueError, match=r"bad\.wav: not a readable audio file"):
        ds[0]


def test_missing_caption_column(tmp_path):
    _ramp(tmp_path / "x.wav")
    _csv(tmp_path / "metadata.csv", [{"file_name": "x.wav", "label": "dog"}])
    with pytest.raises(ValueError, match=r"no caption column .*columns: file_name, label"):
        AudioCaptionDataset(tmp_path)
    with pytest.raises(ValueError, match=r"no caption column 'desc' \(columns: file_name, label\)"):
        AudioCaptionDataset(tmp_path, caption_column="desc")
    _csv(tmp_path / "t.csv", [{"ytid": "x", "label": "dog"}])
    with pytest.raises(ValueError, match=r"t\.csv: no caption column"):
        AudioCaptionDataset(tmp_path / "t.csv")


def test_missing_file_column(tmp_path):
    _csv(tmp_path / "t.csv", [{"name": "x", "caption": "dog"}])
    with pytest.raises(ValueError, match=r"no audio file column .*columns: name, caption"):
        AudioCaptionDataset(tmp_path / "t.csv")


def test_empty_data_set_and_empty_split(tmp_path, corpus):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty data set"):
        AudioCaptionDataset(empty)
    with pytest.raises(ValueError, match=r"no clips in split 'holdout' \(splits found: test 1, train 3, valid 1\)"):
        AudioCaptionDataset(corpus, split="holdout")


def test_unknown_layout_and_bad_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match="data set not found"):
        AudioCaptionDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown data set layout"):
        AudioCaptionDataset(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="unknown data set layout"):
        read_records(tmp_path / "notes.txt")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.wav", "caption": "x"}\n{oops\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl line 2: not valid JSON"):
        AudioCaptionDataset(tmp_path)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"channels": 3}, "channels must be 1"), ({"crop_seconds": 0}, "crop_seconds must be > 0"),
    ({"crop_anchor": "end"}, "crop_anchor"), ({"layout": "tar"}, "layout must be one of"),
    ({"on_missing": "ignore"}, "on_missing must be one of"), ({"sample_rate": -1}, "sample_rate"),
    ({"redraw_captions": True, "caption_fn": str}, "either redraw_captions"),
])
def test_bad_arguments(corpus, kwargs, match):
    with pytest.raises(ValueError, match=match):
        AudioCaptionDataset(corpus, **kwargs)
