"""Beat-synchronous mixup (train/mixup.py): grids from labels and from the tracker, tempo partners, downbeats
of both clips on the same output frames (audio and latent), lambda ~ Beta(5, 5), and make_batch with mixup."""

import json

import numpy as np
import pytest
import torch
from ldm_helpers import tiny_clap, tiny_codec
from soundsmith.codecs.audio import write_audio
from soundsmith.train.mixup import (
    BeatGrid,
    MixupIndex,
    aligned_positions,
    audio_mixup,
    beats_from_labels,
    combine_captions,
    prepare_mixup,
    sample_lambda,
    tempo_partners,
    track_beats,
)
from soundsmith.train.train_unet import LatentCache, UNetTrainConfig, build_cache, load_parts, make_batch

SR = 16000
HOP = 160  # the mel hop: one output frame of the audio test


def grid(tempo: float, first_downbeat: float, seconds: float, beats_per_bar: int = 4) -> BeatGrid:
    period = 60.0 / tempo
    beats = tuple(first_downbeat % period + k * period for k in range(int(seconds / period) + 1)
                  if first_downbeat % period + k * period < seconds)
    downbeats = tuple(t for t in beats if abs(((t - first_downbeat) / (period * beats_per_bar)) % 1) < 1e-6
                      or abs(((t - first_downbeat) / (period * beats_per_bar)) % 1 - 1) < 1e-6)
    return BeatGrid(tempo, beats, downbeats, beats_per_bar)


def bursts(times: list[float], freq: float, seconds: float) -> np.ndarray:
    """20 ms tone bursts with a sharp attack at `times`: `[1, T]`."""
    t = np.arange(int(seconds * SR)) / SR
    wave = np.zeros_like(t)
    for start in times:
        on = (t >= start) & (t < start + 0.02)
        wave[on] += 0.5 * np.sin(2 * np.pi * freq * (t[on] - start)) * np.exp(-(t[on] - start) * 80)
    return wave[None].astype(np.float32)


def onset_frames(wave: np.ndarray, freq: float) -> np.ndarray:
    """Mel-hop frames where the band around `freq` switches on (first frame above half its peak)."""
    frames = wave.shape[-1] // HOP
    spec = np.abs(np.fft.rfft(wave[0, :frames * HOP].reshape(frames, HOP) * np.hanning(HOP), axis=1))
    k = int(round(freq * HOP / SR))
    env = spec[:, k - 1:k + 2].sum(1)
    on = env > 0.5 * env.max()
    return np.flatnonzero(on & ~np.concatenate([[False], on[:-1]]))


# --------------------------------------------------------------------------------------- grids, partners


def test_grids_from_labels_and_partners():
    labels = {"tempo_bpm": 120.0, "time_signature": "3/4", "beats": [0.25, 0.75, 1.25], "downbeats": [0.25]}
    g = beats_from_labels(labels)
    assert g == BeatGrid(120.0, (0.25, 0.75, 1.25), (0.25,), 3) and g.bar_s == pytest.approx(1.5)
    assert beats_from_labels({"domain": "sfx", "class": "rain"}) is None
    assert BeatGrid.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    st = g.stretched(1.25)
    assert st.tempo_bpm == 150.0 and st.downbeats == (0.2,) and st.bar_s == pytest.approx(1.2)

    grids = [grid(120, 0, 5), grid(124, 0, 5), grid(127, 0, 5), grid(121, 0, 5, 3), None, grid(40, 0, 5)]
    partners = tempo_partners(grids, [5.0] * 6, max_tempo_ratio=1.05)
    # 120-124 (3.3 %) pair, 120-127 (5.8 %) do not; 3/4 has no 3/4 partner; no grid / a bar longer than the clip: none
    assert partners == [[1], [0, 2], [1], [], [], []]
    with pytest.raises(ValueError, match="max_tempo_ratio must be >= 1"):
        tempo_partners(grids, [5.0] * 6, max_tempo_ratio=0.9)
    assert combine_captions("calm piano.", "a drum loop") == "calm piano, mixed with a drum loop"


def test_tracker_finds_tempo_and_downbeat():
    pytest.importorskip("librosa")
    # 4/4 at 120 bpm: a click on every beat, a bass drum (55 Hz, 200 ms) on each downbeat
    beats = [0.1 + 0.5 * k for k in range(12)]
    t = np.arange(int(0.2 * SR)) / SR
    kick = 0.8 * np.sin(2 * np.pi * 55 * t) * np.exp(-t * 15)
    wave = bursts(beats, 2000.0, 6.0) * 0.5
    for start in beats[::4]:
        wave[0, int(start * SR):int(start * SR) + kick.size] += kick
    g = track_beats(wave, SR)
    assert g is not None and g.tempo_bpm == pytest.approx(120, rel=0.03)
    assert min(abs(g.downbeats[0] - t) for t in beats[::4]) < 0.03  # the kicks' phase, not another beat
    rng = np.random.default_rng(0)
    assert track_beats(rng.standard_normal((1, 3 * SR)).astype(np.float32) * 0.1, SR) is None  # no steady beat


# ----------------------------------------------------------------------------------------- alignment


