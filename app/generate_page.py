"""Generate page: prompt and controls -> one pipeline call -> result cards. Run by Streamlit (st.navigation)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import streamlit as st
from soundsmith.app import jobs, ui
from soundsmith.app.models import Capabilities
from soundsmith.codecs.audio import DEFAULT_LOUDNESS_LUFS

# widget key -> GenerationSettings field
FIELDS = {"g_prompt": "prompt", "g_negative": "negative_prompt", "g_duration": "duration_s",
          "g_steps": "num_inference_steps", "g_guidance": "guidance_scale", "g_scheduler": "scheduler",
          "g_temperature": "temperature", "g_top_k": "top_k", "g_top_p": "top_p", "g_seed": "seed",
          "g_variations": "num_waveforms", "g_mode": "mode", "g_strength": "strength",
          "g_inpaint_start": "inpaint_start_s", "g_inpaint_end": "inpaint_end_s", "g_loudness": "loudness_lufs",
          "g_adapters": "adapters", "g_adapter_scale": "adapter_scale"}
STATIC_DEFAULTS = {"g_prompt": "", "g_negative": "", "g_random_seed": True, "g_seed": 0, "g_variations": 1,
                   "g_override_sampling": False, "g_temperature": 1.0, "g_top_k": 250, "g_top_p": 1.0,
                   "g_strength": 0.5, "g_inpaint_start": 0.0, "g_inpaint_end": 1.0, "g_mode": "text",
                   "g_normalise": True, "g_loudness": DEFAULT_LOUDNESS_LUFS, "g_adapter_scale": 1.0}
# "g_vocoder" is not saved here: it shows the session's vocoder for the model (ui.vocoder_choice), set each run
SAVED = [*STATIC_DEFAULTS, "g_duration", "g_steps", "g_guidance", "g_scheduler", "g_threads", "g_adapters"]
MODEL_DEFAULT = ""  # the Vocoder control's value for "the vocoder the model folder names"
MIN_DURATION = 0.1
MAX_VARIATIONS = 8
MAX_STEPS = 1000
EXAMPLES = ("rain on a tin roof", "a dog barking in the distance", "a calm piano melody", "footsteps on gravel")


def model_defaults(caps: Capabilities) -> dict[str, Any]:
    return {"g_duration": min(caps.default_duration_s, caps.max_duration_s), "g_steps": caps.default_steps or 16,
            "g_guidance": caps.default_guidance, "g_scheduler": caps.default_scheduler,
            "g_adapters": [folder for folder, _ in caps.adapters]}


def prepare_state(path: str, caps: Capabilities, adapters: dict[str, Path] | None = None) -> None:
    """Before any widget is drawn: restore this page's values (Streamlit drops a widget's state while another
    page is shown), reset the model-dependent ones when the model changed, then apply "reuse these settings".
    `adapters`: the adapter folders offered for this model (a chosen one no longer offered is dropped)."""
    ss = st.session_state
    saved = ss.setdefault("g_saved", {})
    for key in SAVED:
        if key not in ss and key in saved:
            ss[key] = saved[key]
    if ss.get("g_model") != path:
        ss.update(model_defaults(caps))
        ss["g_model"] = path
    for key, value in {**STATIC_DEFAULTS, **model_defaults(caps)}.items():
        ss.setdefault(key, value)
    if "g_threads" not in ss:  # not a clip setting (reusing a clip's settings keeps it): the machine's default
        from soundsmith.core.runtime import default_threads

        ss["g_threads"] = default_threads()
    pending = ss.pop("pending_settings", None)
    if pending:
        apply_settings(pending, caps)
    if ss["g_scheduler"] not in caps.schedulers:
        ss["g_scheduler"] = caps.default_scheduler
    if caps.vocoders:  # the picker shows the vocoder loaded (a choice that failed to build falls back here)
        ss["g_vocoder"] = ui.vocoder_choice(path) or MODEL_DEFAULT
    if caps.adaptable:  # the picker shows the adapters loaded (a choice that failed to load falls back here)
        offered = {str(folder) for folder in (adapters or {}).values()}
        ss["g_adapters"] = [folder for folder, _ in caps.adapters if folder in offered]
        if caps.adapters:
            ss["g_adapter_scale"] = caps.adapters[0][1]


def take_vocoder_choice(path: str | None) -> bool:
    """Before the model is loaded: the vocoder picked in the form just submitted, or the one of a clip whose
    settings are reused, becomes the session's vocoder for `path` (ui.use_vocoder loads that copy). False when
    it cannot be built: a one-line error is shown and the previous vocoder stays."""
    ss = st.session_state
    pending = ss.get("pending_settings")
    if not path:
        return True
    if pending and "vocoder" in pending:
        return ui.use_vocoder(path, pending["vocoder"])
    if ss.get("g_model") == path and "g_vocoder" in ss:  # the picker's value, for this model
        return ui.use_vocoder(path, ss["g_vocoder"] or None)
    return True


def take_adapter_choice(path: str | None) -> bool:
    """Before the model is loaded: the adapters picked in the form just submitted, or those of a clip whose
    settings are reused, become the session's adapters for `path` (ui.use_adapters loads that copy). False when
    they cannot be applied: a one-line error is shown and the previous adapters stay."""
    ss = st.session_state
    pending = ss.get("pending_settings")
    if not path:
        return True
    if pending:  # a clip's settings: its adapters (none for a clip made without), those that fit this model
        scale = float(pending.get("adapter_scale") or 1.0)
        folders = ui.fitting_adapters(path, [str(folder) for folder in pending.get("adapters") or []])
        return ui.use_adapters(path, tuple((folder, scale) for folder in folders))
    if ss.get("g_model") == path and "g_adapters" in ss:  # the picker's value, for this model
        scale = float(ss.get("g_adapter_scale", 1.0))
        return ui.use_adapters(path, tuple((str(folder), scale) for folder in ss["g_adapters"]))
    return True


def apply_settings(settings: dict[str, Any], caps: Capabilities) -> None:
    """Fill the widgets from a history entry's settings (its seed, random off), clamped to this model."""
    ss = st.session_state
    defaults = {**STATIC_DEFAULTS, **model_defaults(caps)}
    for key, name in FIELDS.items():
        value = settings.get(name)
        ss[key] = defaults[key] if value is None else value
    ss["g_random_seed"] = settings.get("seed") is None
    ss["g_normalise"] = settings.get("loudness_lufs", DEFAULT_LOUDNESS_LUFS) is not None
    ss["g_override_sampling"] = any(settings.get(n) is not None for n in ("temperature", "top_k", "top_p"))
    # another model's settings may not fit this one's controls: bring them into range (and say so)
    fitted = {"g_variations": int(min(max(int(ss["g_variations"]), 1), MAX_VARIATIONS)),
              "g_steps": int(min(max(int(ss["g_steps"]), 1), MAX_STEPS)),
              "g_duration": min(max(float(ss["g_duration"]), MIN_DURATION), caps.max_duration_s)}
    changed = [k for k, v in fitted.items() if v != ss[k]]
    ss.update(fitted)
    if changed:
        ss["g_reuse_note"] = ("Adjusted to this model's range: "
                              + ", ".join(f"{k[2:]} {fitted[k]:g}" for k in changed) + ".")
    if settings.get("audio") and Path(settings["audio"]).is_file():  # an upload of an ended session is gone
        ss["g_audio"], ss["g_audio_s"], ss["g_audio_id"] = settings["audio"], settings.get("audio_s"), None


