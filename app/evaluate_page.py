"""Evaluate page: the eval harness on a small prompt set (generate, then score) or on two sets of clips;
the metric table, per-prompt CLAP scores and the worst clips with their spectrograms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st
from soundsmith.app import jobs, ui
from soundsmith.app.models import check_inside
from soundsmith.pipelines.base import GenerationCancelled

METRIC_NAMES = {"fad": "FAD", "clap": "CLAP score", "kl": "KL (paired clips)", "is": "Inception score",
                "labels": "label accuracy"}
AUDIO = tuple(jobs.UPLOAD_TYPES)


def metric_controls(prefix: str) -> None:
    from soundsmith.eval.embedders import EMBEDDERS
    from soundsmith.eval.fad import COVARIANCES
    from soundsmith.eval.harness import METRICS

    c1, c2, c3 = st.columns([2, 1, 1])
    c1.multiselect("Metrics", METRICS, default=["fad", "clap"], key=f"{prefix}_metrics",
                   format_func=lambda m: METRIC_NAMES.get(m, m))
    c2.selectbox("FAD embedding", list(EMBEDDERS), key=f"{prefix}_embedding")
    c3.selectbox("Covariance", COVARIANCES, index=COVARIANCES.index("shrinkage"), key=f"{prefix}_covariance",
                 help="'full' needs more windows than embedding dimensions; 'shrinkage' suits small sets")


def metric_settings(prefix: str) -> dict[str, Any]:
    ss = st.session_state
    metrics = list(ss[f"{prefix}_metrics"])
    if not metrics:
        raise ValueError("metrics is empty: choose at least one metric")
    return {"metrics": metrics, "embedding": ss[f"{prefix}_embedding"], "covariance": ss[f"{prefix}_covariance"]}


# ------------------------------------------------------------------------------------------ prompt set


def prompt_set_tab() -> None:
    sets = jobs.bundled_prompt_sets()
    st.caption("Generates a few prompts with the sidebar's model, then scores the clips against reference audio.")
    source = st.radio("Prompts", ["bundled", "upload"], horizontal=True, key="e_source",
                      format_func=lambda s: {"bundled": "A standard prompt set", "upload": "Upload a prompt file"}[s])
    if source == "bundled":
        if sets:
            st.selectbox("Prompt set", list(sets), key="e_set")
        else:
            st.caption("No standard prompt sets here: they come with a soundsmith checkout (benchmarks/prompts/), "
                       "not with an installed copy. Upload a prompt file.")
    else:
        st.file_uploader("Prompt file (.jsonl or .csv)", type=["jsonl", "csv"], key="e_prompt_file")
    reference = jobs.default_reference_dir()
    st.text_input("Reference folder (the prompt file's reference clips are relative to it)", key="e_reference",
                  value=str(reference) if reference else "")
    c1, c2, c3, c4 = st.columns(4)
    c1.number_input("Prompts", 1, 50, value=4, step=1, key="e_limit", help="The first N prompts of the file")
    c2.number_input("Clips per prompt", 1, 8, value=1, step=1, key="e_per_prompt")
    c3.number_input("Seed", 0, jobs.MAX_UI_SEED, value=0, step=1, key="e_seed")
    c4.number_input("Duration (s)", 0.1, 60.0, value=2.0, step=0.5, key="e_duration", format="%.2f")
    metric_controls("e")
    if not st.button("Generate and score", type="primary", key="e_run", icon=":material/analytics:"):
        return
    chosen = ui.current_model()
    if chosen is None:
        return
    path, pipe, _ = chosen
    ss = st.session_state
    try:
        settings = metric_settings("e")
        if source == "bundled":
            if ss.get("e_set") not in sets:
                raise ValueError("no prompt set chosen")
            prompts = sets[ss["e_set"]]
        else:
            upload = ss.get("e_prompt_file")
            if upload is None:
                raise ValueError("no prompt file: upload a .jsonl or .csv prompt file")
            prompts = ui.workspace().save_upload(upload.name, upload.getvalue())
        ref_text = ss["e_reference"].strip()
        ref = server_folder(ref_text, "reference folder") if ref_text else None
    except (ValueError, FileNotFoundError, PermissionError) as err:
        st.error(ui.one_line(err))
        return
    out = ui.workspace().new_folder("eval")
    queue = st.empty()
    bar = st.progress(0.0, text="waiting for the model…")
    callback = ui.ProgressCallback(bar, state_key="e_progress", describe=lambda done, total: (
        f"generated {done} of {total} clips" + ("; scoring…" if done >= total else "")))
    try:
        with st.status("Generating and scoring…", expanded=False) as status:
            with ui.gate_for(path).hold(on_wait=ui.queue_message(queue)):
                queue.empty()
                results = jobs.evaluate_prompt_set(
                    pipe, path, Path(prompts), ref, ui.workspace(), limit=int(ss["e_limit"]),
                    num_per_prompt=int(ss["e_per_prompt"]), seed=int(ss["e_seed"]),
                    pipeline_kwargs={"duration_s": float(ss["e_duration"])}, out=out, callback=callback,
                    **settings)
            status.update(label="Evaluation done", state="complete")
        bar.empty()
    except GenerationCancelled:
        callback.reraise()  # the user interacted mid-run: let Streamlit rerun
        return
    except Exception as err:  # noqa: BLE001 - one line, the app keeps working
        ui.show_error(err, "evaluation failed: ")
        return
    keep_results(results, out)


# ---------------------------------------------------------------------------------------- two clip sets


def save_set(files: list[Any], folder: Path, what: str) -> list[Path]:
    """Write uploaded clips (and sidecars) into `folder`; one-line errors for a file that is not audio."""
    if not files:
        raise ValueError(f"no {what} clips: upload WAV/FLAC/OGG files")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files:
        path = folder / Path(f.name).name
        path.write_bytes(f.getvalue())
        if path.suffix.lower() != ".json":
            jobs.check_uploaded_audio(path)
            paths.append(path)
    if not paths:
        raise ValueError(f"no {what} clips: upload WAV/FLAC/OGG files (JSON sidecars alone are not audio)")
    return paths


def two_sets_tab() -> None:
    st.caption("Scores any two sets of clips. Upload the generated clips with their JSON sidecars to get CLAP scores "
               "(the sidecar's 'prompt'); or give two folders on this server.")
    st.file_uploader("Generated clips (+ .json sidecars)", type=[*AUDIO, "json"], accept_multiple_files=True,
                     key="s_generated")
    st.file_uploader("Reference clips", type=list(AUDIO), accept_multiple_files=True, key="s_reference")
    with st.expander("…or folders on this server (inside the app's output or model folder)"):
        st.text_input("Generated folder", key="s_gen_dir")
        st.text_input("Reference folder", key="s_ref_dir")
    metric_controls("s")
    if not st.button("Score", type="primary", key="s_run", icon=":material/analytics:"):
        return
    ss = st.session_state
    out = ui.workspace().new_folder("eval")
    try:
        settings = metric_settings("s")
        if ss["s_gen_dir"].strip() or ss["s_ref_dir"].strip():
            generated = server_folder(ss["s_gen_dir"], "generated folder")
            reference = server_folder(ss["s_ref_dir"], "reference folder")
        else:
            generated = save_set(ss.get("s_generated") or [], out / "generated", "generated")
            reference = save_set(ss.get("s_reference") or [], out / "reference", "reference")
    except (ValueError, FileNotFoundError, PermissionError) as err:
        st.error(ui.one_line(err))
        return
    try:
        with st.status("Scoring…", expanded=False) as status:
            results = jobs.score_uploaded_sets(generated, reference, ui.workspace(), out=out, **settings)
            status.update(label="Scoring done", state="complete")
    except Exception as err:  # noqa: BLE001
        ui.show_error(err, "scoring failed: ")
        return
    keep_results(results, out)


def server_folder(text: str, what: str) -> Path:
    """A folder typed into a field: inside the app's output folder, model folder or standard corpus (unless
    started with --allow-any-folder; checked first, so a refusal says nothing about the host), then existing."""
    if not text.strip():
        raise ValueError(f"{what} is empty: type a folder on this server, or upload the clips instead")
    folder = check_inside(text, ui.eval_roots(), what)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} not found: {text.strip()}")
    return folder


# ---------------------------------------------------------------------------------------------- results


def keep_results(results: dict[str, Any], out: Path) -> None:
    """Store the results and draw the worst clips' spectrograms once (not on every rerun)."""
    from soundsmith.eval.report import mel_plot

    worst = []
    for rank, clip in enumerate(jobs.worst_clips(results), 1):
        try:
            png = mel_plot(Path(clip["file"]), out / f"app_worst_{rank}.png", title=f"#{rank}: {clip.get('prompt') or ''}")
        except (OSError, ValueError):
            png = None
        worst.append((clip, png))
    st.session_state["eval_last"] = {"results": results, "out": out, "worst": worst}


