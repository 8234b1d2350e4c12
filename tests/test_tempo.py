"""Tempo conditioning (gen/tempo.py): features, the prompt reader, the conditioner, the grown UNet, the pipeline
folder round trip, the UNet trainer's tempo batches, and `soundsmith train tempo-reader` on a tiny corpus."""

import json

import numpy as np
import pytest
import torch
from ldm_helpers import tiny_pipeline
from soundsmith.codecs.audio import write_audio
from soundsmith.gen.tempo import (
    TEMPO_DIM,
    TempoConditioner,
    TempoReader,
    TempoReaderConfig,
    grow_unet_for_tempo,
    parse_bpm,
    tempo_band,
    tempo_features,
    word_band,
)
from soundsmith.pipelines import load_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_features_flag_and_bumps():
    f = tempo_features([None, 60.0, 61.0, 180.0, 10.0, 40.0])
    assert f.shape == (6, TEMPO_DIM) and f[0].abs().sum() == 0  # no tempo: zeros, the unconditional input
    assert torch.all(f[1:, 0] == 1.0)
    assert (f[1] - f[2]).norm() < 0.2 < 1.0 < (f[1] - f[3]).norm()  # near tempi, near features
    assert int(f[1, 1:].argmax()) < int(f[3, 1:].argmax())  # the bump moves up with the tempo
    assert torch.equal(f[4], f[5])  # clamped to the range's edge


@pytest.mark.parametrize("text, bpm", [("jazz at 96 bpm", 96.0), ("a march, 120-bpm", 120.0),
                                       ("at 140 beats per minute", 140.0), ("tempo: 111 BPM; key: C", 111.0),
                                       ("72.5 b.p.m. ballad", 72.5), ("1200 bpm", None), ("5 bpm", None),
                                       ("a dog barking", None), ("999 bpm", None)])
def test_parse_bpm(text, bpm):
    assert parse_bpm(text) == bpm


@pytest.mark.parametrize("text, band", [("a lively jig", "fast"), ("an Uptempo dance track", "fast"),
                                        ("a laid-back groove", "slow"), ("adagio for strings", "slow"),
                                        ("at a mid-tempo pace", "moderate"), ("moderately loud piano", None),
                                        ("medium-volume organ", None), ("slow intro, then fast", "slow"),
                                        ("steadfast hymn", None)])
def test_word_band(text, band):
    assert word_band(text) == band


def test_bands():
    assert [tempo_band(b) for b in (60, 84.9, 85, 119, 120, 200)] == ["slow"] * 2 + ["moderate"] * 2 + ["fast"] * 2


def _reader(dim: int = 8) -> TempoReader:
    """P(music) = sigmoid(10 * e[0]): embeddings with a positive first coordinate are music prompts."""
    weight = torch.zeros(dim)
    weight[0] = 10.0
    return TempoReader(weight, torch.tensor(0.0), TempoReaderConfig(dim=dim))


def test_reader_gates_words_by_music_and_takes_figures_always(tmp_path):
    reader = _reader()
    music, other = torch.zeros(8), torch.zeros(8)
    music[0], other[0] = 1.0, -1.0
    texts = ["a fast reel", "speaking fast", "a reel", "a 90 bpm click"]
    got = reader.read(texts, torch.stack([music, other, music, other]))
    assert got == [reader.config.band_bpm["fast"], None, None, 90.0]

    again = TempoReader.from_pretrained(reader.save_pretrained(tmp_path / "tempo"))
    assert torch.equal(again.weight, reader.weight) and again.config == reader.config
    (tmp_path / "tempo" / "config.json").write_text(json.dumps({"kind": "other"}))
    with pytest.raises(ValueError, match="not a tempo reader config"):
        TempoReader.from_pretrained(tmp_path / "tempo")
    with pytest.raises(FileNotFoundError, match="not a tempo reader folder"):
        TempoReader.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="do not match"):
        TempoReader(torch.zeros(4, 8), torch.tensor(0.0), TempoReaderConfig(dim=8))


def _tempo_pipeline():
    pipe = tiny_pipeline()
    reader = _reader(pipe.conditioner.dim)
    reader.weight.zero_()
    reader.bias.fill_(10.0)  # every prompt is music: the words decide
    pipe.conditioner = TempoConditioner(pipe.conditioner, reader)
    pipe.unet = grow_unet_for_tempo(pipe.unet).eval()
    return pipe