def audio_input(caps: Capabilities) -> None:
    """Mode, clip upload and the mode's controls (outside the form: uploading shows the clip at once)."""
    ss = st.session_state
    supported = [m for m, (_, flag) in jobs.MODES.items() if flag is None or getattr(caps, flag)]
    missing = [label.lower() for _, (label, flag) in jobs.MODES.items() if flag and not getattr(caps, flag)]
    if ss.get("g_mode") not in supported:
        ss["g_mode"] = "text"
    with st.expander("Audio input: style transfer, inpainting, continuation", expanded=ss["g_mode"] != "text"):
        mode = st.radio("Start from", supported, key="g_mode", horizontal=True,
                        format_func=lambda m: jobs.MODES[m][0])
        if missing:
            st.caption(f"Not available with the {caps.backend} model: {', '.join(missing)}.")
        if mode == "text":
            return
        upload = st.file_uploader("Input clip (WAV, FLAC or OGG)", type=list(jobs.UPLOAD_TYPES), key="g_upload",
                                  on_change=forget_removed_clip)
        if upload is not None and ss.get("g_audio_id") != upload.file_id:
            ss["g_audio_id"], ss["g_audio"], ss["g_audio_s"], ss["g_audio_error"] = upload.file_id, None, None, None
            path = ui.workspace().save_upload(upload.name, upload.getvalue())
            try:
                ss["g_audio_s"] = jobs.check_uploaded_audio(path)
                ss["g_audio"] = str(path)
            except ValueError as err:
                ss["g_audio_error"] = ui.one_line(err)
        if upload is not None and ss.get("g_audio_error"):
            st.error(ss["g_audio_error"])
        clip, seconds = ss.get("g_audio"), ss.get("g_audio_s")
        if clip and seconds:
            st.audio(clip)
            st.caption(f"Input clip: {seconds:.2f} s")
        if mode == "audio-to-audio":
            st.slider("Strength (how much of the clip is re-imagined; 1 ignores it)", 0.05, 1.0, step=0.05,
                      key="g_strength")
            st.caption("Audio-to-audio keeps the clip's length; Duration below is not used.")
        elif mode == "inpaint":
            top = float(seconds or caps.max_duration_s)
            ss["g_inpaint_start"] = min(float(ss["g_inpaint_start"]), top)
            ss["g_inpaint_end"] = min(float(ss["g_inpaint_end"]), top)
            c1, c2 = st.columns(2)
            c1.number_input("Regenerate from (s)", 0.0, top, step=0.1, key="g_inpaint_start")
            c2.number_input("to (s)", 0.0, top, step=0.1, key="g_inpaint_end")
            st.caption("The rest of the clip is kept. A Duration longer than the clip also extends it (outpainting).")
        else:
            st.caption("The clip is continued; Duration below is the total length, clip included.")