def show_results() -> None:
    from soundsmith.eval.report import metric_model

    last = st.session_state.get("eval_last")
    if not last:
        return
    results, out = last["results"], last["out"]
    st.divider()
    st.subheader("Metrics")
    rows = [{"metric": m["metric"], "value": m["value"], "n": m["n"], "model": metric_model(results, m["metric"]),
             "note": m.get("note", "")} for m in results.get("metrics", [])]
    if rows:
        st.dataframe(rows, hide_index=True)
    else:
        st.info("No metric could be computed; the reasons are below.")
    for item in results.get("not_computed", []):
        st.caption(f"Not computed: **{item['metric']}**: {item['reason']}")
    warnings = results.get("warnings") or []
    if warnings:
        with st.expander(f"{len(warnings)} warning(s)"):
            for w in warnings:
                st.write(w)
    per_prompt = results.get("per_prompt") or []
    if per_prompt:
        st.subheader("CLAP score per prompt")
        rows = [{"prompt": p["prompt"], "clap_score": p["clap_score"], "clips": p.get("clips")}
                for p in sorted(per_prompt, key=lambda p: p["clap_score"])]
        st.dataframe(rows, hide_index=True)
        plot = out / "plots" / "clap_per_prompt.png"
        if plot.is_file():
            st.image(str(plot))
    table = jobs.per_clip_table(results)
    if table:
        with st.expander(f"Per clip ({len(table)})"):
            st.dataframe([{k: v for k, v in r.items() if k != "path"} for r in table], hide_index=True)
    if last["worst"]:
        st.subheader("Worst clips")
        for rank, (clip, png) in enumerate(last["worst"], 1):
            st.markdown(f"**#{rank}** {clip.get('prompt') or Path(clip['file']).name} · {clip['why']}")
            st.audio(str(clip["file"]))
            if png is not None:
                st.image(str(png))
    c1, c2, c3 = st.columns(3)
    for col, name, mime in ((c1, "report.html", "text/html"), (c2, "results.json", "application/json"),
                            (c3, "results.csv", "text/csv")):
        path = out / name
        if path.is_file():
            col.download_button(name, data=(lambda p=path: p.read_bytes()), file_name=name, mime=mime,
                                on_click="ignore", key=f"eval_dl_{name}", icon=":material/download:")


def render() -> None:
    st.title("Evaluate")
    tab1, tab2 = st.tabs(["Prompt set", "Two sets of clips"])
    with tab1:
        prompt_set_tab()
    with tab2:
        two_sets_tab()
    show_results()


if __name__ == "__main__":
    render()
