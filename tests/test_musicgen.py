"""MusicGen folders through load_pipeline (pipelines/musicgen.py), against transformers' own `generate`.

The checkpoint is a tiny random MusicGen in the published layout (tests/musicgen_helpers.py).
"""

import contextlib

import numpy as np
import pytest
import torch
from musicgen_helpers import SR, K, write_tiny_musicgen
from soundsmith.pipelines import load_pipeline
from soundsmith.pipelines.base import GenerationCancelled
from soundsmith.pipelines.musicgen import MusicgenPipeline

from soundsmith.cli import main

FRAME_S = 1 / 200  # the tiny EnCodec's hop (musicgen_helpers)
PROMPTS = ["a jazzy piano trio", "rain on a tin roof with thunder"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # MusicGen's published generation defaults, with a short window (56 frames) to exercise long-form
    return write_tiny_musicgen(tmp_path_factory.mktemp("musicgen"), max_length=60)


@pytest.fixture(scope="module")
def pipe(folder):
    pipe = load_pipeline(folder)
    pipe.progress_bar = False
    return pipe


@pytest.fixture(scope="module")
def reference(folder):
    from transformers import MusicgenForConditionalGeneration, MusicgenProcessor

    return (MusicgenForConditionalGeneration.from_pretrained(str(folder)).eval(),
            MusicgenProcessor.from_pretrained(str(folder)))


@contextlib.contextmanager
def recorded_codes(model):
    """Record the codes every `audio_encoder.decode` call receives (both implementations decode through it)."""
    seen = []
    original = model.audio_encoder.decode

    def decode(audio_codes, *args, **kwargs):
        seen.append(audio_codes[0].clone())  # [B, K, S]
        return original(audio_codes, *args, **kwargs)

    model.audio_encoder.decode = decode
    try:
        yield seen
    finally:
        del model.audio_encoder.decode


def test_load_pipeline_detects_musicgen(pipe):
    assert isinstance(pipe, MusicgenPipeline)
    assert pipe.sample_rate == SR and pipe.frame_rate == 200 and pipe.num_codebooks == K
    assert pipe.window_frames == 60 - K


def test_a_vocoder_is_refused(folder):
    with pytest.raises(ValueError, match="decodes with its own decoder: it takes no vocoder"):
        load_pipeline(folder, vocoder="griffin-lim")


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_greedy_matches_transformers_generate(pipe, reference, guidance):
    model, processor = reference
    frames = 30
    inputs = processor(text=PROMPTS, padding=True, return_tensors="pt")
    with recorded_codes(model) as theirs, torch.no_grad():
        expected = model.generate(**inputs, do_sample=False, guidance_scale=guidance, max_new_tokens=frames + K - 1)
    with recorded_codes(pipe.model) as ours:
        out = pipe(PROMPTS, duration_s=frames * FRAME_S, do_sample=False, guidance_scale=guidance, watermark=False)
    assert ours[0].shape == theirs[0].shape == (2, K, frames)
    assert torch.equal(ours[0], theirs[0])  # the same tokens ...
    assert out.audios.shape == expected.shape == (2, 1, frames * 40)
    torch.testing.assert_close(out.audios, expected, rtol=0, atol=1e-6)  # ... and the same audio


def test_greedy_continuation_matches_transformers_generate(pipe, reference):
    model, processor = reference
    t = np.arange(int(0.06 * SR)) / SR  # 12 frames of prompt
    clip = (0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size))
    clip = clip.astype(np.float32)
    total, given = 40, 12
    inputs = processor(audio=[clip, clip], sampling_rate=SR, text=PROMPTS, padding=True, return_tensors="pt")
    with recorded_codes(model) as theirs, torch.no_grad():
        expected = model.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=total + K - 1 - given)
    with recorded_codes(pipe.model) as ours:
        out = pipe(PROMPTS, duration_s=total * FRAME_S, audio_prompt=(clip[None], SR), do_sample=False,
                   watermark=False)
    assert ours[0].shape == theirs[0].shape == (2, K, total)
    assert torch.equal(ours[0], theirs[0])
    torch.testing.assert_close(out.audios, expected[..., :out.audios.shape[-1]], rtol=0, atol=1e-6)
    assert out.parameters["mode"] == "continuation"


