"""The latent-diffusion pipeline on tiny random parts (our layout): lengths, seeds, ranking, cancelling,
bad input, audio-to-audio, inpainting / outpainting, long-form windows, folders and the CLI."""

import json
import math

import pytest
import torch
from ldm_helpers import tiny_pipeline
from soundsmith.gen.text_encoder import SentenceEncoder
from soundsmith.pipelines import load_pipeline
from soundsmith.pipelines.base import GenerationCancelled

from soundsmith.cli import main

# diffusers' schedulers trip a numpy 2 deprecation (np.array(..., copy=False) on a tensor): not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


SR = 16000


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()  # the packaged MiniLM, offline


@pytest.fixture(scope="module")
def pipe(encoder):
    return tiny_pipeline(encoder)


@pytest.fixture(scope="module")
def folder(pipe, tmp_path_factory):
    return pipe.save_pretrained(tmp_path_factory.mktemp("ldm") / "model")


def clip(seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    return (0.3 * torch.sin(2 * math.pi * 330 * t) + 0.05 * torch.randn(t.shape, generator=g))[None]  # [1, T]


# ------------------------------------------------------------------------------------- text-to-audio


def test_any_duration_and_output(pipe):
    out = pipe("rain on a roof", duration_s=0.3, seed=0)
    assert out.audios.shape == (1, 1, int(0.3 * SR)) and out.sample_rate == SR
    assert torch.isfinite(out.audios).all() and out.audios.std() > 1e-3
    assert out.prompts == ["rain on a roof"] and out.seeds == [0] and out.clap_scores is None  # scored when asked
    scored = pipe("rain on a roof", duration_s=0.3, seed=0, clap_score=True)
    assert len(scored.clap_scores) == 1 and torch.equal(scored.audios, out.audios)
    assert scored.metadata(0)["clap_score"] == scored.clap_scores[0] and "clap_score" not in out.metadata(0)
    p = out.parameters
    assert (p["mode"], p["scheduler"], p["num_inference_steps"], p["dtype"]) == ("text-to-audio", "dpmsolver++", 3, "fp32")
    assert p["watermarked"] is False and p["windowed"] is False


def test_seeds_reproduce_and_batches_agree(pipe):
    a = pipe(["a dog barks", "wind"], duration_s=0.32, seed=5)
    b = pipe(["a dog barks", "wind"], duration_s=0.32, seed=5)
    assert torch.equal(a.audios, b.audios)  # same seed, model, device and batch size: bit-identical
    alone = pipe("wind", duration_s=0.32, seed=6)  # the second output's seed, in a batch of one
    assert a.seeds == [5, 6]
    assert (a.audios[1] - alone.audios[0]).abs().max() <= 1e-5
    chunked = pipe(["a dog barks", "wind"], duration_s=0.32, seed=5, batch_size=1)
    assert (chunked.audios - a.audios).abs().max() <= 1e-5
    assert not torch.equal(pipe("wind", duration_s=0.32, seed=7).audios, alone.audios)


def test_candidates_are_ranked_by_clap(pipe):
    out = pipe("a bell rings", duration_s=0.32, num_waveforms_per_prompt=3, seed=1)
    assert sorted(out.seeds) == [1, 2, 3] and out.prompts == ["a bell rings"] * 3
    assert out.clap_scores == sorted(out.clap_scores, reverse=True)
    assert len(set(out.clap_scores)) == 3  # distinct candidates, really ranked
    again = pipe("a bell rings", duration_s=0.32, num_waveforms_per_prompt=3, seed=1, rerank=False)
    assert again.seeds == [1, 2, 3]


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler-ancestral", "heun", "unipc", "DDPMScheduler"])
def test_schedulers_by_name(pipe, scheduler):
    calls = []
    out = pipe("rain", duration_s=0.2, seed=2, scheduler=scheduler, callback=lambda s, t: calls.append((s, t)))
    assert torch.isfinite(out.audios).all()
    assert calls[-1][0] == calls[-1][1] == len(calls)  # one call per model evaluation (Heun: 2 per step)


def test_callback_cancels(pipe):
    with pytest.raises(GenerationCancelled, match="step 2 of 3"):
        pipe("rain", duration_s=0.2, seed=0, callback=lambda step, total: step < 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(duration_s=0), r"duration_s must be a finite number in \(0, 8\]"),
    (dict(duration_s=9.0), r"duration_s must be a finite number in \(0, 8\]"),
    (dict(num_inference_steps=0), r"num_inference_steps must be an integer in \[1, 1000\]"),
    (dict(guidance_scale=float("nan")), r"guidance_scale must be a finite number in \[0, 100\]"),
    (dict(num_waveforms_per_prompt=0), r"num_waveforms_per_prompt must be an integer in \[1, 64\]"),
    (dict(scheduler="banana"), "scheduler must be one of dpmsolver\\+\\+, ddim"),
    (dict(strength=0.5), "strength and inpaint need an input clip"),
    (dict(seed=2**63), r"seed must be an integer in \[0, 2\*\*63-1\]"),
    (dict(guidance_cutoff=1.5), r"guidance_cutoff must be a finite number in \[0, 1\]"),
])
def test_bad_input(pipe, kwargs, message):
    args = {"prompt": "rain", "duration_s": 0.2, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(args.pop("prompt"), **args)


def test_guidance_cutoff_guides_only_the_first_steps(pipe):
    run = dict(duration_s=0.3, num_inference_steps=4, guidance_scale=3.0, seed=0, watermark=False, loudness_lufs=None)
    batches = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda x, *a, **k: batches.append(x.shape[0]) or forward(x, *a, **k)
    try:
        full = pipe("rain", **run)
        assert batches == [2] * 4 and full.parameters["guidance_cutoff"] == 1.0
        batches.clear()
        half = pipe("rain", guidance_cutoff=0.5, **run)
        assert batches == [2, 2, 1, 1]  # the unguided steps run the prompt's half only
    finally:
        pipe.unet.forward = forward
    unguided = pipe("rain", guidance_cutoff=0.0, **run).audios
    plain = pipe("rain", **{**run, "guidance_scale": 1.0}).audios
    assert torch.allclose(unguided, plain, atol=1e-5)  # no guided step: the prompt alone
    assert not torch.allclose(half.audios, full.audios, atol=1e-4)
    assert torch.equal(pipe("rain", guidance_cutoff=1.0, **run).audios, full.audios)


# ----------------------------------------------------------------------------- audio conditioning


def test_audio_to_audio(pipe):
    source = clip(0.6)
    recon = pipe.codec.reconstruct(source[None], SR)[0]  # what strength -> 0 converges to
    light = pipe("rain", audio=source, audio_sample_rate=SR, strength=0.34, seed=0, num_inference_steps=3)
    full = pipe("rain", audio=source, audio_sample_rate=SR, strength=1.0, seed=0, num_inference_steps=3)
    assert light.audios.shape == (1, 1, source.shape[-1]) and light.parameters["mode"] == "audio-to-audio"
    assert (light.audios[0] - recon).abs().mean() < (full.audios[0] - recon).abs().mean()
    with pytest.raises(ValueError, match=r"strength must be a finite number in \(0, 1\]"):
        pipe("rain", audio=source, audio_sample_rate=SR, strength=1.5)
    with pytest.raises(ValueError, match="audio_sample_rate is required"):
        pipe("rain", audio=source, strength=0.5)


def test_inpaint_keeps_the_clip_outside_the_span(pipe):
    source = clip(1.0)
    out = pipe("a dog barks", audio=source, audio_sample_rate=SR, inpaint=(0.32, 0.64), seed=3,
               watermark=False)  # the watermark would touch the kept part too
    assert out.audios.shape == (1, 1, SR) and out.parameters["mode"] == "inpaint"
    assert torch.equal(out.audios[0, :, :int(0.32 * SR)], source[:, :int(0.32 * SR)])  # kept exactly
    assert torch.equal(out.audios[0, :, int(0.64 * SR):], source[:, int(0.64 * SR):])
    middle = slice(int(0.36 * SR), int(0.60 * SR))
    assert (out.audios[0, :, middle] - source[:, middle]).abs().mean() > 1e-3  # regenerated
    with pytest.raises(ValueError, match=r"inpaint span \(0.5, 2.0\) must satisfy"):
        pipe("a dog barks", audio=source, audio_sample_rate=SR, inpaint=(0.5, 2.0))
    with pytest.raises(ValueError, match="nothing to regenerate"):
        pipe("a dog barks", audio=source, audio_sample_rate=SR)


def test_outpaint_extends_a_clip(pipe, tmp_path):
    from soundsmith.codecs.audio import write_audio

    path = write_audio(tmp_path / "start.wav", clip(0.5).numpy(), SR)
    out = pipe("wind", audio=path, duration_s=1.2, seed=4, watermark=False)  # a file path carries its own rate
    assert out.audios.shape == (1, 1, int(1.2 * SR)) and out.parameters["mode"] == "outpaint"
    written = torch.from_numpy(__import__("soundfile").read(path, dtype="float32")[0])
    assert (out.audios[0, 0, :int(0.48 * SR)] - written[:int(0.48 * SR)]).abs().max() == 0
    assert out.audios[0, 0, int(0.6 * SR):].std() > 1e-3  # the extension is new audio, not silence


def test_long_form_is_windowed(pipe):
    calls = []
    out = pipe("rain", duration_s=2.0, seed=0, callback=lambda s, t: calls.append(t))  # 50 latent frames, window 16
    assert out.audios.shape == (1, 1, 2 * SR) and out.parameters["windowed"] is True
    assert calls[-1] == 3 and torch.isfinite(out.audios).all()


# ----------------------------------------------------------------------------- variants and dtypes


def test_cross_attention_variant(encoder):
    pipe = tiny_pipeline(encoder, cross_attention=True)
    a = pipe("a dog barks loudly", duration_s=0.32, seed=0, guidance_scale=3.0)
    b = pipe("a cat", duration_s=0.32, seed=0, guidance_scale=3.0)
    assert a.audios.shape == b.audios.shape and not torch.equal(a.audios, b.audios)


def test_bfloat16_keeps_the_codec_in_float32(encoder):
    pipe = tiny_pipeline(encoder).to(dtype="bf16")
    assert pipe.unet.dtype is torch.bfloat16 and next(pipe.codec.parameters()).dtype is torch.float32
    out = pipe("rain", duration_s=0.2, seed=0)
    assert out.audios.dtype is torch.float32 and torch.isfinite(out.audios).all()
    assert out.parameters["dtype"] == "bf16"


# ------------------------------------------------------------------------------------------ folders


def test_folder_round_trip(pipe, folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["backend"] == "ldm" and sorted(p.name for p in folder.iterdir()) == [
        "clap", "config.json", "scheduler", "unet", "vae", "vocoder"]
    loaded = load_pipeline(folder)
    loaded.progress_bar = False
    a, b = pipe("rain", duration_s=0.2, seed=9), loaded("rain", duration_s=0.2, seed=9)
    assert torch.equal(a.audios, b.audios)
    with pytest.raises(ValueError, match="--backend tokens disagrees with the model folder"):
        load_pipeline(folder, backend="tokens")


def test_mismatched_parts_are_refused(pipe, tmp_path):
    from soundsmith.core.weights import weights_fingerprint

    folder = pipe.save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["trained_with"] = {"vae": weights_fingerprint(pipe.codec.vae), "clap": pipe.conditioner.fingerprint()}
    (folder / "config.json").write_text(json.dumps(config))
    load_pipeline(folder)  # the parts it was trained with: fine
    config["trained_with"]["vae"] = "0123456789abcdef"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="the vae in this folder is not the one the UNet was trained with"):
        load_pipeline(folder)


def test_unreadable_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "config.json").write_text('{"backend": "ldm"}')
    with pytest.raises(FileNotFoundError, match="part 'unet' not found"):
        load_pipeline(tmp_path)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_generate(folder, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("wind in trees\n")
    code = main(["generate", "rain on a roof", "--prompts-file", str(tmp_path / "prompts.txt"), "--model",
                 str(folder), "--backend", "ldm", "--duration", "0.3", "--steps", "2", "--seed", "3", "--num", "2",
                 "--scheduler", "ddim", "--guidance-cutoff", "0.5", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.split("/")[-1] for p in printed)
    assert names == ["rain-on-a-roof-3.wav", "rain-on-a-roof-4.wav", "wind-in-trees-5.wav", "wind-in-trees-6.wav"]
    meta = json.loads((tmp_path / "out" / "wind-in-trees-5.json").read_text())
    assert meta["scheduler"] == "ddim" and meta["num_inference_steps"] == 2 and meta["model"] == str(folder)
    assert meta["guidance_cutoff"] == 0.5


@pytest.mark.parametrize("extra, message", [
    (["--scheduler", "banana"], "scheduler must be one of"),
    (["--duration", "9"], r"duration_s must be a finite number in \(0, 8\]"),
    (["--guidance", "nan"], "argument --guidance: must be a finite number"),
    (["--steps", "0"], r"argument --steps: must be in \[1, 1000\]"),
    (["--guidance-cutoff", "2"], r"argument --guidance-cutoff: must be in \[0, 1\]"),
    (["--num", "0"], r"argument --num/--num-per-prompt: must be in \[1, 64\]"),
    (["--backend", "tokens"], "--backend tokens disagrees with the model folder"),
    (["--top-k", "5"], "--top-k applies to token models"),
    (["--audio-prompt", "x.wav"], "--audio-prompt applies to token models"),
])
def test_cli_bad_input_writes_nothing(folder, tmp_path, capsys, extra, message):
    import re

    try:
        code = main(["generate", "rain", "--model", str(folder), "--duration", "0.2", "--steps", "1",
                     "--out", str(tmp_path / "out"), *extra])
    except SystemExit as exit_:  # argparse rejects a bad value before anything runs
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_unwritable_output(folder, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["generate", "rain", "--model", str(folder), "--out", str(tmp_path / "file" / "out")]) == 2
    assert "cannot be created" in capsys.readouterr().err
