"""Training the token LMs: the token cache (computed once, reused, keyed by the parts), crops and condition
draws, a CLI smoke run per stage whose exports assemble into a pipeline that loads, bit-exact resume,
and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from soundsmith.codecs.audio import read_audio
from soundsmith.gen.text_encoder import SentenceEncoder
from soundsmith.gen.token_lm import TokenLM, build_lm
from soundsmith.pipelines import load_pipeline
from soundsmith.pipelines.tokens import TokenPipeline
from soundsmith.train.checkpoint import latest_checkpoint
from soundsmith.train.token_cache import TokenParts, token_cache
from soundsmith.train.train_token_lm import TokenCrops
from token_helpers import TINY_LM, tiny_clap, tiny_codec, tiny_cond_rvq, tiny_kmeans, tiny_lm_config
from train_helpers import write_config, write_corpus

from soundsmith.cli import main

MODEL = {k: v for k, v in TINY_LM.items() if k in ("d_model", "n_layers", "n_heads", "d_ff", "dropout",
                                                      "cond_embed_dim", "n_coarse", "n_fine", "acoustic_embed_dim")}
# windows of 0.32 s: 8 semantic tokens, 16 codec frames
TINY_RUN = {"max_steps": 4, "batch_size": 2, "warmup_steps": 1, "log_every": 1, "eval_every": 2, "save_every": 2,
            "num_valid_batches": 1, "keep_last": 5, "window_s": 0.32, "n_captions": 2, "model": MODEL}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A corpus of 0.5 s tones and tiny parts saved as model folders."""
    root = tmp_path_factory.mktemp("tokens")
    corpus = write_corpus(root / "corpus", num_train=6, num_valid=2, seconds=0.5)
    clap = tiny_clap(SentenceEncoder())
    clap.save_pretrained(root / "clap", dtype=torch.float32)
    tiny_cond_rvq(clap).save_pretrained(root / "cond_rvq")
    tiny_kmeans(clap).save_pretrained(root / "kmeans")
    tiny_codec().save_pretrained(root / "codec")
    return {"root": root, "corpus": corpus, **{p: root / p for p in ("clap", "cond_rvq", "kmeans", "codec")}}


def run_config(setup: dict[str, Path], path: Path, **changes) -> Path:
    parts = {p: str(setup[p]) for p in ("clap", "cond_rvq", "kmeans", "codec")}
    return write_config(path, {**TINY_RUN, **parts, "cache_dir": str(setup["root"] / "cache"), **changes})


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


# ---------------------------------------------------------------------------------------------- cache