def test_aligned_positions_wrap_by_whole_bars():
    a, b = grid(120, 0.32, 5), grid(120, 1.0, 3)  # b: 75 frames at 25 Hz, one whole bar is 50 frames
    pos = aligned_positions(a, b, rate_hz=25, start=0, length=125, source_length=75)
    assert pos.shape == (125,) and pos.min() >= 0 and pos.max() < 75
    # every downbeat of a reads a downbeat of b (frame 25), wherever the window needed wrapping
    for t in a.downbeats:
        assert pos[round(t * 25)] == 25
    with pytest.raises(ValueError, match="shorter than one bar"):
        aligned_positions(a, b, rate_hz=25, start=0, length=10, source_length=40)


def test_audio_mixup_puts_both_downbeats_on_the_same_frames():
    seconds = 5.0
    ga = grid(120, 0.3, seconds)  # downbeats 0.3, 2.3, 4.3
    gb = grid(126, 0.9, seconds)  # close tempo, another phase: b is slowed by 5 % and shifted
    a = bursts(list(ga.downbeats), 1000.0, seconds)
    b = bursts(list(gb.downbeats), 3000.0, seconds)
    mix = audio_mixup(a, ga, b, gb, SR, 0.5)
    assert mix.wave.shape == a.shape and mix.rate == pytest.approx(120 / 126) and mix.grid == ga
    on_a, on_b = onset_frames(mix.wave, 1000.0), onset_frames(mix.wave, 3000.0)
    np.testing.assert_array_equal(on_a, onset_frames(a, 1000.0))  # a untouched
    expected = [round(t * SR / HOP) for t in ga.downbeats]
    assert len(on_b) >= 2
    for frame in on_b:  # each of b's downbeats lands on one of a's, within one hop
        assert min(abs(frame - e) for e in expected) <= 1, (on_b, expected)
    unaligned = onset_frames(0.5 * a + 0.5 * b, 3000.0)
    assert max(min(abs(f - e) for e in expected) for f in unaligned) > 5  # the test can fail


def test_lambda_is_beta_5_5():
    from scipy import stats

    g = torch.Generator().manual_seed(0)
    lams = np.array([sample_lambda(g) for _ in range(3000)])
    assert abs(lams.mean() - 0.5) < 0.01 and lams.var() == pytest.approx(1 / 44, rel=0.1)  # Beta(5,5): 1/(4*11)
    assert stats.kstest(lams, stats.beta(5, 5).cdf).pvalue > 0.01
    assert stats.kstest(lams, stats.beta(2, 2).cdf).pvalue < 1e-6  # another Beta is told apart
    again = torch.Generator().manual_seed(0)
    assert sample_lambda(again) == lams[0]  # reproducible from the generator


# -------------------------------------------------------------------------------- latent mixup, batches


def spike_cache() -> tuple[LatentCache, MixupIndex]:
    """Two 5 s clips of latent frames (25 Hz): clip 0 marks its downbeats in channel 0, clip 1 in channel 1."""
    g0, g1 = grid(120, 0.32, 5), grid(125, 1.0, 5)  # bars of 50 and 48 frames
    mean = torch.zeros(2, 250, 2)
    for t in g0.downbeats:
        mean[0, round(t * 25)] = 1.0
    for t in g1.downbeats:
        mean[1, 125 + round(t * 25)] = 1.0
    emb = torch.nn.functional.normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    cache = LatentCache(mean.half(), torch.zeros(2, 250, 2).half(), torch.tensor([0, 125, 250]), emb, emb.clone(),
                        torch.tensor([0, 1]), ["calm piano", "a drum loop"])
    return cache, MixupIndex("latent", [g0, g1], [[1], [0]], 25.0)


@pytest.mark.parametrize("crop", [125, 60])
def test_latent_mixup_aligns_downbeats(crop):
    cache, index = spike_cache()
    cfg = UNetTrainConfig(mixup="latent", mixup_prob=1.0, sample_posterior=False, cond_dropout=0.0, condition="audio")
    g = torch.Generator().manual_seed(1)
    for _ in range(5):  # random windows; any 60 frames hold one of clip 0's downbeats (bars of 50)
        z, mask, cond, texts = make_batch(cache, [0], crop, cfg, g, index)
        a, b = z[0, 0, :, 0].numpy(), z[0, 1, :, 0].numpy()  # clip 0's spikes, clip 1's stretched spikes
        own = np.flatnonzero(a > 0)  # clip 0's downbeats in the window, weighted by lambda
        peaks = [k for k in range(1, crop - 1) if b[k] > 0.3 * b.max() and b[k] >= b[k - 1] and b[k] >= b[k + 1]]
        assert own.size and peaks
        assert all(min(abs(p - w) for w in own) <= 1 for p in peaks), (peaks, own)  # within one latent frame
        lam = float(a.max())
        expected = torch.nn.functional.normalize(lam * cache.audio_emb[0] + (1 - lam) * cache.audio_emb[1], dim=0)
        assert torch.allclose(cond[0], expected, atol=1e-3) and 0.05 < lam < 0.95
        assert texts == [None] and mask.sum() == min(crop, 125)


