"""LoRA adapters at inference (issue 20): `load_pipeline(path, adapters=[...], adapter_scales=[...])` for both
backends, `soundsmith generate --adapter`, the batch manifest, `soundsmith assemble merge` (our layout, and a
diffusers AudioLDM folder checked against diffusers' own `AudioLDMPipeline`) and the app's adapter picker.

Tiny random models (tests/ldm_helpers.py, tests/token_helpers.py, the parity test's AudioLDM parts). Test adapters
are made as a LoRA run makes them, `gen.adapters.add_lora` + `save_adapter`, with the B matrices drawn at random
(peft starts B at zero: a fresh adapter changes nothing). The model adapted in memory is the reference: the
adapter saved, loaded and applied must give its audio within 1e-5 for the same seed.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import ldm_helpers
import numpy as np
import pytest
import soundfile as sf
import token_helpers
import torch
from soundsmith.gen.adapters import add_lora, has_lora, save_adapter
from soundsmith.gen.text_encoder import SentenceEncoder
from soundsmith.pipelines import load_pipeline
from soundsmith.pipelines.adapters import adapter_fingerprint, apply_adapters

from soundsmith.cli import main

# diffusers' schedulers trip a numpy 2 deprecation (np.array(..., copy=False) on a tensor): not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TOL = 1e-5  # adapter loaded from its folder vs the model adapted in memory; merged vs adapter applied
PCM = 2 / 32768  # a 16-bit WAV of the same audio
LDM_CALL = dict(duration_s=0.5, seed=3, watermark=False, loudness_lufs=None)
TOKEN_CALL = dict(seed=3, watermark=False, loudness_lufs=None)
PROMPT = "rain on a tin roof"


def perturb_lora(model: torch.nn.Module, seed: int, std: float) -> None:
    """Draw the LoRA B matrices (peft initialises them to zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def loaded(folder, **kwargs):
    pipe = load_pipeline(folder, **kwargs)
    pipe.progress_bar = False
    return pipe


def adapt_in_memory(pipe, attr: str, out: Path, *, seed: int = 0, std: float = 0.1, rank: int = 2) -> Path:
    """Add a LoRA adapter to `pipe.<attr>` in place (the in-memory adapted model), draw it, save it to `out`."""
    model = getattr(pipe, attr)
    add_lora(model, rank=rank)
    perturb_lora(model, seed, std)
    save_adapter(model, out, base_model=pipe.name_or_path)
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("soundsmith:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()  # the packaged MiniLM, offline; shared by every tiny CLAP here


@pytest.fixture(scope="module")
def ldm_world(tmp_path_factory, encoder):
    models = tmp_path_factory.mktemp("ldm-adapters") / "models"
    ldm_helpers.tiny_pipeline(encoder).save_pretrained(models / "ldm")
    ldm_helpers.tiny_pipeline(encoder, seed=1).save_pretrained(models / "ldm-other")  # another UNet (and parts)
    memory = loaded(models / "ldm")
    adapter = adapt_in_memory(memory, "unet", models / "adapters" / "unet-a")
    second = adapt_in_memory(loaded(models / "ldm"), "unet", models / "adapters" / "unet-b", seed=2)
    other = adapt_in_memory(loaded(models / "ldm-other"), "unet", models / "adapters" / "unet-other", seed=1)
    base = loaded(models / "ldm")
    return {"models": models, "model": models / "ldm", "other_model": models / "ldm-other", "adapter": adapter,
            "second": second, "other": other, "memory": memory, "base": base,
            "memory_audio": memory(PROMPT, **LDM_CALL).audios, "base_audio": base(PROMPT, **LDM_CALL).audios}


def confident_token_pipeline(encoder, **kwargs):
    """The tiny random token pipeline with its (weight-tied) token tables x30: a random LM's logits are near zero
    (tables of std 0.02 after a LayerNorm), so it samples almost uniformly whatever its layers compute, and an
    adapter of those layers would change no token."""
    pipe = token_helpers.tiny_pipeline(encoder, **kwargs)
    with torch.no_grad():
        for lm in (pipe.semantic_lm, pipe.coarse_lm, pipe.fine_lm):
            for name, p in (lm.named_parameters() if lm is not None else ()):
                if name.endswith("table.weight"):
                    p.mul_(30.0)
    return pipe


@pytest.fixture(scope="module")
def tokens_world(tmp_path_factory, encoder):
    models = tmp_path_factory.mktemp("token-adapters") / "models"
    confident_token_pipeline(encoder).save_pretrained(models / "tokens")
    confident_token_pipeline(encoder, fine=False).save_pretrained(models / "tokens-no-fine")
    memory = loaded(models / "tokens")
    adapters = [adapt_in_memory(memory, attr, models / "adapters" / attr, seed=i, std=0.5)
                for i, attr in enumerate(("semantic_lm", "coarse_lm", "fine_lm"))]
    base = loaded(models / "tokens")
    return {"models": models, "model": models / "tokens", "adapters": adapters, "memory": memory, "base": base,
            "memory_audio": memory(PROMPT, **TOKEN_CALL).audios, "base_audio": base(PROMPT, **TOKEN_CALL).audios}


# ------------------------------------------------------------------------------------------ load_pipeline


def test_ldm_adapter_round_trip_gives_the_in_memory_models_audio(ldm_world, tmp_path):
    w = ldm_world
    pipe = loaded(w["model"], adapters=[w["adapter"]], adapter_scales=[1.0])
    out = pipe(PROMPT, **LDM_CALL)
    assert (out.audios - w["memory_audio"]).abs().max() <= TOL
    assert (out.audios - w["base_audio"]).abs().max() > 1e-2  # the adapter is not a no-op
    (record,) = out.parameters["adapters"]
    assert record == {"folder": str(w["adapter"]), "component": "unet", "scale": 1.0,
                      "base_fingerprint": w["base"].part_fingerprint("unet"),
                      "fingerprint": adapter_fingerprint(w["adapter"]), "lora_rank": 2}
    (wav,) = out.save(tmp_path)
    assert json.loads(wav.with_suffix(".json").read_text())["adapters"] == [record]  # the sidecar
    assert w["base"](PROMPT, **LDM_CALL).parameters["adapters"] == []
    # the pipeline's fingerprint (batch manifests, the watermark payload) covers the adapter and its scale
    assert pipe.fingerprint != w["base"].fingerprint
    assert pipe.part_fingerprint("unet") == w["base"].part_fingerprint("unet")  # the base weights' hash
    marked = pipe(PROMPT, duration_s=0.5, seed=3)
    assert marked.parameters["watermark_payload"] == pipe.watermark_payload != w["base"].watermark_payload


def test_scale_zero_is_the_base_model_and_scales_combine(ldm_world):
    w = ldm_world
    zero = loaded(w["model"], adapters=str(w["adapter"]), adapter_scales=0)  # one folder, one number: diffusers-like
    assert torch.equal(zero(PROMPT, **LDM_CALL).audios, w["base_audio"])
    # two adapters, one scale each: the second at 0 leaves the first alone; at 1 both apply
    pair = loaded(w["model"], adapters=[w["adapter"], w["second"]], adapter_scales=[1.0, 0.0])
    assert (pair(PROMPT, **LDM_CALL).audios - w["memory_audio"]).abs().max() <= TOL
    assert [a["scale"] for a in pair.adapters] == [1.0, 0.0]
    both = loaded(w["model"], adapters=[w["adapter"], w["second"]])
    assert (both(PROMPT, **LDM_CALL).audios - w["memory_audio"]).abs().max() > 1e-3
    assert len({zero.fingerprint, pair.fingerprint, both.fingerprint}) == 3


def test_tokens_adapters_round_trip_gives_the_in_memory_models_audio(tokens_world):
    w = tokens_world
    pipe = loaded(w["model"], adapters=w["adapters"])
    out = pipe(PROMPT, **TOKEN_CALL)
    assert out.audios.shape == w["memory_audio"].shape
    assert (out.audios - w["memory_audio"]).abs().max() <= TOL
    assert (out.audios - w["base_audio"]).abs().max() > 1e-3  # the adapters change the sampled tokens
    assert [a["component"] for a in out.parameters["adapters"]] == ["semantic_lm", "coarse_lm", "fine_lm"]
    zero = loaded(w["model"], adapters=w["adapters"], adapter_scales=0.0)
    assert torch.equal(zero(PROMPT, **TOKEN_CALL).audios, w["base_audio"])


def test_an_adapter_for_another_base_or_component_is_refused_in_one_line(ldm_world, tokens_world, tmp_path):
    w = ldm_world
    other_unet = loaded(w["other_model"]).part_fingerprint("unet")
    with pytest.raises(ValueError) as err:
        load_pipeline(w["other_model"], adapters=[w["adapter"]])
    message = str(err.value)
    assert "\n" not in message and str(w["adapter"]) in message and "another base model" in message
    assert w["base"].part_fingerprint("unet") in message and other_unet in message  # both fingerprints
    # an adapter of a component the backend lacks: refused before anything loads
    coarse = tokens_world["adapters"][1]
    with pytest.raises(ValueError, match=r"coarse_lm: an adapter for the coarse_lm, which the ldm model in .* does not "
                                         r"have \(its adaptable parts: unet\)"):
        load_pipeline(w["model"], adapters=[coarse])
    with pytest.raises(ValueError, match=r"an adapter for the unet, which the tokens model in .* does not have"):
        load_pipeline(tokens_world["model"], adapters=[w["adapter"]])
    with pytest.raises(ValueError, match=r"an adapter for the fine_lm, which the tokens model .* does not have \(it "
                                         r"was saved without one\)"):
        load_pipeline(tokens_world["models"] / "tokens-no-fine", adapters=[tokens_world["adapters"][2]])
    # a refused adapter leaves an already loaded pipeline as it was
    pipe = loaded(w["other_model"])
    with pytest.raises(ValueError, match="another base model"):
        apply_adapters(pipe, [w["second"], w["adapter"]])
    assert not has_lora(pipe.unet) and pipe.adapters == []
    # models that take none: MusicGen (refused before loading), and scales that do not fit
    musicgen = tmp_path / "musicgen"
    musicgen.mkdir()
    (musicgen / "config.json").write_text(json.dumps({"model_type": "musicgen"}))
    with pytest.raises(ValueError, match="the musicgen model in .* takes no LoRA adapters"):
        load_pipeline(musicgen, adapters=[w["adapter"]])
    for kwargs, needle in (
            ({"adapters": [w["adapter"]], "adapter_scales": [1.0, 0.5]}, "adapter_scales has 2 values for 1 adapters"),
            ({"adapters": [w["adapter"]], "adapter_scales": 2.5}, r"adapter scale must be a finite number in \[0, 2\]"),
            ({"adapters": [], "adapter_scales": [0.5]}, "adapter_scales given without adapters"),
            ({"adapters": [w["adapter"], w["adapter"]]}, "is given twice"),
            ({"adapters": [w["model"]]}, "is not a soundsmith adapter folder: it has no soundsmith_adapter.json"),
            ({"adapters": [tmp_path / "nowhere"]}, "adapter folder not found")):
        with pytest.raises((ValueError, FileNotFoundError), match=needle):
            load_pipeline(w["model"], **kwargs)


def test_an_adapted_pipeline_does_not_save_as_a_plain_one(ldm_world, tmp_path):
    pipe = loaded(ldm_world["model"], adapters=[ldm_world["adapter"]])
    with pytest.raises(ValueError, match="carries LoRA adapters .*merge them"):
        pipe.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


# -------------------------------------------------------------------------------------------------- CLI


def test_generate_with_an_adapter(ldm_world, tmp_path):
    w = ldm_world
    out = tmp_path / "clips"
    args = ["generate", PROMPT, "--model", str(w["model"]), "--seed", "3", "--duration", "0.5", "--no-watermark",
            "--no-loudness", "--out", str(out), "--adapter", str(w["adapter"])]
    assert main(args) == 0
    (wav,) = out.glob("*.wav")
    audio, _ = sf.read(wav, dtype="float32")
    assert np.abs(audio - w["memory_audio"][0, 0].numpy()).max() <= PCM
    (record,) = json.loads(wav.with_suffix(".json").read_text())["adapters"]
    assert record["folder"] == str(w["adapter"]) and record["scale"] == 1.0
    assert main([*args, "--adapter-scale", "0", "--out", str(tmp_path / "zero")]) == 0  # the last --out wins
    (wav,) = (tmp_path / "zero").glob("*.wav")
    assert np.abs(sf.read(wav, dtype="float32")[0] - w["base_audio"][0, 0].numpy()).max() <= PCM


@pytest.mark.parametrize("extra, needle", [
    (["--adapter", "{M}/nowhere"], r"adapter folder not found: .*nowhere"),
    (["--adapter", "{M}/ldm"], r"ldm is not a soundsmith adapter folder: it has no soundsmith_adapter.json"),
    (["--adapter", "{A}", "--adapter-scale", "3"], r"argument --adapter-scale: must be in \[0, 2.0\], got 3.0"),
    (["--adapter", "{A}", "--adapter-scale", "strong"], r"argument --adapter-scale: must be a number, got 'strong'"),
    (["--adapter-scale", "0.5"], r"--adapter-scale needs --adapter DIR"),
    (["--adapter", "{A}", "--adapter-scale", "1", "--adapter-scale", "0.5"],
     r"--adapter-scale is given 2 times for 1 --adapter folder\(s\)"),
    (["--adapter", "{A}", "--adapter", "{A}"], r"is given twice"),
    (["--adapter", "{M}/adapters/unet-other"], r"unet-other: adapter trained on another base model \(its base unet "
                                               r"\w+, this one \w+\)"),
    (["--adapter", "{T}"], r"an adapter for the coarse_lm, which the ldm model in .* does not have"),
])
def test_bad_adapter_arguments_are_one_line_and_write_nothing(ldm_world, tokens_world, tmp_path, capsys, extra,
                                                             needle):
    import re

    w = ldm_world
    out = tmp_path / "never"
    fill = {"{M}": str(w["models"]), "{A}": str(w["adapter"]), "{T}": str(tokens_world["adapters"][1])}
    extra = [next((part.replace(k, v) for k, v in fill.items() if k in part), part) for part in extra]
    try:
        code = main(["generate", PROMPT, "--model", str(w["model"]), "--duration", "0.5", "--out", str(out), *extra])
    except SystemExit as stop:  # argparse refuses a bad value before anything runs
        code = stop.code
    assert code == 2
    line = one_error_line(capsys)
    assert re.search(needle, line), line
    assert not out.exists()


def test_the_batch_manifest_refuses_a_resume_with_other_adapters(ldm_world, tmp_path, capsys):
    w = ldm_world
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a bell\na dog barks\n")
    out = tmp_path / "batch"
    args = ["generate", "--prompts-file", str(prompts), "--model", str(w["model"]), "--seed", "0", "--duration",
            "0.5", "--no-watermark", "--out", str(out)]
    assert main([*args, "--adapter", str(w["adapter"])]) == 0
    header = json.loads((out / "generate_manifest.jsonl").read_text().splitlines()[0])
    assert header["arguments"]["adapters"] == [["unet", adapter_fingerprint(w["adapter"]), 1.0]]
    assert main([*args, "--adapter", str(w["adapter"])]) == 0  # the same adapters: resumes (all done)
    capsys.readouterr()
    for other in (["--adapter", str(w["adapter"]), "--adapter-scale", "0.5"], ["--adapter", str(w["second"])], []):
        assert main([*args, *other]) == 2
        line = one_error_line(capsys)
        assert "holds clips generated with other settings (adapters: " in line, line
    assert len(list(out.glob("*.wav"))) == 2
    # a manifest written before adapters existed ran without any: it still resumes
    plain = tmp_path / "plain"
    plain_args = [*args[:-1], str(plain)]
    assert main(plain_args) == 0
    lines = (plain / "generate_manifest.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    del header["arguments"]["adapters"], header["arguments"]["adapter_folders"]
    (plain / "generate_manifest.jsonl").write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert main(plain_args) == 0
    assert main([*plain_args, "--adapter", str(w["adapter"])]) == 2


# ---------------------------------------------------------------------------------------- assemble merge


def test_assemble_merge_equals_the_adapter_applied(ldm_world, tokens_world, tmp_path, capsys):
    w = ldm_world
    merged = tmp_path / "ldm-merged"
    assert main(["assemble", "merge", "--model", str(w["model"]), "--adapter", str(w["adapter"]), "--out",
                 str(merged)]) == 0
    assert capsys.readouterr().out.strip() == str(merged)
    pipe = loaded(merged)
    assert pipe.adapters == [] and not has_lora(pipe.unet) and not list(merged.rglob("adapter_config.json"))
    assert (pipe(PROMPT, **LDM_CALL).audios - w["memory_audio"]).abs().max() <= TOL
    assert pipe.part_fingerprint("unet") != w["base"].part_fingerprint("unet")  # new weights, a new fingerprint
    record = json.loads((merged / "soundsmith_merge.json").read_text())
    assert record["base_model"] == str(w["model"]) and record["adapters"][0]["folder"] == str(w["adapter"])
    # the token model: three adapters, one per LM, at their scales
    t = tokens_world
    merged = tmp_path / "tokens-merged"
    scales = ["1", "0.5", "1"]
    assert main(["assemble", "merge", "--model", str(t["model"]), "--out", str(merged),
                 *[arg for a, s in zip(t["adapters"], scales) for arg in ("--adapter", str(a), "--adapter-scale", s)]]
                ) == 0
    adapted = loaded(t["model"], adapters=t["adapters"], adapter_scales=[1.0, 0.5, 1.0])(PROMPT, **TOKEN_CALL)
    assert (loaded(merged)(PROMPT, **TOKEN_CALL).audios - adapted.audios).abs().max() <= TOL
    # bad: an --out that holds files, an adapter of another base: one line, nothing written
    capsys.readouterr()
    assert main(["assemble", "merge", "--model", str(w["model"]), "--adapter", str(w["adapter"]), "--out",
                 str(w["models"])]) == 2
    assert "already exists and is not empty" in one_error_line(capsys)
    assert main(["assemble", "merge", "--model", str(w["model"]), "--adapter", str(w["other"]), "--out",
                 str(tmp_path / "never")]) == 2
    assert "adapter trained on another base model" in one_error_line(capsys)
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never*"))
    try:
        main(["assemble", "merge", "--model", str(w["model"]), "--out", str(tmp_path / "never")])
    except SystemExit as stop:
        assert stop.code == 2
    assert "the following arguments are required: --adapter" in one_error_line(capsys)


# --------------------------------------------------------------------------- a diffusers AudioLDM folder


@pytest.fixture(scope="module")
def audioldm_world(tmp_path_factory):
    """The parity tests' tiny random AudioLDM folder, and an adapter of its UNet made in memory."""
    from diffusers import AudioLDMPipeline
    from test_ldm_diffusers_parity import text_config, tiny_parts, tiny_tokenizer
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    unet, vae, vocoder, scheduler = tiny_parts()
    tokenizer = tiny_tokenizer()
    text_encoder = ClapTextModelWithProjection(ClapTextConfig(**text_config(len(tokenizer)))).eval()
    root = tmp_path_factory.mktemp("audioldm-adapters")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        AudioLDMPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                         vocoder=vocoder).save_pretrained(root / "audioldm")
    memory = loaded(root / "audioldm")
    adapter = adapt_in_memory(memory, "unet", root / "adapter", std=0.05)
    return {"root": root, "model": root / "audioldm", "adapter": adapter, "memory": memory}


def test_a_merged_diffusers_folder_loads_in_diffusers_with_our_output(audioldm_world, tmp_path):
    from test_ldm_diffusers_parity import TOL as PARITY_TOL
    from test_ldm_diffusers_parity import reference_audioldm

    w = audioldm_world
    merged = tmp_path / "merged"
    assert main(["assemble", "merge", "--model", str(w["model"]), "--adapter", str(w["adapter"]), "--out",
                 str(merged)]) == 0
    # diffusers' layout: the same model_index.json and parts, the UNet written by diffusers' save_pretrained
    assert (merged / "model_index.json").read_text() == (w["model"] / "model_index.json").read_text()
    assert not (merged / "config.json").exists()
    assert {p.name for p in (merged / "unet").iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors"}
    for part in ("vae", "vocoder", "text_encoder", "tokenizer", "scheduler"):
        assert sorted(p.name for p in (merged / part).iterdir()) == sorted(p.name for p in (w["model"] / part).iterdir())
    call = dict(duration_s=0.97, num_inference_steps=4, guidance_scale=2.5, seed=7, watermark=False,
                loudness_lufs=None)
    ref = reference_audioldm(merged)("a dog barks", audio_length_in_s=0.97, num_inference_steps=4, guidance_scale=2.5,
                                     generator=torch.Generator().manual_seed(7), output_type="np").audios  # [1, T]
    ours = loaded(merged)("a dog barks", **call).audios
    assert ref.std() > 0.01  # a real signal
    assert np.abs(ours[:, 0].numpy() - ref).max() <= PARITY_TOL  # diffusers' pipeline = ours on the merged folder
    adapted = loaded(w["model"], adapters=[w["adapter"]])("a dog barks", **call).audios
    assert (ours - adapted).abs().max() <= TOL  # merged = adapter applied
    assert (adapted - w["memory"]("a dog barks", **call).audios).abs().max() <= TOL  # = the in-memory model
    base = reference_audioldm(w["model"])("a dog barks", audio_length_in_s=0.97, num_inference_steps=4,
                                          guidance_scale=2.5, generator=torch.Generator().manual_seed(7),
                                          output_type="np").audios
    assert np.abs(base - ref).max() > 1e-3  # the adapter is not a no-op


# --------------------------------------------------------------------------------------------------- app


def test_the_app_offers_the_models_adapters_and_generates_with_them(encoder, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from app_helpers import ENTRY, app_env, tiny_model_dir
    from streamlit.testing.v1 import AppTest

    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir(), models)
    rainy = adapt_in_memory(loaded(models / "default-ldm"), "unet", models / "adapters" / "rainy")
    adapt_in_memory(loaded(models / "default-tokens"), "coarse_lm", models / "coarse-lora")  # the other model's
    for key, value in {**app_env(tmp_path), "SOUNDSMITH_MODEL_DIR": str(models)}.items():
        monkeypatch.setenv(key, value)
    at = AppTest.from_file(str(ENTRY), default_timeout=float(os.environ.get("SOUNDSMITH_APPTEST_TIMEOUT", "600")))
    at.run()
    assert not at.exception, at.exception
    picker = at.multiselect(key="g_adapters")
    assert picker.options == ["adapters/rainy"] and picker.value == []  # only the adapters of this model
    assert any("1 folder(s)" in c.value and "belong to other models" in c.value for c in at.caption)

    def press(adapters: list[Path], scale: float = 1.0) -> None:
        at.text_area(key="g_prompt").set_value(PROMPT)
        at.toggle(key="g_random_seed").set_value(False)
        at.number_input(key="g_seed").set_value(5)
        at.number_input(key="g_duration").set_value(0.5)
        at.multiselect(key="g_adapters").set_value([str(a) for a in adapters])
        at.slider(key="g_adapter_scale").set_value(scale)
        at.button(key="g_generate").click().run()
        assert not at.exception, at.exception
        assert not [e.value for e in at.error]

    press([rainy], 0.75)
    entry = at.session_state["history"][-1]
    assert [(a["folder"], a["scale"]) for a in entry.parameters["adapters"]] == [(str(rainy), 0.75)]
    assert entry.settings["adapters"] == [str(rainy)] and entry.settings["adapter_scale"] == 0.75
    assert any("adapter rainy x0.75" in c.value for c in at.sidebar.caption)
    assert "adapters: rainy (unet, scale 0.75)" in [c.value for c in at.caption]
    direct = loaded(models / "default-ldm", adapters=[rainy], adapter_scales=0.75)(PROMPT, duration_s=0.5, seed=5)
    audio, _ = sf.read(entry.takes[0].wav, dtype="float32")
    assert np.abs(audio - direct.audios[0, 0].numpy()).max() <= PCM  # the app loads it as load_pipeline does
    press([])
    assert at.session_state["history"][-1].parameters["adapters"] == []
    assert at.multiselect(key="g_adapters").value == []
    # reusing the adapted clip's settings loads its adapters again
    at.switch_page("history_page.py").run()
    at.button(key=f"history-{entry.id}-0-reuse").click().run()
    assert not at.exception, at.exception
    assert at.multiselect(key="g_adapters").value == [str(rainy)] and at.slider(key="g_adapter_scale").value == 0.75
    at.switch_page("batch_page.py").run()
    assert any("adapter rainy x0.75" in c.value for c in at.sidebar.caption)  # every page uses the session's copy
    at.switch_page("generate_page.py").run()  # kept across pages like the other settings
    assert at.multiselect(key="g_adapters").value == [str(rainy)]
    # the token model offers its own adapter, not the UNet's
    at.selectbox(key="model_choice").set_value("default-tokens (tokens)").run()
    assert not at.exception, at.exception
    assert at.multiselect(key="g_adapters").options == ["coarse-lora"] and at.multiselect(key="g_adapters").value == []