def test_token_cache_is_computed_once_and_keyed_by_parts(setup, tmp_path):
    parts = TokenParts.load(**{p: setup[p] for p in ("clap", "cond_rvq", "kmeans", "codec")})
    cache = token_cache(setup["corpus"], "train", parts, ("cond", "semantic", "codes"), root=tmp_path, n_captions=3,
                        progress=False)
    assert cache["cond"].audio.shape == (6, 3) and cache["cond"].text.shape == (6, 3, 3)
    assert len(cache["semantic"]) == len(cache["codes"]) == 6
    assert cache["semantic"].clip(0).shape == (12,) and cache["codes"].clip(0).shape == (4, 25)  # 0.5 s
    wave = torch.from_numpy(read_audio(setup["corpus"] / "train" / "000000.wav")[0])[None]  # [1, 1, T]
    assert torch.equal(cache["codes"].clip(0), parts.codec.encode(wave, 16000)[0])
    assert torch.equal(cache["semantic"].clip(0), parts.kmeans.tokenize(wave, 16000)[0])
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 3
    stamps = [f.stat().st_mtime_ns for f in files]
    again = token_cache(setup["corpus"], "train", parts, ("cond", "codes"), root=tmp_path, n_captions=3, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps and torch.equal(again["cond"].text, cache["cond"].text)
    parts.codec = tiny_codec(seed=1)  # another codec: another cache folder
    token_cache(setup["corpus"], "train", parts, ("codes",), root=tmp_path, progress=False)
    assert len(sorted(tmp_path.rglob("*.safetensors"))) == 4
    with pytest.raises(ValueError, match="cond tokens need the clap part"):
        token_cache(setup["corpus"], "train", TokenParts(codec=parts.codec), ("cond",), root=tmp_path)


def test_crops_align_and_draw_conditions(setup):
    parts = TokenParts.load(**{p: setup[p] for p in ("clap", "cond_rvq", "kmeans", "codec")})
    cache = token_cache(setup["corpus"], "train", parts, ("cond", "semantic", "codes"), root=setup["root"] / "cache",
                        n_captions=2, progress=False)
    lm = build_lm(tiny_lm_config("coarse", semantic_vocab=8))
    crops = TokenCrops("coarse", cache, lm, cond_dropout=0.5, text_cond_prob=0.5)
    batch = crops.batch([0, 1], np.random.default_rng([0, 1]))
    assert batch["coarse"].shape == (2, 2, 16) and batch["semantic"].shape == (2, 8) and batch["cond"].shape == (2, 3)
    # the semantic crop covers the frames of the acoustic crop: find the crop start from the codes
    codes, sem = cache["codes"].clip(0), cache["semantic"].clip(0)
    start = next(s for s in range(0, 10, 2) if torch.equal(codes[:2, s:s + 16], batch["coarse"][0]))
    assert torch.equal(sem[start // 2: start // 2 + 8], batch["semantic"][0])
    # conditions: null with cond_dropout, else text or audio tokens
    null = torch.full((3,), 16)
    draws = [crops._cond(0, np.random.default_rng(i), "random") for i in range(400)]
    n_null = sum(torch.equal(d, null) for d in draws)
    n_audio = sum(torch.equal(d, cache["cond"].audio[0]) for d in draws)
    assert 150 < n_null < 250 and 60 < n_audio < 140
    assert torch.equal(crops.batch([0, 1], np.random.default_rng(5))["cond"], crops.batch([0, 1], np.random.default_rng(5))["cond"])


# ---------------------------------------------------------------------------------------------- runs


def test_cli_runs_export_and_assemble_into_a_pipeline(setup, tmp_path):
    """`soundsmith train {semantic,coarse,fine}-lm ... --max-steps 2`: metrics, fp16 exports with the parts'
    fingerprints, and a pipeline folder made of them loads and generates."""
    runs = tmp_path / "runs"
    for stage in ("semantic", "coarse", "fine"):
        config = run_config(setup, tmp_path / f"{stage}.json")
        assert main(["train", f"{stage}-lm", "--config", str(config), "--data", str(setup["corpus"]), "--out",
                     str(runs / stage), "--max-steps", "2"]) == 0
        rows = _rows(runs / stage)
        assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
        valid = next(r for r in rows if "valid/loss" in r)
        assert ("valid/loss_null" in valid) == (stage != "fine")
        weights = load_file(str(runs / stage / "export" / "model.safetensors"))
        assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
        lm = TokenLM.from_pretrained(runs / stage / "export")
        assert lm.config.stage == stage and lm.config.window == (8 if stage == "semantic" else 16)
        levels = {"semantic": 0, "coarse": lm.config.n_coarse, "fine": lm.config.n_fine}[stage]  # loss per level
        assert sorted(k for k in valid if k.startswith("valid/loss_l")) == [f"valid/loss_l{j + 1}" for j in range(levels)]
        assert set(lm.config.trained_with) == ({"codec"} if stage == "fine" else
                                               {"clap", "cond_rvq", "kmeans"} | ({"codec"} if stage == "coarse" else set()))
    names = {"clap": setup["clap"], "cond_rvq": setup["cond_rvq"], "kmeans": setup["kmeans"], "codec": setup["codec"],
             "semantic_lm": runs / "semantic" / "export", "coarse_lm": runs / "coarse" / "export",
             "fine_lm": runs / "fine" / "export"}
    # the exports live in separate run folders: joined by the API (a model folder's config.json may not link
    # outside its models tree; `soundsmith assemble` copies them into one, tested below)
    pipe = TokenPipeline.from_parts(names)
    pipe.progress_bar = False
    assert pipe("a tone", duration_s=0.3, seed=0).audios.shape == (1, 1, 4800)


def test_lms_train_on_mel_rvq_codes_and_assemble(setup, tmp_path, capsys):
    """The default codec, the mel RVQ: 25 codes/s, one frame per semantic token; the coarse and fine LMs train on
    its codes and `soundsmith assemble tokens` joins them with the other parts into a pipeline that generates."""
    from token_helpers import tiny_mel_rvq

    codec = tiny_mel_rvq().save_pretrained(tmp_path / "codec")  # built in memory: its mel codec is written inside
    runs = tmp_path / "runs"
    for stage in ("semantic", "coarse", "fine"):
        config = run_config(setup, tmp_path / f"{stage}.json", codec=str(codec), cache_dir=str(tmp_path / "cache"))
        assert main(["train", f"{stage}-lm", "--config", str(config), "--data", str(setup["corpus"]), "--out",
                     str(runs / stage), "--max-steps", "1"]) == 0
    coarse = TokenLM.from_pretrained(runs / "coarse" / "export").config
    assert (coarse.frames_per_semantic, coarse.frame_rate, coarse.window) == (1, 25.0, 8)
    args = ["assemble", "tokens", "--out", str(tmp_path / "model"), "--clap", str(setup["clap"]), "--cond-rvq",
            str(setup["cond_rvq"]), "--kmeans", str(setup["kmeans"]), "--codec", str(codec)]
    args += [a for stage in ("semantic", "coarse", "fine") for a in (f"--{stage}-lm", str(runs / stage / "export"))]
    assert main(args) == 0
    pipe = load_pipeline(tmp_path / "model")
    pipe.progress_bar = False
    assert type(pipe.codec).__name__ == "MelRVQCodec"
    assert pipe("a tone", duration_s=0.3, seed=0).audios.shape == (1, 1, 4800)


def test_resume_is_bit_exact(setup, tmp_path):
    """4 steps straight == 2 steps, then resume, then 2 more: weights, EMA, optimizer and RNG states identical."""
    from soundsmith.train.components import COMPONENTS

    train = COMPONENTS["coarse-lm"]()
    config = run_config(setup, tmp_path / "config.json", model={**MODEL, "dropout": 0.1}, short_crop_prob=0.5)
    train(config, setup["corpus"], tmp_path / "straight")
    train(config, setup["corpus"], tmp_path / "split", max_steps=2)
    train(None, setup["corpus"], tmp_path / "split", resume=True)
    a = load_file(str(latest_checkpoint(tmp_path / "straight") / "state.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "split") / "state.safetensors"))
    assert a.keys() == b.keys() and {k.split("/")[0] for k in a} >= {"model", "optimizer", "ema", "rng"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _rows(tmp_path / "straight") == _rows(tmp_path / "split")


@pytest.mark.parametrize("stage, changes, message", [
    ("coarse", {"model": {**MODEL, "layers": 2}}, "field 'model': unknown key 'layers'"),
    ("coarse", {"model": {**MODEL, "semantic_vocab": 99}}, "semantic_vocab=99 contradicts the parts"),
    ("fine", {"model": {**MODEL, "n_coarse": 3, "n_fine": 2}}, "needs 5 codec levels, the codec has 4"),
    ("semantic", {"kmeans": "/nonexistent"}, r"kmeans: no model folder at /nonexistent \(config field 'kmeans'\)"),
    ("fine", {"cond_dropout": 1.5}, r"field 'cond_dropout' must be in \[0, 1\]"),
])
def test_config_errors(setup, tmp_path, stage, changes, message):
    from soundsmith.train.components import COMPONENTS

    config = run_config(setup, tmp_path / "config.json", **changes)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        COMPONENTS[f"{stage}-lm"]()(config, setup["corpus"], tmp_path / "run")


@pytest.mark.parametrize("stage", ["semantic", "coarse", "fine"])
def test_default_configs_are_complete_and_fit_the_budget(stage):
    """train/configs/<stage>-lm.json name every field and load; with the default parts (12 x 1024 conditioning
    tokens, 512 k-means clusters, 8 x 1024 codec) the three LMs stay within their share of the 28 MB budget."""
    import dataclasses

    from soundsmith.gen.token_lm import TokenLMConfig
    from soundsmith.train.config import load_config
    from soundsmith.train.train_token_lm import CONFIGS, TokenLMTrainConfig

    path = CONFIGS / f"{stage}-lm.json"
    raw = json.loads(path.read_text())
    assert set(raw) == {f.name for f in dataclasses.fields(TokenLMTrainConfig)}
    cfg = load_config(TokenLMTrainConfig, path)
    assert cfg.max_steps >= 1000 and cfg.batch_size >= 8
    sizes = {}
    for s in ("semantic", "coarse", "fine"):
        model = json.loads((CONFIGS / f"{s}-lm.json").read_text())["model"]
        sizes[s] = build_lm(TokenLMConfig(stage=s, semantic_vocab=512, window=150, **model)).num_parameters()
    rvq_and_centroids = (12 * 1024 * 64 + 2 * 512 * 64 + 512 + 64) + (512 * 256 + 2 * 256)
    assert (sum(sizes.values()) + rvq_and_centroids) * 2 <= 28e6
