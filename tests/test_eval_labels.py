"""Label classifier (eval/labels.py): the tempo profile, training on a tiny labelled corpus with a tiny
random CLAP, prediction, the folder round trip, refusing another CLAP, and the CLI."""

import json

import numpy as np
import pytest
import torch
from eval_helpers import CLASSES, SR, clip, write_corpus
from ldm_helpers import TINY_CLAP
from soundsmith.eval.labels import (
    DOMAIN_FAMILIES,
    LabelClassifier,
    LabelFeatures,
    LabelTrainConfig,
    format_label_report,
    tempo_profile,
    train_label_classifier,
)
from soundsmith.gen.clap import SoundsmithClap
from soundsmith.gen.text_encoder import SentenceEncoder

FAST = LabelTrainConfig(hidden=32, epochs=60, lr=1e-2)


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


@pytest.fixture(scope="module")
def clap(encoder):
    torch.manual_seed(0)
    return SoundsmithClap(TINY_CLAP, text_encoder=encoder).eval()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("labels") / "corpus")


@pytest.fixture(scope="module")
def trained(clap, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels") / "model"
    cache = tmp_path_factory.mktemp("cache")
    return train_label_classifier(corpus, out, clap=clap, cache_dir=cache, config=FAST, progress=False), out, cache


def bursts(bpm: float, seconds: float = 6.0) -> np.ndarray:
    """Decaying 30 ms noise bursts on every beat."""
    rng = np.random.default_rng(0)
    x = np.zeros(int(seconds * SR), dtype=np.float32)
    burst = 0.5 * rng.standard_normal(480) * np.exp(-np.arange(480) / 80)
    for t in np.arange(0, seconds - 0.05, 60.0 / bpm):
        x[int(t * SR):int(t * SR) + 480] += burst
    return x


def test_tempo_profile_finds_the_beat():
    from soundsmith.codecs.mel import MelConfig, MelSpectrogram

    mel = MelSpectrogram(MelConfig())
    bpms = np.geomspace(40, 240, 48)
    for bpm in (70.0, 93.0, 140.0):
        profile = tempo_profile(mel(torch.from_numpy(bursts(bpm))[None])[0].numpy(), 100.0)
        near = np.abs(np.log(bpms / bpm)) < 0.025  # the tempo's bin
        far = np.abs(np.log(bpms / (bpm * 1.5))) < 0.025  # 1.5x the tempo: off the beat grid
        assert profile[near].max() > 0.6 and profile[far].max() < 0.2, (bpm, profile.round(2))
    assert not tempo_profile(np.zeros((64, 500)), 100.0).any()  # silence
    assert not tempo_profile(np.random.rand(64, 100), 100.0).any()  # shorter than two slow beats


def test_training_learns_the_tiny_corpus(trained):
    clf, _, _ = trained
    report = clf.report
    assert report["clips"] == {"train": 24, "valid": 12, "test": 12}
    acc = report["test_accuracy"]
    for family in ("domain", "sfx_class", "instrument", "language"):
        assert acc[family]["accuracy"] == 1.0, (family, acc)
    assert acc["sfx_class"]["classes"] == 20 and acc["instrument"]["classes"] == 15  # the full vocabularies
    assert report["test_accuracy_gated"]["all"]["accuracy"] >= 0.9
    assert "sfx_class" in format_label_report(report)


def test_predict_and_logits(trained):
    clf, _, _ = trained
    for k, (domain, label) in enumerate(CLASSES):
        pred = clf.predict(clip(domain, label, 1000 + k), SR)
        assert pred["domain"] == domain
        assert set(pred) == {"domain", *DOMAIN_FAMILIES[domain]}
        family = DOMAIN_FAMILIES[domain][0]
        assert pred[family] == label
    logits = clf.logits(clip("sfx", "siren", 5), SR)
    assert logits.shape == (1, len(clf.class_names())) == (1, 3 + 20 + 15 + 6 + 3)
    # resampled input gives the same answer
    wave44 = clip("music", "violin", 7)
    from soundsmith.codecs.audio import resample

    assert clf.predict(resample(wave44, SR, 44100), 44100)["instrument"] == "violin"


def test_folder_round_trip(trained, clap):
    clf, folder, _ = trained
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert set(files) == {"config.json", "model.safetensors"} and sum(files.values()) < 3e6
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "soundsmith-labels" and config["features"]["clap_fingerprint"]
    assert config["report"]["test_accuracy"]["domain"]["accuracy"] == 1.0
    loaded = LabelClassifier.from_pretrained(folder, clap=clap)
    wave = clip("speech", "fr", 3)
    assert loaded.predict(wave, SR) == clf.predict(wave, SR)
    np.testing.assert_allclose(loaded.logits(wave, SR), clf.logits(wave, SR), atol=0.05)  # fp16 weights

    torch.manual_seed(1)
    other = SoundsmithClap(TINY_CLAP, text_encoder=clap.text_encoder).eval()
    with pytest.raises(ValueError, match="trained on the features of CLAP .* retrain it"):
        LabelClassifier.from_pretrained(folder, clap=other)


def test_features_are_cached(trained, clap, corpus):
    _, _, cache = trained
    entries = list(cache.glob("labelfeat-*/*/*.npy"))
    assert len(entries) == 48
    features = LabelFeatures(clap)
    path = corpus / "test" / "0036.wav"
    from soundsmith.codecs.audio import read_audio
    from soundsmith.eval.cache import file_hash

    wave, sr = read_audio(path)
    cached = np.load(next(cache.glob(f"labelfeat-*/*/{file_hash(path)}.npy")))
    np.testing.assert_allclose(cached, features([wave], sr)[0], rtol=1e-5, atol=1e-5)


def test_training_needs_labels(clap, tmp_path):
    (tmp_path / "c" / "train").mkdir(parents=True)
    (tmp_path / "c" / "metadata.jsonl").write_text(json.dumps({"file_name": "train/x.wav", "split": "train",
                                                               "labels": None}) + "\n")
    with pytest.raises(ValueError, match="no clips with corpus labels in split 'train'"):
        train_label_classifier(tmp_path / "c", None, clap=clap, cache_dir=tmp_path / "cache", config=FAST)


def test_cli_train_labels(corpus, clap, tmp_path, capsys):
    from soundsmith.cli import main

    clap.save_pretrained(tmp_path / "clap")
    assert main(["eval", "train-labels", "--data", str(corpus), "--out", str(tmp_path / "labels"),
                 "--clap", str(tmp_path / "clap"), "--cache-dir", str(tmp_path / "cache"), "--epochs", "30"]) == 0
    out = capsys.readouterr().out
    assert "domain" in out and "test" in out
    config = json.loads((tmp_path / "labels" / "config.json").read_text())
    assert config["features"]["clap"] == "../clap"  # found again wherever the two folders move together
    LabelClassifier.from_pretrained(tmp_path / "labels")  # loads its CLAP through that relative path
    assert main(["eval", "train-labels", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "data folder not found" in capsys.readouterr().err
