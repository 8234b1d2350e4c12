"""The token pipeline on tiny random parts: lengths, seeds, ranking, long-form windows, continuation, negative
prompts, per-stage sampling, cancelling, bad input, folders (links, fingerprints) and the CLI."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from soundsmith.codecs.audio import write_audio
from soundsmith.gen.text_encoder import SentenceEncoder
from soundsmith.pipelines import load_pipeline
from soundsmith.pipelines.base import GenerationCancelled
from soundsmith.pipelines.tokens import resolve_sampling
from token_helpers import SR, clip, tiny_pipeline

from soundsmith.cli import main


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()  # the packaged MiniLM, offline


@pytest.fixture(scope="module")
def pipe(encoder):
    return tiny_pipeline(encoder)


@pytest.fixture(scope="module")
def folder(pipe, tmp_path_factory):
    return pipe.save_pretrained(tmp_path_factory.mktemp("tokens") / "model")


# ------------------------------------------------------------------------------------- text-to-audio


def test_lengths_seeds_and_ranking(pipe):
    out = pipe(["rain on a roof", "a dog barks"], duration_s=0.29, seed=3, num_waveforms_per_prompt=2)
    assert out.audios.shape == (4, 1, int(0.29 * SR)) and out.sample_rate == SR
    assert out.prompts == ["rain on a roof"] * 2 + ["a dog barks"] * 2 and sorted(out.seeds) == [3, 4, 5, 6]
    assert out.clap_scores[0] >= out.clap_scores[1] and out.clap_scores[2] >= out.clap_scores[3]
    p = out.parameters
    assert p["backend"] == "tokens" and p["codec_frames"] == 15 and p["semantic_tokens"] == 8
    assert p["sampling"]["fine"]["temperature"] == 0.4 and not p["windowed"]
    again = pipe("rain on a roof", duration_s=0.29, seed=out.seeds[0])
    # same seed, same tokens whatever the batch was; the codec's batched arithmetic differs by < 1e-5
    assert (again.audios[0] - out.audios[0]).abs().max() < 1e-5
    assert torch.equal(pipe("rain on a roof", duration_s=0.29, seed=out.seeds[0]).audios, again.audios)
    other = pipe("rain on a roof", duration_s=0.29, seed=11)
    assert not torch.equal(other.audios[0], out.audios[0])
    g = torch.Generator().manual_seed(3)
    assert pipe("rain on a roof", duration_s=0.29, generator=g).seeds == [None]


def test_long_form_is_windowed(pipe):
    steps = []
    out = pipe("wind", duration_s=1.3, seed=0, callback=lambda s, t: steps.append((s, t)))
    assert out.audios.shape == (1, 1, int(1.3 * SR)) and out.parameters["windowed"]
    assert steps[-1][0] == steps[-1][1] == len(steps)  # the callback counts every sampled step, to the total
    assert out.audios.abs().max() > 0


def test_per_stage_sampling_and_negative_prompt(pipe):
    out = pipe("rain", duration_s=0.3, seed=1, temperature={"fine": 0.1}, top_k=4, top_p=0.9, guidance_scale=1.0)
    s = out.parameters["sampling"]
    assert s["fine"] == {"temperature": 0.1, "top_k": 4, "top_p": 0.9}
    assert s["semantic"] == {"temperature": 1.0, "top_k": 4, "top_p": 0.9}  # config's temperature kept
    greedy = dict(top_k=1, duration_s=0.3, seed=1)
    a, b = pipe("rain", negative_prompt="a dog barks", **greedy), pipe("rain", **greedy)
    assert a.audios.shape == b.audios.shape
    assert torch.equal(pipe("rain", negative_prompt="a dog barks", **greedy).audios, a.audios)


def test_callback_cancels(pipe):
    with pytest.raises(GenerationCancelled, match="at step 3 of"):
        pipe("rain", duration_s=0.3, seed=0, callback=lambda step, total: step < 3)


# -------------------------------------------------------------------------------------- continuation


def test_continuation_keeps_the_prompt_tokens(pipe, tmp_path):
    wave = clip(0.5, seed=2)  # [1, T]
    out = pipe("rain", audio_prompt=(wave.numpy(), SR), duration_s=1.0, seed=4)
    assert out.audios.shape == (1, 1, SR) and out.parameters["mode"] == "continuation"
    assert out.parameters["audio_prompt_s"] == pytest.approx(0.48)  # cut to whole semantic tokens (40 ms)
    # the sampled codes start with the prompt's own codes
    semantic, codes = pipe._tokenize_prompt(pipe._read_prompt_audio((wave, SR), 1, 1.0))
    assert semantic.shape == (1, 12) and codes.shape == (1, 4, 24)
    gens = pipe.make_generators(1, 4)[0]
    cond = pipe._cond_tokens(["rain"])
    sampling = resolve_sampling(pipe.config, None, None, None)
    sampled = pipe._sample(cond, None, 3.0, sampling, gens, 25, 50, (semantic, codes), lambda: None)
    assert sampled.shape == (1, 4, 50) and torch.equal(sampled[:, :, :24], codes)
    path = tmp_path / "prompt.wav"
    write_audio(path, wave.numpy(), SR)
    from_file = pipe(["rain", "wind"], audio_prompt=str(path), duration_s=0.8, seed=4)
    assert from_file.audios.shape == (2, 1, int(0.8 * SR)) and from_file.parameters["audio_prompt"] == str(path)


def test_semantic_candidates_keep_the_plan_nearest_the_prompt(pipe):
    """Best-of-k semantic plans: k=1 is the plain sampler; the kept plan is the one whose pooled centroid
    embedding is nearest the prompt's CLAP text embedding; an output's plans do not depend on its batch."""
    plain = pipe("rain on a roof", duration_s=0.4, seed=5, watermark=False)
    one = pipe("rain on a roof", duration_s=0.4, seed=5, watermark=False, semantic_candidates=1)
    assert torch.equal(plain.audios, one.audios) and one.parameters["semantic_candidates"] == 1

    g = torch.Generator().manual_seed(7)
    cond = pipe._cond_tokens(["rain on a roof"])  # [1, Q]
    text = pipe.conditioner.embed_text(["rain on a roof"]).float()
    sampling = resolve_sampling(pipe.config, None, None, None)["semantic"]
    kept = pipe._semantic_plan(cond, None, None, 3.0, sampling, [g], 6, lambda: None, text, 4)  # [1, 6]
    plans = []
    for j in range(4):  # each plan again, alone, from the generator it was drawn with
        gj = torch.Generator().manual_seed(7) if j == 0 else torch.Generator().manual_seed(
            (7 * 1_000_003 + j) % (2**63 - 1))
        plans.append(pipe._semantic_plan(cond, None, None, 3.0, sampling, [gj], 6, lambda: None, text, 1))
    plans = torch.cat(plans)  # [4, 6]
    similarity = pipe.kmeans.audio_embedding(plans) @ torch.nn.functional.normalize(text, dim=-1)[0]
    assert torch.equal(kept[0], plans[int(similarity.argmax())])

    alone = pipe("a dog barks", duration_s=0.4, seed=9, watermark=False, semantic_candidates=3)
    batched = pipe(["a dog barks", "wind"], duration_s=0.4, seed=[9, 10], watermark=False, semantic_candidates=3)
    assert alone.parameters["semantic_candidates"] == 3
    assert torch.allclose(alone.audios[0], batched.audios[0], atol=1e-5)


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": ""}, "prompt is empty"),
    ({"duration_s": 0}, r"duration_s must be a finite number in \(0, 4\]"),
    ({"duration_s": 5.0}, r"duration_s must be a finite number in \(0, 4\]"),
    ({"duration_s": 0.01}, r"duration_s must be a finite number in \[0.04, 4\], got 0.01 \(the shortest clip"),
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"top_k": {"coarse": 0}}, r"top_k\['coarse'\] must be an integer >= 1"),
    ({"top_p": 0.0}, r"top_p must be a number in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\]"),
    ({"temperature": 0.0}, "temperature must be a finite number > 0"),
    ({"temperature": -1.0}, "temperature must be a finite number > 0"),
    ({"temperature": {"middle": 1.0}}, "temperature: unknown stage 'middle'"),
    ({"guidance_scale": -1}, r"guidance_scale must be a finite number in \[0, 100\]"),
    ({"num_inference_steps": 10}, "num_inference_steps does not apply to the token backend"),
    ({"audio_prompt": (np.zeros((1, SR // 4), np.float32), SR)}, "audio_prompt is silent"),
    ({"audio_prompt": (np.ones((1, 1000), np.float32) * 0.1, SR)}, "audio_prompt is too short"),
    ({"audio_prompt": (np.ones((1, SR), np.float32) * 0.1, SR), "duration_s": 0.5}, "must be longer than the audio"),
    ({"audio_prompt": "missing.wav"}, "missing.wav"),
    ({"audio_prompt": 3}, r"audio_prompt must be a file path or a \(wave, sample_rate\) pair"),
    ({"semantic_candidates": 0}, r"semantic_candidates must be an integer in \[1, 64\]"),
    ({"semantic_candidates": 65}, r"semantic_candidates must be an integer in \[1, 64\]"),
])
def test_bad_input(pipe, kwargs, message):
    prompt = kwargs.pop("prompt", "rain")
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        pipe(prompt, **kwargs)
    assert "\n" not in str(err.value)


# -------------------------------------------------------------------------------------------- folders


def test_folder_round_trip(pipe, folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["backend"] == "tokens" and set(config["fingerprints"]) == {
        "clap", "cond_rvq", "kmeans", "codec", "semantic_lm", "coarse_lm", "fine_lm"}
    assert {p.name for p in folder.iterdir()} == {"clap", "codec", "coarse_lm", "cond_rvq", "config.json", "fine_lm",
                                                  "kmeans", "semantic_lm"}
    loaded = load_pipeline(folder)
    loaded.progress_bar = False
    a, b = pipe("rain", duration_s=0.3, seed=9), loaded("rain", duration_s=0.3, seed=9)
    assert torch.equal(a.audios, b.audios)
    with pytest.raises(ValueError, match="--backend ldm disagrees with the model folder"):
        load_pipeline(folder, backend="ldm")


def test_linked_parts_and_no_fine_stage(encoder, folder, tmp_path):
    pipe = tiny_pipeline(encoder, fine=False)
    pipe.conditioner.save_pretrained(tmp_path / "shared-clap")
    out = pipe.save_pretrained(tmp_path / "model", link={"clap": tmp_path / "shared-clap"})
    config = json.loads((out / "config.json").read_text())
    assert config["components"]["clap"] == "../shared-clap" and "fine_lm" not in config["components"]
    loaded = load_pipeline(out)
    loaded.progress_bar = False
    audio = loaded("rain", duration_s=0.3, seed=0)
    assert audio.audios.shape == (1, 1, int(0.3 * SR))


def test_mismatched_parts_are_refused(pipe, encoder, tmp_path):
    import shutil

    folder = pipe.save_pretrained(tmp_path / "m")
    lm_config = json.loads((folder / "coarse_lm" / "config.json").read_text())
    lm_config["trained_with"]["codec"] = "0123456789abcdef"
    (folder / "coarse_lm" / "config.json").write_text(json.dumps(lm_config))
    with pytest.raises(ValueError, match="the codec is not the one coarse_lm was trained on"):
        load_pipeline(folder)
    # another codec in place of the saved one: refused by the recorded fingerprints
    other = tiny_pipeline(encoder, seed=1)
    folder = pipe.save_pretrained(tmp_path / "m2")
    shutil.rmtree(folder / "codec")
    other.codec.save_pretrained(folder / "codec")
    with pytest.raises(ValueError, match="codec"):
        load_pipeline(folder)
    # another CLAP: the conditioning RVQ refuses it
    folder = pipe.save_pretrained(tmp_path / "m3")
    shutil.rmtree(folder / "clap")
    other.conditioner.save_pretrained(folder / "clap")
    with pytest.raises(ValueError, match="trained on the CLAP with fingerprint"):
        load_pipeline(folder)
    shutil.rmtree(folder / "kmeans")
    with pytest.raises(FileNotFoundError, match="part 'kmeans' not found"):
        load_pipeline(folder)


# ------------------------------------------------------------------------ the default codec: mel RVQ


@pytest.fixture(scope="module")
def mel_pipe(encoder):
    return tiny_pipeline(encoder, codec="mel-rvq")


def test_mel_rvq_codec_generates_continues_and_round_trips(mel_pipe, tmp_path):
    # 25 codec frames/s, one per semantic token: 0.5 s = 13 frames of 640 samples, decoded through VAE + Griffin-Lim
    assert mel_pipe.frames_per_semantic == 1 and mel_pipe.codec.hop_length == 640
    out = mel_pipe(["rain", "a dog barks"], duration_s=0.5, seed=0)
    assert out.audios.shape == (2, 1, 8000) and torch.isfinite(torch.as_tensor(out.audios)).all()
    assert out.parameters["codec_frames"] == 13 and out.parameters["semantic_tokens"] == 13
    cont = mel_pipe("rain", audio_prompt=(clip(0.62, seed=1), SR), duration_s=1.0, seed=0)  # cut to 15 frames
    assert cont.audios.shape == (1, 1, SR) and cont.parameters["audio_prompt_s"] == pytest.approx(0.6)
    # the folder: the codec was built in memory, so its mel codec is written inside codec/mel-codec
    folder = mel_pipe.save_pretrained(tmp_path / "model", dtype="fp16")
    codec_config = json.loads((folder / "codec" / "config.json").read_text())
    assert codec_config["_class_name"] == "MelRVQCodec" and codec_config["mel_codec"] == "mel-codec"
    loaded = load_pipeline(folder)
    loaded.progress_bar = False
    assert type(loaded.codec).__name__ == "MelRVQCodec"
    assert loaded.fingerprints()["codec"] == mel_pipe.fingerprints()["codec"]
    assert loaded("rain", duration_s=0.5, seed=0).audios.shape == (1, 1, 8000)
    # the mel path's vocoder is swappable at load time, as for the latent-diffusion backend
    other = load_pipeline(folder, vocoder={"name": "griffin-lim", "n_iter": 3})
    assert other.codec.mel_codec.vocoder.n_iter == 3 and other.fingerprints()["codec"] == loaded.fingerprints()["codec"]


def test_a_vocoder_for_a_waveform_codec_is_refused(folder):
    with pytest.raises(ValueError, match="a vocoder applies to mel-domain codecs"):
        load_pipeline(folder, vocoder="griffin-lim")


def test_mel_rvq_without_a_fine_lm_decodes_the_coarse_levels(encoder):
    pipe = tiny_pipeline(encoder, codec="mel-rvq", fine=False)
    decoded = []
    decode = pipe.codec.decode
    pipe.codec.decode = lambda codes, **kw: decoded.append(codes.shape) or decode(codes, **kw)
    assert pipe("rain", duration_s=0.3, seed=0).audios.shape == (1, 1, int(0.3 * SR))
    assert decoded == [(1, pipe.coarse_lm.config.n_coarse, 8)]  # the first n_coarse of the codec's 4 levels


def test_delay_pattern_coarse_stage_counts_its_steps(encoder, tmp_path):
    """A coarse LM in the delay pattern over 3 of the codec's 4 levels: one sampling step per frame (plus the
    delay), the progress total equal to the steps taken, the folder reloading to the same sound."""
    pipe = tiny_pipeline(encoder, codec="mel-rvq", fine=False, coarse={"coarse_pattern": "delay", "n_coarse": 3})
    seen = []
    out = pipe("rain", duration_s=0.3, seed=0, callback=lambda step, total: seen.append((step, total)))
    assert out.audios.shape == (1, 1, int(0.3 * SR))
    assert seen[-1][0] == seen[-1][1] == 8 + (8 + 2)  # 8 semantic tokens, then 8 frames + the delay of 2 levels
    folder = pipe.save_pretrained(tmp_path / "model")
    loaded = load_pipeline(folder)
    loaded.progress_bar = False
    assert loaded.coarse_lm.config.coarse_pattern == "delay"
    assert np.array_equal(loaded("rain", duration_s=0.3, seed=0).audios, out.audios)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_generate(folder, tmp_path, capsys):
    code = main(["generate", "rain on a roof", "--model", str(folder), "--backend", "tokens", "--duration", "0.3",
                 "--seed", "3", "--num", "2", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 0
    names = sorted(p.split("/")[-1] for p in capsys.readouterr().out.split())
    assert names == ["rain-on-a-roof-3.wav", "rain-on-a-roof-4.wav"]
    meta = json.loads((tmp_path / "out" / "rain-on-a-roof-3.json").read_text())
    assert meta["backend"] == "tokens" and meta["model"] == str(folder)
    code = main(["generate", "rain", "--model", str(folder), "--steps", "10", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and re.search("num_inference_steps does not apply", err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    code = main(["generate", "rain", "--model", str(folder), "--guidance-cutoff", "0.5", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "--guidance-cutoff applies to soundsmith latent-diffusion models" in err


def test_cli_sampling_flags_and_audio_prompt(folder, tmp_path, capsys):
    prompt_clip = tmp_path / "prompt.wav"
    write_audio(prompt_clip, clip(0.2, seed=5)[0].numpy(), SR)
    base = ["generate", "rain", "--model", str(folder), "--duration", "0.4", "--seed", "1", "--no-watermark"]
    assert main(base + ["--out", str(tmp_path / "a.wav"), "--top-k", "5", "--top-p", "0.9",
                        "--temperature", "0.7", "--audio-prompt", str(prompt_clip)]) == 0
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["mode"] == "continuation" and meta["audio_prompt_s"] == pytest.approx(0.2)
    assert meta["sampling"]["coarse"] == {"temperature": 0.7, "top_k": 5, "top_p": 0.9}
    assert main(base + ["--out", str(tmp_path / "b.wav"), "--top-k", "1"]) == 0  # greedy decoding
    assert main(base + ["--out", str(tmp_path / "c.wav"), "--top-k", "1", "--seed", "2"]) == 0  # whatever the seed
    from soundsmith.codecs.audio import read_audio

    b, c = read_audio(tmp_path / "b.wav")[0], read_audio(tmp_path / "c.wav")[0]
    assert np.array_equal(b, c)
    capsys.readouterr()
    for flags, message in ((["--top-k", "0"], "top_k"), (["--top-p", "1.5"], "top_p"),
                           (["--temperature", "0"], "temperature"),
                           (["--audio-prompt", str(tmp_path / "missing.wav")], "missing.wav")):
        assert main(base + ["--out", str(tmp_path / "bad.wav")] + flags) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (flags, err)
        assert not (tmp_path / "bad.wav").exists()


def test_assemble_from_trained_parts(folder, pipe, tmp_path, capsys):
    # each training run exports one part; `soundsmith assemble tokens` joins them into a model folder
    parts = {name: str(folder / name) for name in ("cond_rvq", "kmeans", "semantic_lm", "coarse_lm", "fine_lm",
                                                  "codec")}
    # a linked part must be in the new model's tree (a sibling, as models/clap is): loading follows no other link
    shutil.copytree(folder / "clap", tmp_path / "clap")
    args = ["assemble", "tokens", "--out", str(tmp_path / "joined"), "--clap", str(tmp_path / "clap"), "--link-clap",
            "--fp16"] + [a for name, p in parts.items() for a in (f"--{name.replace('_', '-')}", p)]
    assert main(args) == 0
    joined = tmp_path / "joined"
    config = json.loads((joined / "config.json").read_text())
    assert config["components"]["clap"] == "../clap"  # linked, not copied
    assert config["fingerprints"]["codec"] == pipe.fingerprints()["codec"]
    loaded = load_pipeline(joined)
    loaded.progress_bar = False
    a = loaded("rain", duration_s=0.3, seed=0).audios
    assert a.shape == (1, 1, int(0.3 * SR)) and torch.isfinite(torch.as_tensor(a)).all()
    # a part trained against another codec is refused with the part named, and nothing is written
    other = tiny_pipeline(seed=1, encoder=pipe.conditioner.model.text_encoder)
    other.codec.save_pretrained(tmp_path / "other-codec")
    bad = [a if a != parts["codec"] else str(tmp_path / "other-codec") for a in args]
    bad[bad.index("--out") + 1] = str(tmp_path / "bad")
    assert main(bad) == 2
    assert "codec" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_fingerprint_follows_a_replaced_part(tmp_path, encoder):
    """Assigning a new part (pipe.coarse_lm = ...) is hashed anew: save_pretrained records the new weights, so
    the saved folder loads."""
    from soundsmith.gen.token_lm import build_lm
    from soundsmith.pipelines.tokens import TokenPipeline

    pipe = tiny_pipeline(encoder)
    before = pipe.fingerprint
    old = pipe.part_fingerprint("coarse_lm")
    torch.manual_seed(123)
    pipe.coarse_lm = build_lm(pipe.coarse_lm.config).eval()
    assert pipe.part_fingerprint("coarse_lm") != old and pipe.fingerprint != before
    pipe.save_pretrained(tmp_path / "swapped")
    assert TokenPipeline.from_pretrained(tmp_path / "swapped").part_fingerprint("coarse_lm") == \
        pipe.part_fingerprint("coarse_lm")


def test_guided_stages(encoder):
    """guided_stages picks the stages guidance applies to: with ["semantic"] the coarse stage samples as at
    guidance 1, the semantic plan stays guided; the sidecar says which; an unknown stage is a one-line error."""
    from soundsmith.pipelines.tokens import TokenConfig

    both = tiny_pipeline(encoder, fine=False)
    only = tiny_pipeline(encoder, fine=False, guided_stages=["semantic"])
    calls = {}
    for name, p in (("both", both), ("only", only)):
        seen = []
        original = p.coarse_lm.generate
        p.coarse_lm.generate = lambda *a, _o=original, _s=seen, **k: (_s.append(k["guidance_scale"]), _o(*a, **k))[1]
        out = p("rain", duration_s=0.3, seed=1, guidance_scale=3.0)
        calls[name] = seen
        assert out.parameters["guided_stages"] == list(p.config.guided_stages)
    assert calls == {"both": [3.0], "only": [1.0]}
    with pytest.raises(ValueError, match="guided_stages: 'fine' is not a guided stage") as err:
        TokenConfig(guided_stages=["semantic", "fine"])
    assert "\n" not in str(err.value)
    assert TokenConfig.from_dict({**only.config.to_dict()}).guided_stages == ["semantic"]
