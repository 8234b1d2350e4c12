"""Batch page: a list of prompts (pasted, or a .txt/.csv/.jsonl file) -> a generated set, a table and a zip."""

from __future__ import annotations

from typing import Any

import streamlit as st
from soundsmith.app import jobs, ui
from soundsmith.app.models import Capabilities


def read_prompts() -> list[str] | None:
    """The prompt list from the upload (if any) or the text box; None after showing an error."""
    upload = st.session_state.get("b_file")
    if upload is not None:
        path = ui.workspace().save_upload(upload.name, upload.getvalue())
        try:
            return jobs.prompts_from_file(path)
        except (ValueError, FileNotFoundError) as err:
            st.error(ui.one_line(err))
            return None
    return jobs.prompts_from_text(st.session_state.get("b_text", ""))


def settings_form(caps: Capabilities) -> bool:
    with st.form("batch_form", border=False):
        st.text_area("Prompts, one per line", key="b_text", height=160,
                     placeholder="rain on a tin roof\na dog barking in the distance\na calm piano melody")
        st.file_uploader("…or a prompt file (.txt one per line, .csv with a 'prompt' column, .jsonl with 'prompt')",
                         type=["txt", "csv", "jsonl"], key="b_file")
        c1, c2, c3 = st.columns(3)
        c1.number_input("Duration (s)", 0.1, caps.max_duration_s, value=min(caps.default_duration_s, caps.max_duration_s),
                        step=0.5, key="b_duration", format="%.2f")
        c2.number_input("First seed (prompt i gets seed + i)", 0, jobs.MAX_UI_SEED, value=0, step=1, key="b_seed")
        c3.number_input("Prompts per model call", 1, 16, value=4, step=1, key="b_chunk")
        if caps.diffusion:
            a1, a2 = st.columns(2)
            a1.number_input("Steps", 1, 1000, value=caps.default_steps or 16, step=1, key="b_steps")
            a2.number_input("Guidance scale", 0.0, 100.0, value=caps.default_guidance, step=0.5, key="b_guidance")
        else:
            st.number_input("Guidance scale", 0.0, 100.0, value=caps.default_guidance, step=0.5, key="b_guidance")
        return st.form_submit_button("Generate set", type="primary", icon=":material/queue_music:",
                                     key="b_generate")


def run(path: str, pipe: Any, caps: Capabilities) -> None:
    from soundsmith.pipelines.base import GenerationCancelled

    prompts = read_prompts()
    if prompts is None:
        return
    ss = st.session_state
    settings = jobs.GenerationSettings(prompt=prompts[0] if prompts else "", duration_s=ss["b_duration"],
                                       num_inference_steps=ss.get("b_steps") if caps.diffusion else None,
                                       guidance_scale=ss["b_guidance"], seed=int(ss["b_seed"]))
    failure: BaseException | None = None
    queue = st.empty()
    with st.status(f"Generating {len(prompts)} prompt(s)…", expanded=True) as status:
        bar = st.progress(0.0, text="waiting for the model")
        stop_box = st.empty()
        with stop_box:
            ui.interrupt_button("b_interrupt", "b_progress")
        callback = ui.ProgressCallback(bar, state_key="b_progress")
        ss["b_progress"] = None
        try:
            with ui.gate_for(path).hold(on_wait=ui.queue_message(queue)):
                queue.empty()
                result = jobs.generate_batch(pipe, prompts, settings, caps, ui.workspace().new_folder("batch"),
                                             chunk=int(ss["b_chunk"]), on_progress=callback.update)
        except GenerationCancelled:
            callback.reraise()
            status.update(label="Interrupted", state="error")
            return
        except Exception as err:  # noqa: BLE001 - shown as one line
            failure = err
            stop_box.empty()
            status.update(label="Batch failed", state="error", expanded=False)
        else:
            stop_box.empty()
            ss.setdefault("batches", []).append(result)
            status.update(label=f"Generated {len(result.rows)} clips in {result.seconds:.1f} s", state="complete",
                          expanded=False)
    if failure is not None:
        ui.show_error(failure)


def show_latest() -> None:
    batches = st.session_state.get("batches") or []
    if not batches:
        return
    result = batches[-1]
    st.subheader(f"Set {len(batches)}: {len(result.rows)} clips")
    st.dataframe(result.rows, hide_index=True)
    st.download_button("Download the set (zip: WAVs, JSON sidecars, manifest.csv)", data=lambda: jobs.zip_folder(result.folder),
                       file_name=f"soundsmith-batch-{len(batches)}.zip", mime="application/zip", on_click="ignore",
                       key="b_zip", icon=":material/folder_zip:")
    with st.expander("Listen", expanded=False):
        for row in result.rows[:20]:
            st.caption(f"{row['#']}. {row['prompt']} (seed {row['seed']})")
            st.audio(str(result.folder / row["file"]))


def render() -> None:
    st.title("Batch")
    ui.show_notice("b_interrupt")
    chosen = ui.current_model()
    if chosen is None:
        return
    path, pipe, caps = chosen
    if settings_form(caps):
        run(path, pipe, caps)
    show_latest()


if __name__ == "__main__":
    render()