def test_conditioner_appends_tempo_features():
    pipe = _tempo_pipeline()
    c = pipe.conditioner
    emb = c.embed_prompts(["a slow waltz", None, "a tone", "a waltz at 150 bpm"])
    d = c.inner.dim
    assert c.dim == d + TEMPO_DIM and emb.shape == (4, d + TEMPO_DIM)
    assert torch.allclose(emb[:, d:], tempo_features([c.reader.config.band_bpm["slow"], None, None, 150.0]))
    assert torch.equal(emb[:, :d], c.inner.embed_prompts(["a slow waltz", None, "a tone", "a waltz at 150 bpm"]))
    assert c.null_embedding(2).shape == (2, d + TEMPO_DIM) and c.null_embedding(2)[:, d:].abs().sum() == 0
    assert c.fingerprint() == c.inner.fingerprint()  # the CLAP's: what a UNet records as trained with
    with pytest.raises(ValueError, match="reads 3-d embeddings"):
        TempoConditioner(c.inner, _reader(3))


def test_grown_unet_computes_what_it_did_until_trained():
    pipe = tiny_pipeline()
    unet = pipe.unet
    grown = grow_unet_for_tempo(unet).eval()
    assert grown.config.projection_class_embeddings_input_dim == unet.config.projection_class_embeddings_input_dim + 16
    x, t, cond = torch.randn(2, 4, 8, 4), torch.tensor(300), torch.randn(2, pipe.conditioner.dim)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=None, class_labels=cond).sample
        after = grown(x, t, encoder_hidden_states=None, class_labels=torch.cat([cond, tempo_features([90.0, None])], 1)
                      ).sample
    assert torch.allclose(before, after, atol=1e-6)


def test_pipeline_records_tempo_and_round_trips(tmp_path):
    pipe = _tempo_pipeline()
    out = pipe(["a fast reel", "a tone"], duration_s=0.5, seed=0, watermark=False, loudness_lufs=None)
    assert out.parameters["tempo_bpm"] == [pipe.conditioner.reader.config.band_bpm["fast"], None]
    folder = pipe.save_pretrained(tmp_path / "model")
    assert json.loads((folder / "config.json").read_text())["components"]["tempo"] == "tempo"
    loaded = load_pipeline(folder)
    loaded.progress_bar = False
    assert isinstance(loaded.conditioner, TempoConditioner)
    again = loaded(["a fast reel", "a tone"], duration_s=0.5, seed=0, watermark=False, loudness_lufs=None)
    assert torch.allclose(again.audios, out.audios, atol=1e-4)
    (folder / "tempo" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="part 'tempo'"):
        load_pipeline(folder)


# ------------------------------------------------------------------------------------------- training


MUSIC = {"domain": "music", "instruments": ["piano"], "key": "C", "mode": "major", "time_signature": "4/4",
         "style": "ballad", "loudness": "soft"}
SFX = {"domain": "sfx", "classes": ["dog"], "intensity": "moderate", "pitch": "medium", "distance": "near"}
SPEECH = {"domain": "speech", "language": "en-us", "language_name": "English", "voice": "female", "rate": "fast",
          "rate_wpm": 200}


