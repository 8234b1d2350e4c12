"""CLAP metrics (eval/clap_metrics.py): the maths on hand-checked cases, and the whole report on a tiny
labelled corpus with an oracle CLAP whose answers are known (perfect, then deliberately wrong)."""

import json

import numpy as np
import pytest
import torch
from soundsmith.codecs.audio import write_audio
from soundsmith.core.captions import caption, label_terms
from soundsmith.core.vocabulary import tempo_band
from soundsmith.eval.clap_metrics import (
    average_precision,
    clap_metrics_dict,
    format_report,
    label_key,
    relevance,
    retrieval_metrics,
    swapped_labels,
    zero_shot_accuracy,
)
from soundsmith.gen.clap import ClapBase

CLASSES = ("siren", "dog barking", "glass breaking", "applause")  # distinct words in every template
FREQS = (300.0, 700.0, 1500.0, 3100.0)  # the oracle tells the classes apart by a tone
SR = 16000


def test_average_precision():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert average_precision(scores, torch.tensor([True, False, True, False])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, torch.tensor([False, False, False, True])) == pytest.approx(0.25)
    assert average_precision(scores, torch.zeros(4, dtype=torch.bool)) == 0.0


def test_retrieval_metrics_by_hand():
    items = torch.eye(3)  # clip i = axis i; query i belongs to clip i
    # q0 ranks clip 0 first; q1 ranks clip 2, then clips 0 and 1 tied (stable: 0 first) -> its clip at rank 3;
    # q2 ranks clip 2 (0.8) before clip 1 (0.6)
    queries = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.6, 0.8]])
    rel = torch.eye(3, dtype=torch.bool)
    m = retrieval_metrics(queries, items, rel, ks=(1, 2, 3))
    assert m["R@1"] == pytest.approx(2 / 3) and m["R@2"] == pytest.approx(2 / 3) and m["R@3"] == 1.0
    assert m["mAP"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    keys = [("sfx", ("rain",)), ("sfx", ("rain",)), ("speech", "de", "male")]
    assert relevance(keys, keys).tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_zero_shot_accuracy_shared_and_per_clip_prompts():
    audio = torch.eye(3)
    shared = torch.eye(3)[[1, 0, 2]]  # prompt 0 points at clip 1's axis
    assert zero_shot_accuracy(audio, shared, [[1], [0], [0, 2]]) == pytest.approx(1.0)
    assert zero_shot_accuracy(audio, shared, [[0], [1], [1]]) == pytest.approx(0.0)
    per_clip = torch.stack([shared] * 3)  # [N, K, D]
    assert zero_shot_accuracy(audio, per_clip, [[1], [0], [2]]) == pytest.approx(1.0)


def test_labels_keys_and_swaps():
    music = {"domain": "music", "instruments": ["piano", "bass"], "tempo_bpm": 90.0, "key": "C", "mode": "major",
             "time_signature": "4/4", "style": "waltz", "loudness": "soft"}
    assert label_key(music) == label_key({**music, "instruments": ["bass", "piano"], "tempo_bpm": 140.0})
    assert label_key(music) != label_key({**music, "style": "march"})
    assert tempo_band(90.0) == "moderate" and tempo_band(60.0) == "slow" and tempo_band(150.0) == "fast"
    for band in ("slow", "moderate", "fast"):
        assert tempo_band(swapped_labels(music, "tempo", band)["tempo_bpm"]) == band
    # a swap changes only the class words: same seed, same template
    a = caption(swapped_labels(music, "instrument", "flute"), np.random.default_rng([0, 3, 1]))
    b = caption(swapped_labels(music, "instrument", "organ"), np.random.default_rng([0, 3, 1]))
    assert "flute" in a and "organ" in b and a.replace("flute", "X") == b.replace("organ", "X")


# ------------------------------------------------------------------------------ the whole report


def write_sfx_corpus(root, per_class: int = 3, seconds: float = 1.0):
    """A labelled test split: per class, tones at the class frequency (sfx labels as the corpus writes them)."""
    (root / "test").mkdir(parents=True)
    rows, t = [], np.arange(int(seconds * SR)) / SR
    for k, (cls, f0) in enumerate(zip(CLASSES, FREQS)):
        for j in range(per_class):
            name = f"test/{k:02d}{j:02d}.wav"
            write_audio(root / name, (0.3 * np.sin(2 * np.pi * f0 * (1 + 0.01 * j) * t))[None].astype(np.float32), SR)
            labels = {"domain": "sfx", "classes": [cls], "intensity": "moderate", "pitch": "medium", "distance": "near"}
            rows.append({"file_name": name, "caption": cls, "domain": "sfx", "labels": labels, "duration": seconds,
                         "sample_rate": SR, "seed": 0, "split": "test"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


class OracleClap(ClapBase):
    """Audio -> one-hot of the class whose tone is loudest; text -> one-hot of the class named in it.
    `wrong=True` shifts the audio answer by one class."""

    def __init__(self, wrong: bool = False):
        super().__init__()
        self.sample_rate, self.dim, self.wrong = SR, len(CLASSES), wrong
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def embed_text(self, texts, *, batch_size=64):
        out = torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            for k, cls in enumerate(CLASSES):
                if any(term in text.lower() for term in label_terms("sfx", cls)):
                    out[i, k] = 1.0
        return torch.nn.functional.normalize(out, dim=-1)

    def embed_audio(self, wave, sample_rate, *, batch_size=32):
        wave = np.asarray(wave)[:, 0]  # [B, T]
        spectrum = np.abs(np.fft.rfft(wave, axis=-1))
        freqs = np.fft.rfftfreq(wave.shape[-1], 1 / sample_rate)
        energy = np.stack([spectrum[:, np.abs(freqs - f) < 0.05 * f].sum(-1) for f in FREQS], 1)  # [B, K]
        best = (energy.argmax(1) + (1 if self.wrong else 0)) % self.dim
        return torch.eye(self.dim)[best]


def test_report_with_an_oracle(tmp_path):
    corpus = write_sfx_corpus(tmp_path / "corpus")
    r = clap_metrics_dict("oracle", corpus, model=OracleClap())
    assert r["clips"] == 12
    for style in ("train", "heldout"):
        for direction in ("t2a", "a2t"):
            assert r["retrieval"][style][direction]["R@1"] == 1.0 and r["retrieval"][style][direction]["mAP"] == 1.0
    zs = r["zero_shot"]["sfx_class"]
    assert zs["clips"] == 12 and zs["classes"] == 20
    assert zs["canonical"] == zs["train"] == zs["heldout"] == 1.0
    text = format_report(r)
    assert "zero-shot sfx_class (in-template)" in text and "reached" in text

    bad = clap_metrics_dict("oracle", corpus, model=OracleClap(wrong=True))
    assert bad["retrieval"]["train"]["t2a"]["R@1"] == 0.0 and bad["zero_shot"]["sfx_class"]["train"] == 0.0
    assert "MISSED" in format_report(bad)


def test_report_needs_labels(tmp_path):
    corpus = write_sfx_corpus(tmp_path / "corpus")
    rows = [json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines()]
    (corpus / "metadata.jsonl").write_text("".join(json.dumps({**r, "labels": None}) + "\n" for r in rows))
    with pytest.raises(ValueError, match="no clips with structured labels"):
        clap_metrics_dict("oracle", corpus, model=OracleClap())
    with pytest.raises(ValueError, match="no clips in split 'valid'"):
        clap_metrics_dict("oracle", corpus, split="valid", model=OracleClap())


def test_cli_eval_clap(tmp_path, capsys):
    from soundsmith.gen.clap import ClapConfig, SoundsmithClap

    from soundsmith.cli import main

    corpus = write_sfx_corpus(tmp_path / "corpus", per_class=1)
    tiny = ClapConfig(embed_dim=16, stem_channels=4, conv_channels=(8,), frame_dim=8, temporal_dilations=(),
                      projection_hidden=16)
    SoundsmithClap(tiny).save_pretrained(tmp_path / "clap")
    assert main(["eval", "clap", "--model", str(tmp_path / "clap"), "--data", str(corpus), "--num-clips", "3"]) == 0
    out = capsys.readouterr().out
    assert "CLAP metrics" in out and "text->audio" in out and "sfx_class" in out and "3 clips" in out
    assert main(["eval", "clap", "--model", str(tmp_path / "missing"), "--data", str(corpus)]) == 2
    assert "no config.json" in capsys.readouterr().err