def forget_removed_clip() -> None:
    """Uploader callback: removing the file removes the clip (a clip kept across pages stays until then)."""
    if st.session_state.get("g_upload") is None:
        for key in ("g_audio", "g_audio_s", "g_audio_id", "g_audio_error"):
            st.session_state.pop(key, None)


def controls(caps: Capabilities, adapters: tuple[dict[str, Path], int] = ({}, 0)) -> bool:
    """The form; returns True when Generate was pressed. `adapters`: (label -> folder of the adapter folders that
    fit the model, how many others were found)."""
    with st.form("generate_form", border=False):
        st.text_area("Prompt", key="g_prompt", height=80, placeholder=f"e.g. {EXAMPLES[0]}",
                     help="Describe the sound: source, setting, mood. Examples: " + "; ".join(EXAMPLES))
        st.text_input("Negative prompt", key="g_negative", placeholder="what to steer away from, e.g. low quality, noise")
        c1, c2, c3 = st.columns(3)
        c1.number_input("Duration (s)", MIN_DURATION, caps.max_duration_s, step=0.5, key="g_duration", format="%.2f")
        c2.number_input("Variations", 1, MAX_VARIATIONS, step=1, key="g_variations",
                        help="Candidates from consecutive seeds, best CLAP score first")
        with c3:
            st.toggle("Random seed", key="g_random_seed")
            st.number_input("Seed", 0, jobs.MAX_UI_SEED, step=1, key="g_seed", help="Used when Random seed is off")
        with st.expander("Advanced"):
            if caps.diffusion:
                a1, a2, a3 = st.columns(3)
                a1.number_input("Steps", 1, MAX_STEPS, step=1, key="g_steps")
                a2.number_input("Guidance scale", 0.0, 100.0, step=0.5, key="g_guidance",
                                help="Classifier-free guidance; 1 or less turns it off")
                a3.selectbox("Scheduler", caps.schedulers, key="g_scheduler")
            else:
                st.number_input("Guidance scale", 0.0, 100.0, step=0.5, key="g_guidance",
                                help="Classifier-free guidance; 1 turns it off")
                st.caption(f"The {caps.backend} model has no diffusion steps or scheduler.")
            if caps.vocoders:
                vocoder_picker(caps)
            if caps.adaptable:
                adapter_picker(*adapters)
            l1, l2 = st.columns(2)
            l1.checkbox("Normalise loudness", key="g_normalise",
                        help="Level every clip to the target (ITU-R BS.1770), peaks capped at -1 dBFS; off keeps "
                             "the decoder's level, often near silence")
            l2.number_input("Loudness target (LUFS)", -70.0, 0.0, step=1.0, key="g_loudness", format="%.1f",
                            help="Used when Normalise loudness is on; -16 is where streaming platforms level speech")
            threads_control()
            if caps.sampling:
                st.checkbox("Override the model's per-stage sampling", key="g_override_sampling")
                s1, s2, s3 = st.columns(3)
                s1.slider("Temperature", 0.05, 2.0, step=0.05, key="g_temperature")
                s2.number_input("Top-k", 1, 100_000, step=1, key="g_top_k")
                s3.slider("Top-p", 0.05, 1.0, step=0.05, key="g_top_p")
            else:
                st.caption(f"Temperature / top-k / top-p apply to token models; the {caps.backend} model samples by "
                           "diffusion.")
        return st.form_submit_button("Generate", type="primary", icon=":material/graphic_eq:", key="g_generate")


