"""`soundsmith train unet` on a tiny corpus with tiny random parts: cache, batches, loss, resume, export."""

import json

import pytest
import torch
from ldm_helpers import tiny_clap, tiny_codec
from soundsmith.pipelines import load_pipeline
from soundsmith.train.checkpoint import latest_checkpoint, list_checkpoints
from soundsmith.train.components import COMPONENTS
from soundsmith.train.train_unet import UNetTrainConfig, build_cache, diffusion_loss, load_parts, make_batch
from train_helpers import write_config, write_corpus

# diffusers' schedulers trip a numpy 2 deprecation (np.array(..., copy=False) on a tensor): not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


TINY_UNET = {"block_out_channels": [16, 32], "attention_levels": [False, True], "head_channels": 8,
             "norm_num_groups": 8}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    tiny_codec().save_pretrained(root / "codec")
    tiny_clap().save_pretrained(root / "clap", dtype=torch.float32)
    write_corpus(root / "corpus", num_train=6, num_valid=2, seconds=0.5)
    return root


def tiny_config(parts, **extra) -> dict:
    return {"codec": str(parts / "codec"), "clap": str(parts / "clap"), "max_steps": 4, "batch_size": 2,
            "crop_seconds": 0.32, "warmup_steps": 1, "log_every": 1, "eval_every": 2, "save_every": 2,
            "keep_last": 5, "num_valid_batches": 1, "sample_prompts": ["a tone"], "sample_steps": 2,
            "sample_seconds": 0.32, "num_inference_steps": 2, "captions_per_clip": 2, "model": TINY_UNET, **extra}


def test_batches_conditions_and_loss(parts, tmp_path):
    cfg = UNetTrainConfig(**tiny_config(parts))
    codec, conditioner = load_parts(cfg, "test")
    cache = build_cache(codec, conditioner, parts / "corpus", "train", tmp_path, captions_per_clip=2, seed=0)
    assert len(cache) == 6 and cache.mean.shape[0] == 4 and cache.mean.shape[2] == 4  # [C, frames, F/4]
    assert cache.frames(0) == 13  # 0.5 s -> ceil(8000 / 640) latent frames
    again = build_cache(codec, conditioner, parts / "corpus", "train", tmp_path, captions_per_clip=2, seed=0)
    assert torch.equal(again.mean, cache.mean)  # reused from disk

    g = torch.Generator().manual_seed(0)
    z, mask, cond, texts = make_batch(cache, [0, 1], 20, UNetTrainConfig(**tiny_config(parts, condition="audio",
                                                                                       cond_dropout=0.0)), g)
    assert z.shape == (2, 4, 20, 4) and mask[0].sum() == 13 and torch.equal(cond[1], cache.audio_emb[1])
    assert texts == [None, None]
    _, _, cond, texts = make_batch(cache, [2, 3], 8, UNetTrainConfig(**tiny_config(parts, condition="text",
                                                                                  cond_dropout=0.0)), g)
    assert all(t in cache.captions for t in texts) and cond.norm(dim=-1).allclose(torch.ones(2), atol=1e-4)
    _, _, cond, texts = make_batch(cache, [2, 3], 8, UNetTrainConfig(**tiny_config(parts, cond_dropout=1.0)), g)
    assert cond.abs().sum() == 0 and texts == [None, None]  # dropped: the pipeline's zero condition

    from diffusers import DDPMScheduler
    from soundsmith.gen.schedulers import default_noise_schedule
    from soundsmith.gen.unet import UNetConfig, build_unet

    unet = build_unet(UNetConfig(latent_channels=4, condition_dim=32, **{**TINY_UNET, "attention_levels": (False, True)}))
    for prediction in ("epsilon", "v_prediction"):
        c = UNetTrainConfig(**tiny_config(parts, prediction_type=prediction))
        sched = DDPMScheduler.from_config(default_noise_schedule(prediction))
        loss = diffusion_loss(unet, sched, z[:, :, :8], mask[:, :8], cond, None, c, torch.Generator().manual_seed(1))
        assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
        loss.backward()


def test_train_and_export(parts, tmp_path):
    config = write_config(tmp_path / "unet.json", tiny_config(parts, max_steps=2))
    out = tmp_path / "run"
    export = COMPONENTS["unet"]()(config=config, data=parts / "corpus", out=out, resume=False, max_steps=None)
    assert [p.name for p in list_checkpoints(out)] == ["step-000000002"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("valid/loss" in r for r in rows) and any("samples/clap_score" in r for r in rows)
    assert list((out / "samples" / "step-000000002").glob("*.wav"))
    assert (out / "cache" / "train.safetensors").is_file() and (out / "cache" / "valid.safetensors").is_file()

    pipe = load_pipeline(export)  # the export is a pipeline folder; its parts' fingerprints are checked
    pipe.progress_bar = False
    config_json = json.loads((export / "config.json").read_text())
    assert set(config_json["trained_with"]) == {"vae", "clap"} and config_json["window_s"] == pytest.approx(0.32)
    out = pipe("a tone at 440 Hz", duration_s=0.5, seed=0)
    assert out.audios.shape == (1, 1, 8000) and torch.isfinite(out.audios).all()


@pytest.mark.slow
def test_resume_replays_the_run(parts, tmp_path):
    from soundsmith.train.checkpoint import read_checkpoint

    config = write_config(tmp_path / "unet.json", tiny_config(parts))
    train = COMPONENTS["unet"]()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(config=config, data=parts / "corpus", out=straight, resume=False, max_steps=None)
    train(config=config, data=parts / "corpus", out=resumed, resume=False, max_steps=2)
    train(config=None, data=parts / "corpus", out=resumed, resume=True, max_steps=4)
    _, a = read_checkpoint(latest_checkpoint(straight))
    _, b = read_checkpoint(latest_checkpoint(resumed))
    ema = [k for k in a if k.startswith("ema/shadow/")]
    assert ema and all(torch.equal(a[k], b[k]) for k in ema)  # resuming replays the same run exactly


def test_bad_configs(parts, tmp_path):
    train = COMPONENTS["unet"]()
    bad = write_config(tmp_path / "bad.json", {**tiny_config(parts), "codec": None})
    with pytest.raises(ValueError, match="give field 'codec'"):
        train(config=bad, data=parts / "corpus", out=tmp_path / "r1")
    bad = write_config(tmp_path / "bad2.json", {**tiny_config(parts), "condition": "audio",
                                                "model": {**TINY_UNET, "cross_attention": True}})
    with pytest.raises(ValueError, match="cross_attention needs text conditioning"):
        train(config=bad, data=parts / "corpus", out=tmp_path / "r2")
    bad = write_config(tmp_path / "bad3.json", {**tiny_config(parts), "snr_gamma": -1})
    with pytest.raises(ValueError, match="snr_gamma"):
        train(config=bad, data=parts / "corpus", out=tmp_path / "r3")