def test_latent_mixup_text_condition_and_default_off():
    cache, index = spike_cache()
    cfg = UNetTrainConfig(mixup="latent", mixup_prob=1.0, cond_dropout=0.0, condition="text")
    _, _, cond, texts = make_batch(cache, [1], 40, cfg, torch.Generator().manual_seed(0), index)
    assert texts == ["a drum loop, mixed with calm piano"] and cond.norm() == pytest.approx(1.0, abs=1e-4)
    off = UNetTrainConfig(cond_dropout=0.0)
    assert off.mixup == "none"  # default: no mixup, batches exactly as before
    plain = make_batch(cache, [0, 1], 40, off, torch.Generator().manual_seed(3))
    with_index = make_batch(cache, [0, 1], 40, off, torch.Generator().manual_seed(3), index)
    assert all(torch.equal(x, y) for x, y in zip(plain[:3], with_index[:3])) and plain[3] == with_index[3]


def write_music_corpus(root, tempi=(178.0, 180.0, 183.0, 120.0), seconds=1.0):
    """Click-track 'music' clips (2/4) with our corpus's beat labels."""
    (root / "train").mkdir(parents=True)
    rows = []
    for i, tempo in enumerate(tempi):
        g = grid(tempo, 0.05 * (i + 1), seconds, beats_per_bar=2)
        wave = bursts(list(g.beats), 800.0 + 300 * i, seconds) + bursts(list(g.downbeats), 150.0, seconds)
        name = f"train/{i:06d}.wav"
        write_audio(root / name, wave, SR)
        rows.append({"file_name": name, "caption": f"clicks at {tempo:.0f} bpm", "domain": "music",
                     "labels": {"domain": "music", "tempo_bpm": tempo, "time_signature": "2/4",
                                "beats": list(g.beats), "downbeats": list(g.downbeats)},
                     "duration": seconds, "sample_rate": SR, "split": "train"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixparts")
    tiny_codec().save_pretrained(root / "codec")
    tiny_clap().save_pretrained(root / "clap", dtype=torch.float32)
    write_music_corpus(root / "corpus")
    return root


@pytest.mark.parametrize("mode", ["latent", "audio"])
def test_make_batch_with_mixup_on_a_tiny_cache(parts, tmp_path, mode):
    cfg = UNetTrainConfig(codec=str(parts / "codec"), clap=str(parts / "clap"), mixup=mode, mixup_prob=1.0,
                          cond_dropout=0.0, condition="text", mixup_pairs_per_clip=2)
    codec, conditioner = load_parts(cfg, "test")
    cache = build_cache(codec, conditioner, parts / "corpus", "train", tmp_path, captions_per_clip=1, seed=0)
    index = prepare_mixup(cfg, codec, conditioner, parts / "corpus", "train", tmp_path, cache)
    assert index.partners == [[1, 2], [0, 2], [0, 1], []]  # 120 bpm has no partner within 5 %
    assert (tmp_path / "train-beats.json").is_file()
    if mode == "audio":
        assert len(index.mixes) == 6 and [len(r) for r in index.mix_rows] == [2, 2, 2, 0]
        assert index.mixes.frames(0) == cache.frames(0)  # mixtures keep clip a's timeline
        assert all(", mixed with " in c for c in index.mixes.captions)
    g = torch.Generator().manual_seed(0)
    z, mask, cond, texts = make_batch(cache, [0, 1, 2, 3], 20, cfg, g, index)
    assert z.shape == (4, 4, 20, 4) and torch.isfinite(z).all() and mask[:, :cache.frames(0)].all()
    assert all(", mixed with " in t for t in texts[:3]) and ", mixed with " not in texts[3]  # clip 3: no partner
    assert cond.norm(dim=-1).allclose(torch.ones(4), atol=1e-3)
    plain = make_batch(cache, [0, 1, 2, 3], 20, UNetTrainConfig(**{**cfg.__dict__, "mixup": "none"}),
                       torch.Generator().manual_seed(0))
    assert not torch.equal(plain[0][:3], z[:3])  # the mixtures are not the clips as they are


def test_train_unet_with_latent_mixup(parts, tmp_path):
    from soundsmith.train.components import COMPONENTS
    from train_helpers import write_config

    config = write_config(tmp_path / "unet.json", {
        "codec": str(parts / "codec"), "clap": str(parts / "clap"), "max_steps": 1, "batch_size": 4,
        "crop_seconds": 0.32, "warmup_steps": 1, "log_every": 1, "eval_every": 1, "save_every": 1,
        "num_valid_batches": 1, "sample_prompts": [], "num_inference_steps": 2, "captions_per_clip": 1,
        "mixup": "latent", "mixup_prob": 1.0,
        "model": {"block_out_channels": [16, 32], "attention_levels": [False, True], "head_channels": 8,
                  "norm_num_groups": 8}})
    out = tmp_path / "run"
    COMPONENTS["unet"]()(config=config, data=parts / "corpus", out=out, resume=False, max_steps=None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in rows) and (out / "cache" / "train-beats.json").is_file()
    assert json.loads((out / "config.json").read_text())["mixup"] == "latent"