def test_sampling_is_seeded_per_output(pipe):
    kwargs = {"duration_s": 20 * FRAME_S, "watermark": False, "top_k": 8, "temperature": 1.2}
    with recorded_codes(pipe.model) as codes:
        a = pipe(PROMPTS, seed=[5, 6], **kwargs)
        b = pipe(PROMPTS, seed=[5, 6], **kwargs)
        alone = pipe(PROMPTS[0], seed=5, **kwargs)  # output 0 does not depend on the batch it was made in
        other = pipe(PROMPTS[0], seed=7, **kwargs)
    assert torch.equal(a.audios, b.audios) and a.seeds == [5, 6]
    assert torch.equal(codes[2][0], codes[0][0]) and not torch.equal(codes[3][0], codes[0][0])
    assert len(codes[0][0].unique()) > 8  # sampled, not greedy
    torch.testing.assert_close(alone.audios[0], a.audios[0], rtol=0, atol=1e-5)
    assert not torch.allclose(other.audios[0], a.audios[0])
    chunked = pipe(PROMPTS, seed=[5, 6], batch_size=1, **kwargs)
    torch.testing.assert_close(chunked.audios, a.audios, rtol=0, atol=1e-5)
    g = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(5), **kwargs)
    assert g.seeds == [None] and torch.equal(g.audios[0], alone.audios[0])


def test_long_form_windows_and_negative_prompt(pipe):
    window = pipe.window_frames  # 56 frames
    single = pipe(PROMPTS[0], duration_s=window * FRAME_S, do_sample=False, watermark=False)
    with recorded_codes(pipe.model) as codes:
        long = pipe(PROMPTS[0], duration_s=130 * FRAME_S, do_sample=False, watermark=False)
    assert long.parameters["windows"] == 4 and long.audios.shape[-1] == 130 * 40  # 56, then +34 (22 kept) x 3
    with recorded_codes(pipe.model) as first:
        pipe(PROMPTS[0], duration_s=window * FRAME_S, do_sample=False, watermark=False)
    assert torch.equal(codes[0][..., :window], first[0])  # the first window is the single pass
    assert single.audios.shape[-1] == window * 40
    negative = pipe(PROMPTS[0], duration_s=window * FRAME_S, do_sample=False, watermark=False,
                    negative_prompt="thunder over the sea")
    assert not torch.allclose(negative.audios, single.audios)


def test_callback_cancels(pipe):
    calls = []

    def stop(step, total):
        calls.append((step, total))
        return step < 3

    with pytest.raises(GenerationCancelled):
        pipe(PROMPTS[0], duration_s=10 * FRAME_S, callback=stop, seed=0)
    assert calls[-1] == (3, 10 + K - 1)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"prompt": ""}, "prompt is empty"),
    ({"duration_s": 0}, "duration_s must be a finite number in (0, 300]"),
    ({"duration_s": 301}, "duration_s must be a finite number in (0, 300]"),
    ({"top_k": 0}, "top_k must be an integer in [1, inf]"),
    ({"top_p": 0.0}, "top_p must be a finite number in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be a finite number in (0, 1]"),
    ({"temperature": 0}, "temperature must be a finite number in (0,"),
    ({"guidance_scale": -1}, "guidance_scale must be a finite number in [0, 100]"),
    ({"num_inference_steps": 10}, "do not apply to MusicGen"),
    ({"audio_prompt": (np.zeros((1, 800), np.float32), SR)}, "audio_prompt is silent"),
    ({"audio_prompt": (np.full((1, 10), 0.5, np.float32), SR)}, "audio_prompt is too short"),
    ({"audio_prompt": (np.full((1, 800), 0.5, np.float32), SR), "duration_s": 0.05}, "must be shorter than duration_s"),
    ({"audio_prompt": np.full((1, 800), 0.5, np.float32)}, "audio_prompt must be (wave, sample_rate)"),
])
def test_bad_inputs_are_one_line_errors(pipe, kwargs, needle):
    kwargs = {"prompt": PROMPTS[0], "duration_s": 10 * FRAME_S, **kwargs}
    with pytest.raises(ValueError) as err:
        pipe(kwargs.pop("prompt"), **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_save_pretrained_and_cli(pipe, folder, tmp_path, capsys):
    from transformers import MusicgenForConditionalGeneration

    saved = pipe.save_pretrained(tmp_path / "copy")
    MusicgenForConditionalGeneration.from_pretrained(str(saved))  # still a transformers folder
    again = load_pipeline(saved, device="cpu", dtype="fp32")
    again.progress_bar = False
    a = pipe(PROMPTS[0], duration_s=10 * FRAME_S, seed=1, watermark=False)
    b = again(PROMPTS[0], duration_s=10 * FRAME_S, seed=1, watermark=False)
    assert torch.equal(a.audios, b.audios)
    assert main(["generate", "a jazzy piano trio", "--model", str(folder), "--duration", "0.05", "--seed", "3",
                 "--out", str(tmp_path / "out")]) == 0
    written = capsys.readouterr().out.split()
    assert len(written) == 1 and written[0].endswith("-3.wav")
    assert main(["generate", "x", "--model", str(folder), "--steps", "5", "--out", str(tmp_path / "o2")]) == 2
    assert "do not apply to MusicGen" in capsys.readouterr().err
    (tmp_path / "notok").mkdir()
    (tmp_path / "notok" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no T5 tokenizer"):
        load_pipeline(tmp_path / "notok")
