"""Corpus synthesis: determinism, resume after a kill, splits, metadata schema, argument checks, augmentation.

Most tests use the small fake renderers below (module-level, so spawned workers can import them);
one test runs the real music/sfx/speech renderers through the CLI.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from soundsmith.train.augment import AugmentConfig, augment, colored_noise
from soundsmith.train.synth import (
    CorpusSpec,
    clip_split,
    make_clip,
    num_clips_for_hours,
    read_spec,
    synthesize_corpus,
)

from soundsmith.cli import main

SR = 8000
ROW_FIELDS = {"file_name", "caption", "domain", "labels", "duration", "sample_rate", "seed", "split", "index"}


# --------------------------------------------------------------------------------------- fake renderers


def _tone(rng: np.random.Generator, duration_s: float, sample_rate: int) -> np.ndarray:
    if os.environ.get("SOUNDSMITH_TEST_SLOW_S"):  # lets the kill test land mid-run; no effect on the output
        time.sleep(float(os.environ["SOUNDSMITH_TEST_SLOW_S"]))
    t = np.arange(round(duration_s * sample_rate)) / sample_rate
    wave = rng.uniform(0.1, 0.9) * np.sin(2 * np.pi * rng.uniform(100, 1000) * t)
    return (wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def fake_music(rng, duration_s, sample_rate):
    return _tone(rng, duration_s, sample_rate), {
        "domain": "music", "instruments": ["piano", "drums"][: 1 + int(rng.integers(2))],
        "tempo_bpm": float(rng.integers(60, 160)), "key": "D", "mode": "minor", "time_signature": "3/4",
        "style": "waltz", "loudness": "soft", "beats": [0.0, 0.5], "downbeats": [0.0]}


def fake_sfx(rng, duration_s, sample_rate):
    return _tone(rng, duration_s, sample_rate), {
        "domain": "sfx", "classes": ["rain", "thunder"][: 1 + int(rng.integers(2))], "intensity": "heavy",
        "pitch": "low", "distance": ["near", "far"][int(rng.integers(2))], "details": {"drops_per_s": 40.0}}


def fake_speech(rng, duration_s, sample_rate):
    return _tone(rng, duration_s, sample_rate), {
        "domain": "speech", "language": "de", "language_name": "German", "voice": "female",
        "voice_variant": "f2", "rate_wpm": 150, "rate": "fast", "text": "Guten Tag."}


FAKES = {"music": fake_music, "sfx": fake_sfx, "speech": fake_speech}


def synth_fakes(out, num_clips=12, **kwargs):
    """The fake corpus every test uses (also called by the kill test's subprocess)."""
    args = dict(num_clips=num_clips, seed=3, clip_seconds=0.5, sample_rate=SR, renderers=FAKES, progress=False)
    return synthesize_corpus(out, **{**args, **kwargs})


def tree(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (hidden files included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------ synthesis


def test_same_arguments_same_bytes_and_schema(tmp_path):
    report = synth_fakes(tmp_path / "a")
    synth_fakes(tmp_path / "b")
    a = tree(tmp_path / "a")
    assert a == tree(tmp_path / "b")
    assert report.rendered == 12 and report.skipped == 0 and report.x_realtime > 0
    assert {"corpus.json", "metadata.jsonl"} <= set(a) and sum(k.endswith(".wav") for k in a) == 12

    meta = rows(tmp_path / "a")
    assert [r["index"] for r in meta] == list(range(12))
    for r in meta:
        assert set(r) == ROW_FIELDS
        assert r["file_name"] == f"{r['split']}/{r['index']:06d}.wav" and r["split"] == clip_split(3, r["index"])
        assert r["domain"] == r["labels"]["domain"] and r["caption"] and r["seed"] == 3
        assert r["duration"] == 0.5 and r["sample_rate"] == SR
        assert set(r["labels"]["augmentation"]) == {"reverb", "gain_db", "noise"}
        wave, sr = sf.read(tmp_path / "a" / r["file_name"], dtype="float32")
        assert sr == SR and wave.shape == (4000,) and sf.info(tmp_path / "a" / r["file_name"]).subtype == "PCM_16"
        assert np.abs(wave).max() <= 0.99 and np.sqrt(np.mean(wave**2)) > 1e-3
        # the per-clip row next to the WAV is the metadata row
        assert json.loads((tmp_path / "a" / r["file_name"]).with_suffix(".json").read_text()) == r
    spec = read_spec(tmp_path / "a")
    assert spec.num_clips == 12 and spec.seed == 3 and spec.renderers["sfx"] == "test_synth:fake_sfx"


def test_workers_do_not_change_the_output(tmp_path):
    synth_fakes(tmp_path / "one", num_clips=10, workers=1)
    synth_fakes(tmp_path / "two", num_clips=10, workers=2)
    assert tree(tmp_path / "one") == tree(tmp_path / "two")


def test_resume_after_kill_gives_the_uninterrupted_result(tmp_path):
    synth_fakes(tmp_path / "whole", num_clips=16)
    killed = tmp_path / "killed"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_synth; "
            f"test_synth.synth_fakes({str(killed)!r}, num_clips=16)")
    env = {**os.environ, "SOUNDSMITH_TEST_SLOW_S": "0.3"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(list(killed.glob("*/*.json"))) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "the run to kill ended early"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (killed / "metadata.jsonl").exists() and len(list(killed.glob("*/*.json"))) < 16
    (killed / "train" / ".000999.wav.x1y2.part").write_bytes(b"half a file")  # what a kill mid-write leaves

    report = synth_fakes(killed, num_clips=16)
    assert report.skipped >= 3 and report.rendered == 16 - report.skipped
    assert tree(killed) == tree(tmp_path / "whole")
    assert not list(killed.rglob("*.part"))


def test_rerun_of_a_finished_corpus_renders_nothing(tmp_path):
    synth_fakes(tmp_path, num_clips=4)
    before = tree(tmp_path)
    assert synth_fakes(tmp_path, num_clips=4).rendered == 0
    assert tree(tmp_path) == before


def test_other_arguments_into_the_same_folder_are_refused(tmp_path):
    synth_fakes(tmp_path, num_clips=4)
    with pytest.raises(ValueError, match=r"different arguments \(seed: 3 there, 4 now\)"):
        synth_fakes(tmp_path, num_clips=4, seed=4)
    with pytest.raises(ValueError, match="num_clips: 4 there, 5 now"):
        synth_fakes(tmp_path, num_clips=5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no corpus.json"):
        synth_fakes(tmp_path / "other", num_clips=4)


def test_splits_are_stable_and_clips_do_not_depend_on_the_corpus_size(tmp_path):
    splits = [clip_split(0, i) for i in range(20000)]
    shares = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert abs(shares["train"] - 0.8) < 0.01 and abs(shares["valid"] - 0.1) < 0.01
    assert clip_split(0, 7) == clip_split(0, 7) and splits != [clip_split(1, i) for i in range(20000)]
    synth_fakes(tmp_path / "small", num_clips=5)
    synth_fakes(tmp_path / "large", num_clips=9)
    small, large = tree(tmp_path / "small"), tree(tmp_path / "large")
    assert all(large[k] == v for k, v in small.items() if k.endswith((".wav", ".json")) and "/" in k)


def test_caption_style_changes_only_the_captions(tmp_path):
    synth_fakes(tmp_path / "train", num_clips=8)
    synth_fakes(tmp_path / "heldout", num_clips=8, caption_style="heldout")
    a, b = tree(tmp_path / "train"), tree(tmp_path / "heldout")
    assert {k: v for k, v in a.items() if k.endswith(".wav")} == {k: v for k, v in b.items() if k.endswith(".wav")}
    caps_a = [r["caption"] for r in rows(tmp_path / "train")]
    caps_b = [r["caption"] for r in rows(tmp_path / "heldout")]
    assert all(x != y for x, y in zip(caps_a, caps_b))


def test_domains_follow_the_request(tmp_path):
    synth_fakes(tmp_path, num_clips=8, domains=("sfx",))
    assert {r["domain"] for r in rows(tmp_path)} == {"sfx"}


@pytest.mark.parametrize("kwargs,needle", [
    ({"num_clips": None}, "exactly one of num_clips or hours"),
    ({"hours": 1.0}, "exactly one of num_clips or hours"),
    ({"num_clips": 0}, "num_clips must be an integer >= 1"),
    ({"seed": -1}, "seed must be an integer in [0, 2**63-1]"),
    ({"clip_seconds": 0.1}, "clip_seconds must be in [0.5, 60.0]"),
    ({"sample_rate": 100}, "sample_rate must be an integer in [8000, 48000]"),
    ({"domains": ("music", "noise")}, "domains must be a non-empty list"),
    ({"caption_style": "fancy"}, "caption_style must be one of train, heldout, all"),
    ({"workers": 0}, "workers must be an integer >= 1"),
])
def test_bad_arguments_raise_one_line_errors(tmp_path, kwargs, needle):
    with pytest.raises(ValueError) as err:
        synth_fakes(tmp_path, **{"num_clips": 2, **kwargs})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_hours_give_whole_clips():
    assert num_clips_for_hours(4, 5.0) == 2880
    assert num_clips_for_hours(0.001, 0.5) == 8  # 7.2 clips -> 8
    assert num_clips_for_hours(1, 3.0) == 1200


def bad_silent(rng, duration_s, sample_rate):
    return np.zeros(round(duration_s * sample_rate), np.float32), {"domain": "sfx", "classes": ["rain"]}


def test_a_broken_renderer_is_named(tmp_path):
    with pytest.raises(RuntimeError, match=r"clip 0 of seed 3 failed: .*test_synth:bad_silent .*silent wave"):
        synth_fakes(tmp_path, num_clips=2, domains=("sfx",), renderers={"sfx": bad_silent})


def test_make_clip_is_pure():
    spec = CorpusSpec(num_clips=3, seed=5, clip_seconds=0.5, sample_rate=SR, domains=("music", "sfx", "speech"),
                      caption_style="train", renderers={d: f"test_synth:fake_{d}" for d in FAKES})
    w1, r1 = make_clip(2, spec, FAKES)
    w2, r2 = make_clip(2, spec, FAKES)
    assert np.array_equal(w1, w2) and r1 == r2 and w1.dtype == np.float32


def test_real_renderers_cover_all_domains_through_the_cli(tmp_path, capsys):
    for module in ("music", "sfx", "speech"):
        pytest.importorskip(f"soundsmith.train.{module}")
    out = tmp_path / "corpus"
    assert main(["data", "synth", "--out", str(out), "--num-clips", "60", "--clip-seconds", "1", "--seed", "0"]) == 0
    assert "x real time" in capsys.readouterr().out
    meta = rows(out)
    assert len(meta) == 60 and {r["domain"] for r in meta} == {"music", "sfx", "speech"}
    for r in meta:
        wave, sr = sf.read(out / r["file_name"], dtype="float32")
        assert sr == 16000 and wave.shape == (16000,), r["file_name"]
        assert np.sqrt(np.mean(wave**2)) > 1e-3 and np.abs(wave).max() <= 0.99, r["file_name"]


# --------------------------------------------------------------------------------------- augmentation


def test_augment_never_clips_nor_silences_and_records_what_it_did():
    rng = np.random.default_rng(0)
    loud = np.clip(rng.standard_normal(SR), -1, 1).astype(np.float32)
    quiet = (1.2e-3 * np.sin(np.arange(SR) / 5)).astype(np.float32)
    for seed in range(40):
        for wave in (loud, quiet):
            out, rec = augment(wave, SR, np.random.default_rng(seed))
            assert out.dtype == np.float32 and out.shape == wave.shape
            assert np.abs(out).max() <= 0.989 + 1e-6 and np.sqrt(np.mean(out.astype(np.float64) ** 2)) >= 1.9e-3
            assert set(rec) == {"reverb", "gain_db", "noise"} and isinstance(rec["gain_db"], float)
            assert rec["reverb"] is None or set(rec["reverb"]) == {"room_size", "wet", "damping"}
            assert rec["noise"] is None or rec["noise"]["kind"] in ("white", "pink", "brown")
            json.dumps(rec)
    a, rec_a = augment(loud, SR, np.random.default_rng(7))
    b, rec_b = augment(loud, SR, np.random.default_rng(7))
    assert np.array_equal(a, b) and rec_a == rec_b


def test_augment_noise_is_at_the_recorded_snr():
    cfg = AugmentConfig(p_reverb=0.0, p_reverb_far=0.0, p_noise=1.0, gain_db=(0.0, 0.0))
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)
    out, rec = augment(wave, SR, np.random.default_rng(1), config=cfg)
    assert rec["reverb"] is None and rec["gain_db"] == 0.0
    snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean((out - wave).astype(np.float64) ** 2))
    assert abs(snr - rec["noise"]["snr_db"]) < 0.1


def test_far_clips_get_reverb_more_often():
    wave = (0.3 * np.sin(np.arange(SR) / 3)).astype(np.float32)
    near = sum(augment(wave, SR, np.random.default_rng(s))[1]["reverb"] is not None for s in range(200))
    far = sum(augment(wave, SR, np.random.default_rng(s), far=True)[1]["reverb"] is not None for s in range(200))
    assert far > near + 40


@pytest.mark.parametrize("kind,slope", [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_colored_noise_has_the_right_spectral_slope(kind, slope):
    noise = colored_noise(kind, 2**16, np.random.default_rng(0)).astype(np.float64)
    assert abs(np.sqrt(np.mean(noise**2)) - 1) < 1e-3
    power = np.abs(np.fft.rfft(noise)) ** 2
    f = np.arange(len(power))
    band = (f > 50) & (f < 20000)
    fitted = np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]
    assert abs(fitted - slope) < 0.1


# ---------------------------------------------------------------------------------------- prompt sets


def test_adherence_prompts_cover_every_class_in_heldout_wording():
    for module in ("music", "sfx", "speech"):
        pytest.importorskip(f"soundsmith.train.{module}")
    from soundsmith.core.captions import label_terms
    from soundsmith.train import music, sfx, speech
    from soundsmith.train.prompt_sets import adherence_prompts

    prompts = adherence_prompts(np.random.default_rng(0))
    assert prompts == adherence_prompts(np.random.default_rng(0))
    assert len(prompts) == 2 * len(sfx.SFX_CLASSES) + len(music.INSTRUMENTS) + len(speech.LANGUAGES)
    by_label = {}
    for p in prompts:
        assert set(p) == {"prompt", "domain", "label"}
        assert any(t in p["prompt"].lower() for t in label_terms(p["domain"], p["label"])), p
        by_label.setdefault((p["domain"], p["label"]), []).append(p["prompt"])
    assert all(len(set(by_label["sfx", c])) == 2 for c in sfx.SFX_CLASSES)
    assert {label for d, label in by_label if d == "music"} == set(music.INSTRUMENTS)
    assert {label for d, label in by_label if d == "speech"} == set(speech.LANGUAGES)


def test_corpus_test_prompts_come_from_the_test_split(tmp_path):
    from soundsmith.train.prompt_sets import corpus_test_prompts, write_prompt_sets

    synth_fakes(tmp_path / "c", num_clips=40)
    picked = corpus_test_prompts(tmp_path / "c", np.random.default_rng(0), n=3)
    assert len(picked) == 3 and [p["index"] for p in picked] == sorted(p["index"] for p in picked)
    by_index = {r["index"]: r for r in rows(tmp_path / "c")}
    for p in picked:
        row = by_index[p["index"]]
        assert row["split"] == "test" and p["prompt"] == row["caption"] and p["file_name"] == row["file_name"]
        assert (tmp_path / "c" / p["file_name"]).is_file() and "beats" not in p["labels"]
    with pytest.raises(ValueError, match="test-split clips; 200 are needed"):
        write_prompt_sets(tmp_path / "c", tmp_path / "prompts")
    with pytest.raises(FileNotFoundError, match="no metadata.jsonl"):
        write_prompt_sets(tmp_path / "nothing", tmp_path / "prompts")
