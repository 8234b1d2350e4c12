"""benchmarks/finetune.py's pieces that run without a model (the marimba renderer, the similarity measures, the
spectrogram axis) and benchmarks/adherence.py's --adapter options. The whole benchmark is run by hand
(`python benchmarks/finetune.py --out runs/finetune-quick --quick` for a smoke run)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def finetune():
    return load("finetune")


def test_marimba_is_new_to_the_corpus_and_rendered_reproducibly(finetune):
    pytest.importorskip("tinysoundfont")
    from soundsmith.core.vocabulary import INSTRUMENTS
    from soundsmith.train import music

    assert finetune.WORD not in INSTRUMENTS
    assert finetune.PROGRAM not in {p for ps in music.PROGRAMS.values() for p in ps}
    assert all(finetune.WORD in c for c in finetune.CAPTIONS) and all(finetune.WORD in p for p in finetune.PROMPTS)
    assert not set(finetune.PROMPTS) & set(finetune.CAPTIONS)
    a, info = finetune.render_clip(5, 16_000)
    b, _ = finetune.render_clip(5, 16_000)
    c, _ = finetune.render_clip(6, 16_000)
    assert a.shape == (80_000,) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0 < np.abs(a).max() <= 0.99 and {"style", "bpm", "key", "mode", "role"} <= set(info)
    assert finetune.CAPTIONS[0].format(**info)  # every caption field comes from the piece


def test_similarity_counts_clips_nearer_the_new_set(finetune):
    rng = np.random.default_rng(0)
    new, other = np.eye(8)[0], np.eye(8)[1]
    near_new = new + 0.1 * rng.standard_normal((10, 8))
    near_other = other + 0.1 * rng.standard_normal((10, 8))
    s = finetune.similarity(near_new, new, other[None], ["music: piano"])
    assert s["share_nearer_new"] == 1.0 and s["cos_new"] > 0.9 > s["cos_nearest_class"]
    s = finetune.similarity(near_other, new, other[None], ["music: piano"])
    assert s["share_nearer_new"] == 0.0 and s["nearest_classes"] == ["music: piano (10)"]


def test_measure_reports_every_set_and_drops_thin_classes(finetune):
    rng = np.random.default_rng(1)

    def feats(center, n):
        x = center + 0.2 * rng.standard_normal((n, 16))
        return {"clap": x.astype(np.float32), "hand": x.astype(np.float32), "windows": np.repeat(x, 2, 0)}

    new, piano, rain = np.eye(16)[0] * 3, np.eye(16)[1] * 3, np.eye(16)[2] * 3
    corpus = {k: np.concatenate([feats(piano, 6)[k], feats(rain, 6)[k], feats(rain, 2)[k]])
              for k in ("clap", "hand", "windows")}
    classes = [["music: piano"]] * 6 + [["sfx: rain"]] * 6 + [["sfx: bell"]] * 2
    m = finetune.measure({"adapted": feats(new, 12), "base": feats(piano, 12)}, feats(new, 12), corpus, classes)
    assert m["classes_dropped"] == ["sfx: bell"] and set(m["classes"]) == {"music: piano", "sfx: rain"}
    for space in ("clap", "hand"):
        assert m[space]["adapted"]["share_nearer_new"] > m[space]["base"]["share_nearer_new"]
        assert m[space]["held-back (LOO)"]["n"] == 12
    assert m["fad_clap"]["adapted"] < m["fad_clap"]["base"] and m["fd_hand"]["adapted"] < m["fd_hand"]["base"]


def test_mel_axis_ticks(finetune):
    pos = [finetune.mel_position(f, 64) for f in finetune.TICKS_HZ]
    assert pos == sorted(pos) and pos[-1] == 64.0 and 0 < pos[0]
    mel_8k = 15 + np.log(8) / (np.log(6.4) / 27)  # Slaney: 15 mel at 1 kHz, 27 mel per factor 6.4 above
    assert finetune.mel_position(1000, 64) == pytest.approx(65 * 15 / mel_8k - 0.5)


def test_adherence_adapter_options_are_checked(tmp_path):
    adherence = load("adherence")
    with pytest.raises(SystemExit):
        adherence.main(["--adapter-scale", "0.5"])
    with pytest.raises(SystemExit):
        adherence.main(["--adapter", str(tmp_path), "--from-clips", str(tmp_path)])