def threads_control() -> None:
    """The Threads control: torch's CPU threads for this session's generations (set in `run`)."""
    from soundsmith.core.runtime import default_threads

    top = max(os.cpu_count() or 1, int(st.session_state["g_threads"]))
    st.number_input("Threads", 1, top, step=1, key="g_threads",
                    help=f"CPU threads for generating (default {default_threads()}: $OMP_NUM_THREADS when set, else "
                         "this machine's physical cores). On a machine busy with other work or other sessions, "
                         "fewer can be faster.")


def vocoder_picker(caps: Capabilities) -> None:
    """The Vocoder control: the model folder's own or any registered one (codecs/vocoders.py)."""
    default = ui.default_vocoder(st.session_state["g_model"])
    st.selectbox("Vocoder", [MODEL_DEFAULT, *caps.vocoders], key="g_vocoder",
                 format_func=lambda name: name or f"model default ({default})",
                 help="Turns the model's mel into audio. The model is loaded with it when you press Generate; "
                      "each vocoder used stays loaded, so switching back is instant.")


def adapter_picker(offered: dict[str, Path], others: int) -> None:
    """The Adapters control: LoRA adapter folders (soundsmith_adapter.json) found in the model dir and its
    adapters/ folder that were trained on this model, and one scale for all of them."""
    from soundsmith.app.models import ADAPTERS_FOLDER, default_model_dir
    from soundsmith.pipelines.adapters import MAX_SCALE

    labels = {str(folder): label for label, folder in offered.items()}
    where = f"{default_model_dir()} and {default_model_dir() / ADAPTERS_FOLDER}"
    not_shown = f"; {others} adapter folder(s) there belong to other models" if others else ""
    if not offered:
        st.caption(f"Adapters: none for this model in {where}{not_shown}. `soundsmith train unet --init MODEL "
                   "--lora-rank 8` makes one.")
        return
    a1, a2 = st.columns([3, 1])
    a1.multiselect("Adapters (LoRA)", list(labels), key="g_adapters", format_func=lambda folder: labels.get(folder, folder),
                   help=f"Fine-tuned LoRA adapters of this model, found in {where}. The model is loaded with them "
                        "when you press Generate; each combination used stays loaded.")
    a2.slider("Adapter scale", 0.0, MAX_SCALE, step=0.05, key="g_adapter_scale",
              help="Strength of every chosen adapter: 1 as trained, 0 the model without it")
    if not_shown:
        st.caption(f"Adapters: {others} folder(s) in {where} belong to other models and are not offered.")


def collect(caps: Capabilities) -> jobs.GenerationSettings:
    ss = st.session_state
    sampling = caps.sampling and ss["g_override_sampling"]
    mode = ss["g_mode"]
    return jobs.GenerationSettings(
        prompt=ss["g_prompt"], negative_prompt=ss["g_negative"], duration_s=ss["g_duration"],
        num_inference_steps=ss["g_steps"] if caps.diffusion else None, guidance_scale=ss["g_guidance"],
        scheduler=ss["g_scheduler"] if caps.diffusion else None,
        temperature=ss["g_temperature"] if sampling else None, top_k=ss["g_top_k"] if sampling else None,
        top_p=ss["g_top_p"] if sampling else None, seed=None if ss["g_random_seed"] else int(ss["g_seed"]),
        num_waveforms=int(ss["g_variations"]), mode=mode, audio=ss.get("g_audio") if mode != "text" else None,
        audio_s=ss.get("g_audio_s") if mode != "text" else None, strength=ss["g_strength"],
        inpaint_start_s=ss["g_inpaint_start"], inpaint_end_s=ss["g_inpaint_end"],
        vocoder=(ss["g_vocoder"] or None) if caps.vocoders else None,
        loudness_lufs=float(ss["g_loudness"]) if ss["g_normalise"] else None,
        adapters=[str(f) for f in ss.get("g_adapters") or []] if caps.adaptable else None,
        adapter_scale=float(ss.get("g_adapter_scale", 1.0)))


