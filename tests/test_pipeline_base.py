"""The shared pipeline plumbing (pipelines/base.py): devices, dtypes, seeds, guidance, progress, output."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from soundsmith.core.runtime import resolve_device, resolve_dtype
from soundsmith.core.weights import weights_fingerprint
from soundsmith.pipelines.base import (
    AudioOutput,
    GenerationCancelled,
    Pipeline,
    Progress,
    check_output_folder,
    prompt_slug,
)
from soundsmith.pipelines.prompts import read_prompts_file
from torch import nn


class ToyPipeline(Pipeline):
    """Two parts, one of them kept in float32 (like a VAE)."""

    backend = "toy"
    component_names = ("model", "decoder")
    upcast_components = ("decoder",)

    def __init__(self):
        super().__init__()
        self.model, self.decoder = nn.Linear(4, 4), nn.Linear(4, 4)

    def __call__(self, *args, **kwargs):  # pragma: no cover - not used
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path, **kwargs):  # pragma: no cover
        return cls()

    def save_pretrained(self, path, **kwargs):  # pragma: no cover
        return path


# ------------------------------------------------------------------------------------ device, dtype


def test_device_and_dtype_resolution():
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="dtype must be one of fp32, fp16, bf16, got 'fp64'"):
        resolve_dtype("fp64")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available here"):
            resolve_device("cuda")


def test_to_keeps_upcast_parts_in_float32():
    pipe = ToyPipeline().to("cpu", "bf16")
    assert pipe.dtype is torch.bfloat16 and pipe.device.type == "cpu"
    assert pipe.model.weight.dtype is torch.bfloat16
    assert pipe.decoder.weight.dtype is torch.float32
    pipe.to(dtype="fp32")
    assert pipe.model.weight.dtype is torch.float32


# ---------------------------------------------------------------------------------------- prompts


def test_check_prompts():
    prompts, negatives = Pipeline.check_prompts("rain", None, 2)
    assert prompts == ["rain"] and negatives == [None]
    prompts, negatives = Pipeline.check_prompts(["a", "b"], ["x", ""], 1)
    assert negatives == ["x", None]  # "" means unconditional
    for bad, message in [("", "prompt is empty"), ("   ", "prompt is empty"), ([], "empty list"),
                         (["ok", ""], r"prompt\[1\] is empty"), ([3], r"prompt\[0\] must be a string")]:
        with pytest.raises(ValueError, match=message):
            Pipeline.check_prompts(bad, None, 1)
    with pytest.raises(ValueError, match="negative_prompt has 1 entries for 2 prompts"):
        Pipeline.check_prompts(["a", "b"], ["x"], 1)
    with pytest.raises(ValueError, match=r"num_waveforms_per_prompt must be an integer in \[1, 64\], got 0"):
        Pipeline.check_prompts("a", None, 0)


# ------------------------------------------------------------------------------------- randomness


def test_seeds_and_generators():
    gens, seeds = Pipeline.make_generators(3, seed=10)
    assert seeds == [10, 11, 12]
    noise = Pipeline.randn((2, 5), gens, torch.device("cpu"))  # [3, 2, 5]
    alone = Pipeline.randn((2, 5), [torch.Generator().manual_seed(11)], torch.device("cpu"))
    assert torch.equal(noise[1:2], alone)  # an output's noise does not depend on its batch neighbours
    assert Pipeline.make_generators(2, seed=2**63 - 2)[1] == [2**63 - 2, 2**63 - 1]
    with pytest.raises(ValueError, match=r"seed 9223372036854775807 is too large for 2 outputs"):
        Pipeline.make_generators(2, seed=2**63 - 1)  # no wrap to seed 0 (that would repeat seed 0's output)
    _, seeds = Pipeline.make_generators(2, seed=[5, 9])
    assert seeds == [5, 9]
    g = torch.Generator().manual_seed(0)
    gens, seeds = Pipeline.make_generators(2, generator=g)
    assert gens == [g, g] and seeds == [None, None]
    _, random_seeds = Pipeline.make_generators(2)
    assert all(0 <= s < 2**63 for s in random_seeds) and random_seeds[0] != random_seeds[1]
    with pytest.raises(ValueError, match="give seed or generator, not both"):
        Pipeline.make_generators(1, seed=1, generator=g)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63-1\], got -1"):
        Pipeline.make_generators(1, seed=-1)
    with pytest.raises(ValueError, match="seed has 1 entries for 2 outputs"):
        Pipeline.make_generators(2, seed=[1])
    with pytest.raises(ValueError, match="a list of 2"):
        Pipeline.make_generators(2, generator=[g])


def test_guidance_batching():
    x = torch.randn(2, 3)
    assert torch.equal(Pipeline.cfg_batch(x, True), torch.cat([x, x]))
    assert Pipeline.cfg_batch(x, False) is x
    uncond, cond = torch.zeros(2, 3), torch.ones(2, 3)
    out = Pipeline.cfg_combine(torch.cat([uncond, cond]), 3.0, True)
    assert torch.equal(out, torch.full((2, 3), 3.0))


def test_progress_callback_and_cancel():
    calls = []
    with Progress(3, lambda step, total: calls.append((step, total)), enabled=False) as progress:
        for _ in range(3):
            progress.step()
    assert calls == [(1, 3), (2, 3), (3, 3)]  # returning None continues
    progress = Progress(5, lambda step, total: step < 2, enabled=False)
    progress.step()
    with pytest.raises(GenerationCancelled, match="step 2 of 5"):
        progress.step()


def test_finish_reports_the_watermark_state():
    from soundsmith.pipelines.watermark import detect

    pipe = ToyPipeline()
    audio, watermarked = pipe.finish(torch.zeros(1, 1, 10, dtype=torch.bfloat16), watermark=True, sample_rate=16000)
    assert audio.dtype is torch.float32 and watermarked is False  # shorter than a watermark block: unmarked
    noise = 0.1 * torch.randn(1, 1, 16000, generator=torch.Generator().manual_seed(0))
    audio, watermarked = pipe.finish(noise, watermark=True, sample_rate=16000)
    found = detect(audio[0], 16000)
    assert watermarked is True and found.present and found.payload == pipe.watermark_payload
    assert pipe.watermark_record(True)["watermark_payload"] == pipe.watermark_payload
    assert torch.equal(pipe.finish(noise, watermark=False)[0], noise)  # off: untouched


def test_weights_fingerprint_survives_fp16_export():
    model = nn.Linear(3, 3)
    half = nn.Linear(3, 3).half()
    half.load_state_dict({k: v.half() for k, v in model.state_dict().items()})
    assert weights_fingerprint(model) == weights_fingerprint(half)
    with torch.no_grad():
        model.weight[0, 0] += 1.0
    assert weights_fingerprint(model) != weights_fingerprint(half)


# ----------------------------------------------------------------------------------------- output


def make_output(n: int = 2) -> AudioOutput:
    t = torch.linspace(0, 1, 1600)
    audios = torch.stack([0.3 * torch.sin(2 * torch.pi * (200 + 100 * i) * t)[None] for i in range(n)])
    return AudioOutput(audios, 16000, ["Rain on a tin roof!", "rain on a tin roof"][:n], [7, None][:n],
                       [0.5, 0.25][:n], {"scheduler": "ddim", "num_inference_steps": 3})


def test_slug():
    assert prompt_slug("Rain on a tin roof!") == "rain-on-a-tin-roof"
    assert prompt_slug("Café — ünïcode") == "caf-ncode"
    assert prompt_slug("!!!") == "audio"
    assert len(prompt_slug("word " * 40)) <= 48


def test_save_wav_with_sidecars(tmp_path):
    out = make_output()
    paths = out.save(tmp_path / "new" / "folder")
    assert [p.name for p in paths] == ["rain-on-a-tin-roof-7.wav", "rain-on-a-tin-roof-i1.wav"]
    wave, sr = sf.read(paths[0], dtype="float32")
    assert sr == 16000 and np.abs(wave - out.audios[0, 0].numpy()).max() < 1e-4
    meta = json.loads(paths[0].with_suffix(".json").read_text())
    assert meta["prompt"] == "Rain on a tin roof!" and meta["seed"] == 7 and meta["clap_score"] == 0.5
    assert meta["scheduler"] == "ddim" and meta["num_inference_steps"] == 3 and meta["num_samples"] == 1600
    again = out.save(tmp_path / "new" / "folder")  # never overwrites by default
    assert again[0].name == "rain-on-a-tin-roof-7-2.wav"
    assert not list((tmp_path / "new" / "folder").glob(".*.part"))  # atomic writes leave no temp files


def test_save_flac_and_file_target(tmp_path):
    paths = make_output().save(tmp_path, format="flac")
    assert all(p.suffix == ".flac" and p.with_suffix(".json").is_file() for p in paths)
    paths = make_output().save(tmp_path / "take.wav")
    assert [p.name for p in paths] == ["take.wav", "take-2.wav"]
    with pytest.raises(ValueError, match="format must be one of wav, flac, got 'mp3'"):
        make_output().save(tmp_path, format="mp3")


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OSError, match="output folder"):
        check_output_folder(blocker)
    with pytest.raises(OSError, match="cannot be created"):
        check_output_folder(blocker / "sub")
    with pytest.raises(OSError):
        make_output().save(blocker / "sub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_read_prompts_file(tmp_path):
    (tmp_path / "p.txt").write_text("# header\nrain\n\n  wind in trees \n")
    assert read_prompts_file(tmp_path / "p.txt") == ["rain", "wind in trees"]
    (tmp_path / "p.csv").write_text('id,prompt\n1,"rain, heavy"\n2,dog\n')
    assert read_prompts_file(tmp_path / "p.csv") == ["rain, heavy", "dog"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n\n{"caption": "b", "label": "x"}\n')
    assert read_prompts_file(tmp_path / "p.jsonl") == ["a", "b"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"label": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: no caption field"):
        read_prompts_file(tmp_path / "bad.jsonl")
    (tmp_path / "nocol.csv").write_text("id,label\n1,x\n")
    with pytest.raises(ValueError, match="nocol.csv: no caption column"):
        read_prompts_file(tmp_path / "nocol.csv")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="no prompts found"):
        read_prompts_file(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="prompts file not found"):
        read_prompts_file(tmp_path / "missing.txt")