def write_labelled_corpus(root, tempi=(60, 70, 95, 110, 130, 150)):
    """Music clips at `tempi` plus sound effects and speech, in the corpus's metadata layout."""
    rows, sr = [], 16000
    items = [dict(MUSIC, tempo_bpm=float(b)) for b in tempi] + [SFX] * 3 + [SPEECH] * 3
    for split in ("train", "valid"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, labels in enumerate(items):
            name = f"{split}/{i:06d}.wav"
            write_audio(root / name, (0.1 * np.random.default_rng(i).standard_normal((1, sr // 2))).astype(np.float32),
                        sr)
            rows.append({"file_name": name, "caption": f"clip {i}", "domain": labels["domain"], "labels": labels,
                         "duration": 0.5, "sample_rate": sr, "split": split})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_tempo_reader_trainer(tmp_path):
    from ldm_helpers import tiny_clap
    from soundsmith.train.components import COMPONENTS
    from soundsmith.train.datasets import read_records
    from soundsmith.train.train_tempo_reader import clip_captions

    corpus = write_labelled_corpus(tmp_path / "corpus")
    _, records = read_records(corpus)
    texts, domains, classes = clip_captions(records[:12], 4, np.random.default_rng(0))
    assert len(texts) == len(domains) == len(classes) and set(classes) <= {"none", "slow", "moderate", "fast"}
    assert all(c == "none" for c, d in zip(classes, domains) if d != "music")  # "speaking fast" asks no tempo
    music = [(t, c) for t, c, d in zip(texts, classes, domains) if d == "music"]
    assert any(c != "none" for _, c in music)

    tiny_clap().save_pretrained(tmp_path / "clap", dtype=torch.float32)
    train = COMPONENTS["tempo-reader"]()
    export = train(data=corpus, out=tmp_path / "run", overrides=[f"clap={tmp_path / 'clap'}", "captions_per_clip=3"])
    reader = TempoReader.from_pretrained(export)
    assert reader.config.dim == 32 and reader.config.band_bpm == {"slow": 65.0, "moderate": 102.5, "fast": 140.0}
    assert 0.0 <= reader.config.fit["valid_read_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="already holds a tempo-reader run"):
        train(data=corpus, out=tmp_path / "run", overrides=[f"clap={tmp_path / 'clap'}"])
    (tmp_path / "only-sfx").mkdir()
    with pytest.raises(ValueError, match="tempo_bpm' labels in every tempo band"):
        train(data=write_labelled_corpus(tmp_path / "slow", tempi=(60, 70)), out=tmp_path / "run2",
              overrides=[f"clap={tmp_path / 'clap'}"])


def test_unet_batches_carry_each_clips_tempo(tmp_path):
    from ldm_helpers import tiny_clap, tiny_codec
    from soundsmith.train.datasets import clip_tempi
    from soundsmith.train.train_unet import UNetTrainConfig, build_cache, load_parts, make_batch

    corpus = write_labelled_corpus(tmp_path / "corpus")
    tiny_codec().save_pretrained(tmp_path / "codec")
    tiny_clap().save_pretrained(tmp_path / "clap", dtype=torch.float32)
    base = {"codec": str(tmp_path / "codec"), "clap": str(tmp_path / "clap"), "captions_per_clip": 1,
            "cond_dropout": 0.0, "condition": "audio"}
    cfg = UNetTrainConfig(**base, tempo_dropout=0.0)
    codec, conditioner = load_parts(cfg, "test")
    cache = build_cache(codec, conditioner, corpus, "train", tmp_path / "cache", captions_per_clip=1, seed=0)
    tempi = clip_tempi(corpus, "train")
    assert tempi[:6] == [60.0, 70.0, 95.0, 110.0, 130.0, 150.0] and tempi[6:] == [None] * 6
    g = torch.Generator().manual_seed(0)
    _, _, cond, _ = make_batch(cache, [0, 5, 7], 8, cfg, g, tempo=tempi)
    assert cond.shape == (3, 32 + TEMPO_DIM)
    assert torch.allclose(cond[:, 32:], tempo_features([60.0, 150.0, None]))
    _, _, cond, _ = make_batch(cache, [0, 5], 8, UNetTrainConfig(**base, tempo_dropout=1.0), g, tempo=tempi)
    assert cond[:, 32:].abs().sum() == 0 and cond[:, :32].abs().sum() > 0  # the tempo alone dropped
    _, _, cond, _ = make_batch(cache, [0, 5], 8, UNetTrainConfig(**{**base, "cond_dropout": 1.0}, tempo_dropout=0.0),
                               g, tempo=tempi)
    assert cond.abs().sum() == 0  # a dropped condition drops its tempo too: the pipeline's null input


# ------------------------------------------------------------------------------------------ token backend


def test_semantic_lm_tempo_input_starts_silent_and_then_counts():
    from soundsmith.gen.token_lm import SamplingParams, build_lm, grow_lm
    from token_helpers import tiny_lm_config

    torch.manual_seed(0)
    lm = build_lm(tiny_lm_config("semantic")).eval()
    cond, semantic = torch.randint(0, 16, (2, 3)), torch.randint(0, 8, (2, 6))
    grown = grow_lm(lm, tempo_dim=TEMPO_DIM).eval()
    tempo = tempo_features([70.0, 150.0])
    assert torch.equal(grown(cond, semantic, tempo).logits, lm(cond, semantic).logits)  # zero at first
    with torch.no_grad():
        grown.tempo.weight.normal_()
    moved = grown(cond, semantic, tempo).logits
    assert not torch.allclose(moved, lm(cond, semantic).logits)
    assert torch.equal(grown(cond, semantic).logits, lm(cond, semantic).logits)  # no tempo given: as before
    # cached generation reads the tempo like the teacher-forced pass does
    out = grown.generate(cond, 6, sampling=SamplingParams(top_k=1), tempo=tempo)
    logits = grown(cond, torch.cat([out, out[:, :1]], 1), tempo).logits
    assert torch.equal(logits[:, :6].argmax(-1), out)
    with pytest.raises(ValueError, match="tempo features must be shaped"):
        grown(cond, semantic, tempo[:, :4])
    with pytest.raises(ValueError, match="tempo_dim must be >= 0, and 0 outside the semantic stage"):
        tiny_lm_config("coarse", tempo_dim=16)


def test_token_crops_carry_tempo_for_the_semantic_stage():
    from soundsmith.gen.token_lm import build_lm
    from soundsmith.train.token_cache import CondTokens, Ragged
    from soundsmith.train.train_token_lm import TokenCrops
    from token_helpers import tiny_lm_config

    lm = build_lm(tiny_lm_config("semantic", tempo_dim=TEMPO_DIM))
    n = 3
    cache = {"cond": CondTokens(torch.randint(0, 16, (n, 3)), torch.randint(0, 16, (n, 2, 3))),
             "semantic": Ragged(torch.randint(0, 8, (n * 12,)), torch.arange(0, n * 12 + 1, 12))}
    crops = TokenCrops("semantic", cache, lm, tempo=[80.0, None, 140.0])
    batch = crops.batch([0, 1, 2], np.random.default_rng(0), cond="audio")
    assert torch.equal(batch["tempo"], tempo_features([80.0, None, 140.0]))
    assert crops.batch([0], np.random.default_rng(0), cond="null")["tempo"].abs().sum() == 0  # null prefix: none
    dropped = TokenCrops("semantic", cache, lm, tempo=[80.0, None, 140.0], tempo_dropout=1.0)
    assert dropped.batch([0, 2], np.random.default_rng(0))["tempo"].abs().sum() == 0
    plain = TokenCrops("semantic", cache, build_lm(tiny_lm_config("semantic")), tempo=[80.0, None, 140.0])
    assert "tempo" not in plain.batch([0], np.random.default_rng(0), cond="audio")  # an LM without the input
    assert lm(**batch).loss().isfinite()


def test_token_pipeline_reads_tempo_and_round_trips(tmp_path):
    from soundsmith.gen.token_lm import grow_lm
    from token_helpers import tiny_pipeline as tiny_tokens

    pipe = tiny_tokens()
    pipe.semantic_lm = grow_lm(pipe.semantic_lm, tempo_dim=TEMPO_DIM).eval()
    with torch.no_grad():
        pipe.semantic_lm.tempo.weight.normal_()
    reader = _reader(pipe.conditioner.dim)
    reader.weight.zero_()
    reader.bias.fill_(10.0)
    pipe.tempo_reader = reader
    out = pipe(["a fast reel", "a reel"], seed=0, watermark=False, loudness_lufs=None)
    assert out.parameters["tempo_bpm"] == [reader.config.band_bpm["fast"], None]
    folder = pipe.save_pretrained(tmp_path / "tokens")
    assert json.loads((folder / "config.json").read_text())["components"]["tempo"] == "tempo"
    loaded = load_pipeline(folder)
    loaded.progress_bar = False
    assert loaded.tempo_reader is not None
    again = loaded(["a fast reel", "a reel"], seed=0, watermark=False, loudness_lufs=None)
    assert torch.allclose(again.audios, out.audios, atol=1e-4)


def test_unet_finetune_grows_the_tempo_input_and_exports_the_reader(tmp_path):
    from soundsmith.train.components import COMPONENTS
    from train_helpers import write_config

    corpus = write_labelled_corpus(tmp_path / "corpus")
    init = tiny_pipeline().save_pretrained(tmp_path / "models" / "init")
    reader = _reader(32)
    reader.bias.fill_(10.0)
    reader_dir = reader.save_pretrained(tmp_path / "reader")
    values = {"init": str(init), "tempo_reader": str(reader_dir), "max_steps": 2, "batch_size": 2,
              "crop_seconds": 0.32, "warmup_steps": 1, "log_every": 1, "eval_every": 2, "save_every": 2,
              "num_valid_batches": 1, "sample_prompts": ["a fast tone"], "sample_steps": 2, "sample_seconds": 0.32,
              "captions_per_clip": 1}
    train = COMPONENTS["unet"]()
    export = train(config=write_config(tmp_path / "unet.json", values), data=corpus, out=tmp_path / "run")
    pipe = load_pipeline(export)
    pipe.progress_bar = False
    assert isinstance(pipe.conditioner, TempoConditioner)
    assert pipe.unet.config.projection_class_embeddings_input_dim == 32 + TEMPO_DIM
    out = pipe("a fast tone at 120 bpm", duration_s=0.5, seed=0)
    assert out.parameters["tempo_bpm"] == [120.0] and torch.isfinite(out.audios).all()

    lora = write_config(tmp_path / "lora.json", {**values, "lora_rank": 4})
    with pytest.raises(ValueError, match="LoRA run cannot train"):
        train(config=lora, data=corpus, out=tmp_path / "run2")
    assert not (tmp_path / "run2" / "cache").exists()  # refused before the latent cache
    # a model that has the input already takes a LoRA run, tempo batches included
    values_lora = {**values, "init": str(export), "tempo_reader": None, "lora_rank": 4}
    adapter = train(config=write_config(tmp_path / "lora2.json", values_lora), data=corpus, out=tmp_path / "run3")
    assert (adapter / "adapter_config.json").is_file()


def test_tempo_scale_strengthens_the_tempo_and_is_refused_elsewhere():
    pipe = _tempo_pipeline()
    with torch.no_grad():
        pipe.unet.class_embedding.weight[:, -TEMPO_DIM:].normal_()  # a trained tempo input
    c = pipe.conditioner
    d = c.inner.dim
    assert torch.allclose(c.embed_prompts(["a fast reel"], tempo_scale=2.0)[:, d:],
                          2 * c.embed_prompts(["a fast reel"])[:, d:])
    kw = {"duration_s": 0.5, "seed": 0, "watermark": False, "loudness_lufs": None}
    none = pipe("a fast reel", tempo_scale=0.0, **kw)
    assert none.parameters["tempo_scale"] == 0.0
    assert not torch.allclose(pipe("a fast reel", tempo_scale=4.0, **kw).audios, none.audios)
    with pytest.raises(ValueError, match="tempo_scale must be a finite number in \\[0, 20\\]"):
        pipe("a fast reel", tempo_scale=50.0, **kw)
    with pytest.raises(ValueError, match="tempo_scale applies to tempo-conditioned models"):
        tiny_pipeline()("a fast reel", tempo_scale=1.0, **kw)


def test_tempo_control_measures_a_click_track():
    """benchmarks/tempo_control.py's two measures on clicks at 120 BPM: 2 onsets per second, tempo 120 (or its
    half or double), which `within` accepts."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "tempo_control.py"
    spec = importlib.util.spec_from_file_location("tempo_control_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    sr = 16000
    wave = np.zeros(5 * sr, dtype=np.float32)
    for start in range(0, len(wave), sr // 2):  # a 5 ms noise click every 0.5 s
        wave[start:start + 80] = np.random.default_rng(start).standard_normal(80)
    assert abs(bench.onset_rate(wave, sr) - 2.0) <= 0.2
    assert bench.within(bench.estimate_bpm(wave, sr), 120.0, octaves=True)
    assert bench.within(63.0, 60.0) and not bench.within(70.0, 60.0) and bench.within(125.0, 60.0, octaves=True)