def run(path: str, pipe: Any, caps: Capabilities, settings: jobs.GenerationSettings) -> None:
    """Check, wait for the model, generate with a live bar and an Interrupt button, add to the history."""
    from soundsmith.core.runtime import set_threads
    from soundsmith.pipelines.base import GenerationCancelled

    try:
        settings.check(caps)
    except ValueError as err:
        st.error(ui.one_line(err))
        return
    failure: BaseException | None = None
    queue = st.empty()
    with st.status("Generating…", expanded=True) as status:
        bar = st.progress(0.0, text="waiting for the model")
        stop_box = st.empty()
        with stop_box:
            ui.interrupt_button("g_interrupt", "g_progress")
        callback = ui.ProgressCallback(bar, state_key="g_progress")
        st.session_state["g_progress"] = None
        try:
            with ui.gate_for(path).hold(on_wait=ui.queue_message(queue)):
                queue.empty()
                set_threads(int(st.session_state["g_threads"]))  # torch's setting is per thread: this session's
                bar.progress(0.0, text="conditioning")
                folder = ui.history_store().new_folder()
                try:
                    entry = jobs.generate(pipe, settings, caps, folder, entry_id=ui.next_id("gen"), model=path,
                                          callback=callback, nearest=ui.novelty_check()[0])
                except BaseException:  # interrupted or failed: nothing of it stays in the output root
                    shutil.rmtree(folder, ignore_errors=True)
                    raise
        except GenerationCancelled:
            callback.reraise()  # the user's interrupt: let Streamlit rerun (the notice shows then)
            status.update(label="Interrupted", state="error")
            return
        except Exception as err:  # noqa: BLE001 - shown as one line, the app keeps working
            stop_box.empty()
            failure = err
            status.update(label="Generation failed", state="error", expanded=False)
        else:
            stop_box.empty()
            ui.add_to_history(entry)
            status.update(label=f"Generated {len(entry.takes)} clip(s) in {entry.seconds:.1f} s", state="complete",
                          expanded=False)
    if failure is not None:
        ui.show_error(failure)


def show_latest() -> None:
    """This session's newest clips (a reload or another visitor's clips do not count: they are on History)."""
    entries = ui.history()  # also reads the History back when the session starts
    latest = st.session_state.get("latest_id")
    entry = next((e for e in reversed(entries) if e.id == latest), None) if latest is not None else None
    if entry is None:
        st.caption("Your clips appear here; earlier ones stay on the History page (kept in the app's output "
                   "folder, also after a reload).")
        return
    st.subheader("Latest")
    columns = st.columns(min(2, len(entry.takes)))
    for i, take in enumerate(entry.takes):
        with columns[i % len(columns)]:
            ui.take_card(entry, take, prefix="latest")


def render() -> None:
    st.title("Generate")
    st.session_state.pop("go_generate", None)
    ui.show_notice("g_interrupt")
    vocoder_ok = take_vocoder_choice(st.session_state.get("model_path"))
    adapters_ok = take_adapter_choice(st.session_state.get("model_path"))
    chosen = ui.current_model()
    if chosen is None:
        return
    path, pipe, caps = chosen
    adapters = ui.adapter_options(pipe) if caps.adaptable else ({}, 0)
    prepare_state(path, caps, adapters[0])
    note = st.session_state.pop("g_reuse_note", None)
    if note:
        st.info(note)
    audio_input(caps)
    pressed = controls(caps, adapters)
    st.session_state["g_saved"] = {k: st.session_state[k] for k in SAVED if k in st.session_state}
    if pressed and vocoder_ok and adapters_ok:  # a vocoder or adapters that failed to load: its error shows
        run(path, pipe, caps, collect(caps))
    show_latest()


if __name__ == "__main__":
    render()
