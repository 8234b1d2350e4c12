"""Streamlit pieces the pages share: the session folder, the model picker, the cached models and their gates,
the progress bar that can interrupt a pipeline, result cards and one-line errors."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import RerunException, StopException

from . import jobs
from .models import (
    NOVELTY_INDEX_ENV,
    Capabilities,
    ModelGate,
    adapters_for,
    capabilities_of,
    check_inside,
    check_model_folder,
    config_stamp,
    default_model_dir,
    default_output_dir,
    find_adapters,
    find_models,
    folder_takes_vocoder,
    load_model,
    vocoder_name,
)

log = logging.getLogger("soundsmith.app")

OTHER = "Other folder…"
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


# ------------------------------------------------------------------------------------------- session


def workspace() -> jobs.Workspace:
    """This session's temporary folder (created on first use, deleted with the session)."""
    if "workspace" not in st.session_state:
        st.session_state["workspace"] = jobs.Workspace(os.environ.get("SOUNDSMITH_APP_TMP") or None)
    return st.session_state["workspace"]


def history_store() -> jobs.HistoryStore:
    """The output root's History (clips and index), shared by every session and kept across restarts."""
    return jobs.HistoryStore(default_output_dir())


def history(*, reload: bool = False) -> list[jobs.HistoryEntry]:
    """The History, oldest first: the output root's newest entries, read from disk when the session starts (a
    page reload) and whenever `reload` (the History page, so other sessions' clips show); entries whose clips
    were deleted from disk drop out on every call."""
    ss = st.session_state
    if reload or "history" not in ss:
        try:
            entries = history_store().load()
        except OSError as err:  # an unreadable root: this session's entries stay, the rest is logged
            log.warning("cannot read the History in %s: %s", default_output_dir(), one_line(err))
            entries = ss.get("history", [])
        ids = ss.setdefault("history_ids", {})  # folder -> this session's id: widget keys survive a reload
        for entry in entries:
            if str(entry.folder) not in ids:
                ids[str(entry.folder)] = next_id("gen")
            entry.id = ids[str(entry.folder)]
        ss["history"] = entries
    ss["history"] = [e for e in map(jobs.on_disk, ss["history"]) if e is not None]
    return ss["history"]


def add_to_history(entry: jobs.HistoryEntry) -> None:
    """Record a new generation in the output root's index and in this session's list."""
    entries = history()  # read first: the index is about to hold `entry` too
    try:
        history_store().append(entry)
    except OSError as err:  # the clips are written; only the record that brings them back after a reload is not
        st.warning(f"not saved in the History index ({one_line(err)}): this clip will not be listed after a reload")
    st.session_state.setdefault("history_ids", {})[str(entry.folder)] = entry.id
    st.session_state["latest_id"] = entry.id  # the Generate page's "Latest"
    entries.append(entry)


def eval_roots() -> list[Path]:
    """The folders the Evaluate page's folder fields may name: the output root, the model dir and the standard
    corpus (the bundled prompt sets' reference) when it is here."""
    roots = [default_output_dir(), default_model_dir()]
    reference = jobs.default_reference_dir()
    return roots + [reference] if reference is not None else roots


def next_id(kind: str) -> int:
    key = f"next_{kind}_id"
    st.session_state[key] = st.session_state.get(key, 0) + 1
    return st.session_state[key]


def one_line(err: BaseException) -> str:
    """An exception as the one line a user sees (never a traceback)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def show_error(err: BaseException, what: str = "") -> None:
    """User mistakes as they are; anything else named by its type, with the traceback only in the server log."""
    if isinstance(err, USER_ERRORS):
        st.error(f"{what}{one_line(err)}")
    else:
        log.error("%s%s", what, one_line(err), exc_info=err)
        st.error(f"{what}unexpected {type(err).__name__}: {one_line(err)} (details in the server log)")


# -------------------------------------------------------------------------------------------- models


@st.cache_resource(show_spinner="Loading the model…", max_entries=3)
def cached_model(path: str, stamp: float, vocoder: str | None = None,
                 adapters: tuple[tuple[str, float], ...] = ()) -> Any:
    """One loaded pipeline per model folder, config.json version, vocoder (None: the folder's own) and LoRA
    adapters ((folder, scale) pairs) per process, shared by all sessions: switching back to a vocoder or adapters
    used before loads nothing."""
    return load_model(path, stamp, vocoder, adapters)


def default_vocoder(path: str) -> str | None:
    """The name of the vocoder a model folder names itself (read once from its own copy)."""
    return _default_vocoder(path, config_stamp(path))


@st.cache_data(show_spinner=False)
def _default_vocoder(path: str, stamp: float) -> str | None:
    return vocoder_name(cached_model(path, stamp))


def vocoder_choice(path: str) -> str | None:
    """The vocoder this session decodes `path` with (None: the folder's own); every page loads the model so."""
    return st.session_state.get("vocoders", {}).get(path)


def use_vocoder(path: str, vocoder: str | None) -> bool:
    """Make `vocoder` (None: the folder's own) this session's vocoder for `path`, loading that copy now (cached).
    A vocoder that cannot be built (missing package or adapter) is a one-line st.error and False; the previous
    choice stays in use. Models whose loader takes no vocoder are left as they are."""
    previous = vocoder_choice(path)
    if vocoder == previous or not folder_takes_vocoder(path):
        return True
    try:
        cached_model(path, config_stamp(path), vocoder, adapter_choice(path))
    except Exception as err:  # noqa: BLE001 - reported as one line, the previous vocoder stays usable
        keeping = previous or "the model's own"
        what = f"vocoder {vocoder} is not available (still using {keeping}): "
        if isinstance(err, ImportError):  # a missing optional package: its message says what to install
            st.error(f"{what}{one_line(err)}")
        else:
            show_error(err, what)
        return False
    choices = st.session_state.setdefault("vocoders", {})
    if vocoder is None:
        choices.pop(path, None)
    else:
        choices[path] = vocoder
    return True


def adapter_choice(path: str) -> tuple[tuple[str, float], ...]:
    """The LoRA adapters ((folder, scale) pairs) this session loads `path` with; () for none."""
    return tuple(st.session_state.get("adapter_choices", {}).get(path, ()))


def use_adapters(path: str, adapters: tuple[tuple[str, float], ...]) -> bool:
    """Make `adapters` this session's adapters for `path`, loading that copy now (cached). One that cannot be
    applied (another model's, a folder gone) is a one-line st.error and False; the previous choice stays in use."""
    previous = adapter_choice(path)
    adapters = tuple((str(folder), float(scale)) for folder, scale in adapters)
    if adapters == previous:
        return True
    try:
        cached_model(path, config_stamp(path), vocoder_choice(path), adapters)
    except Exception as err:  # noqa: BLE001 - reported as one line, the previous adapters stay usable
        keeping = ", ".join(Path(folder).name for folder, _ in previous) or "none"
        show_error(err, f"adapters not loaded (still using {keeping}): ")
        return False
    choices = st.session_state.setdefault("adapter_choices", {})
    if adapters:
        choices[path] = adapters
    else:
        choices.pop(path, None)
    return True


def fitting_adapters(path: str, folders: list[str]) -> list[str]:
    """Those of `folders` that fit the model in `path` (a clip's settings reused on another model keep none of
    another model's adapters); the session's current copy of the model is asked (cached: nothing loads again)."""
    if not folders:
        return []
    try:
        pipe = cached_model(path, config_stamp(path), vocoder_choice(path), adapter_choice(path))
    except Exception:  # noqa: BLE001 - the model's own loading error is shown where the page loads it
        return []
    fits, _ = adapters_for(pipe, {folder: Path(folder) for folder in folders})
    return [folder for folder in folders if folder in fits]


def adapter_options(pipe: Any) -> tuple[dict[str, Path], int]:
    """The adapter folders in the model dir (and its adapters/ folder) that fit `pipe`, and how many do not."""
    return adapters_for(pipe, find_adapters(default_model_dir()))


@st.cache_resource(show_spinner="Loading the training index…", max_entries=2)
def cached_novelty(source: str) -> Callable[[Any, int], tuple[float, str, str]]:
    """nearest(wave [C, T], sample_rate) -> (similarity, file, caption) over a training index, loaded once."""
    from soundsmith.eval.novelty import index_embedder, nearest_training_clip, resolve_index

    index = resolve_index(source)
    embedder = index_embedder(index)
    return lambda wave, sample_rate: tuple(nearest_training_clip(wave, sample_rate, index, embedder))


def novelty_check() -> tuple[Callable[[Any, int], tuple[float, str, str]] | None, str]:
    """(the nearest-training-clip function, or None and why): the index of `--novelty-index`, else of the
    checkout's standard corpus when one has been built (an installed copy has none: --novelty-index only)."""
    source = os.environ.get(NOVELTY_INDEX_ENV)
    if not source:
        corpus = jobs.default_reference_dir()
        if corpus is None or not (corpus / "metadata.jsonl").is_file():
            return None, "no training index (start the app with --novelty-index DATA)"
        source = str(corpus)
    try:
        return cached_novelty(source), ""
    except (FileNotFoundError, ValueError) as err:
        return None, one_line(err)


@st.cache_resource
def gate_for(path: str) -> ModelGate:
    """The per-model gate: one generation at a time, shared by all sessions."""
    return ModelGate()


def sidebar() -> None:
    """The model picker (shipped defaults that exist, other model folders in the model dir, or any folder
    typed in). Stores the choice in `st.session_state["model_path"]`; loading happens in `current_model`."""
    model_dir = default_model_dir()
    found = find_models(model_dir)
    with st.sidebar:
        st.markdown("### soundsmith")
        options = [*found, OTHER]
        choice = st.selectbox("Model", options, key="model_choice",
                              help=f"Model folders found in {model_dir}, or type a model folder inside it (any folder "
                                   "if the app was started with --allow-any-folder): ours, a diffusers AudioLDM / "
                                   "MusicLDM folder, or a converted MusicGen folder.")
        st.session_state["model_error"] = None
        if choice == OTHER:
            text = st.text_input("Model folder", key="model_folder", placeholder="/path/to/a/model/folder")
            if not text.strip():
                st.session_state["model_path"] = None
                st.session_state["model_error"] = "No model chosen: type a model folder in the sidebar."
            else:
                try:
                    inside = check_inside(text, [model_dir], "model folder")  # a visitor may not roam the host
                    st.session_state["model_path"] = str(check_model_folder(str(inside)).resolve())
                except USER_ERRORS as err:
                    st.session_state["model_path"] = None
                    st.session_state["model_error"] = one_line(err)
        else:
            st.session_state["model_path"] = str(found[choice].resolve())
        if not found:
            st.caption(f"No model folders found in {model_dir}.")


def current_model() -> tuple[str, Any, Capabilities] | None:
    """(folder, pipeline, capabilities) of the sidebar's choice; an st.error and None when there is none."""
    path = st.session_state.get("model_path")
    if not path:
        st.error(st.session_state.get("model_error") or "No model chosen: pick one in the sidebar.")
        return None
    try:
        pipe = cached_model(path, config_stamp(path), vocoder_choice(path), adapter_choice(path))
        caps = capabilities_of(pipe)
    except Exception as err:  # noqa: BLE001 - any loading failure is reported, the app keeps working
        show_error(err, f"cannot load {Path(path).name}: ")
        return None
    with st.sidebar:
        vocoder = f" · vocoder {caps.vocoder}" if caps.vocoder else ""
        adapters = "".join(f" · adapter {Path(folder).name} x{scale:g}" for folder, scale in caps.adapters)
        st.caption(f"{caps.backend} backend{vocoder}{adapters} · {caps.sample_rate} Hz · "
                   f"{getattr(pipe, 'device', 'cpu')}")
        if str(getattr(pipe, "device", "cpu")) == "cpu":
            st.caption("Running on the CPU: longer clips and many steps take a while.")
    return path, pipe, caps


# ------------------------------------------------------------------------------------------- progress


class ProgressCallback:
    """`callback(step, total)` for a pipeline: moves a progress bar; if the user interrupts the run (the
    Interrupt button, or any widget), Streamlit raises its stop/rerun at the bar update. That is caught here
    and turned into the pipeline's own cancel (return False -> GenerationCancelled), so the pipeline unwinds
    cleanly; `reraise()` then hands Streamlit its request back."""

    MIN_INTERVAL_S = 0.25

    def __init__(self, bar: Any, *, state_key: str = "progress", describe: Callable[[int, int], str] | None = None):
        self.bar = bar
        self.state_key = state_key
        self.describe = describe or (lambda step, total: f"step {step} of {total}")
        self.control: BaseException | None = None
        self.last_update = 0.0

    def __call__(self, step: int, total: int) -> bool:
        # a token model calls back once per token (~1,000 times for 5 s): drawing each one costs more than
        # the sampling, so the bar moves at most every MIN_INTERVAL_S (and always at the end)
        now = time.monotonic()
        if step < total and now - self.last_update < self.MIN_INTERVAL_S:
            return True
        self.last_update = now
        return self.update(step / max(total, 1), self.describe(step, total))

    def update(self, fraction: float, text: str) -> bool:
        st.session_state[self.state_key] = text  # what the interrupt notice reports
        try:
            self.bar.progress(min(1.0, max(0.0, fraction)), text=text)
        except (RerunException, StopException) as exc:
            self.control = exc
            return False
        return True

    def reraise(self) -> None:
        if self.control is not None:
            raise self.control


def interrupt_button(key: str, state_key: str) -> None:
    """A button that interrupts the running generation (clicking it reruns the script, which stops the run at
    the next progress update) and leaves a notice for the next run."""

    def note() -> None:
        where = st.session_state.get(state_key)
        st.session_state[f"{key}_notice"] = (f"Interrupted at {where}; nothing was kept." if where
                                             else "Interrupted before sampling started; nothing was kept.")

    st.button("Interrupt", key=key, on_click=note, icon=":material/stop_circle:")


def show_notice(key: str) -> None:
    notice = st.session_state.pop(f"{key}_notice", None)
    if notice:
        st.warning(notice)


def queue_message(box: Any) -> Callable[[int], None]:
    def on_wait(ahead: int) -> None:
        box.info(f"Queued: this model is busy with another generation ({ahead} ahead of yours, from this or "
                 "another session). Yours starts when it finishes.", icon=":material/hourglass_top:")
    return on_wait


# ---------------------------------------------------------------------------------------- result cards


def reuse_settings(settings: dict[str, Any]) -> None:
    """Button callback: hand `settings` to the Generate page (applied before its widgets are drawn)."""
    st.session_state["pending_settings"] = dict(settings)
    st.session_state["go_generate"] = True


def take_card(entry: jobs.HistoryEntry, take: jobs.Take, *, prefix: str) -> None:
    """One clip: player, waveform + mel, CLAP score, seed and parameters, WAV/FLAC downloads, reuse."""
    with st.container(border=True):
        score = "n/a" if take.clap_score is None else f"{take.clap_score:.3f}"
        st.markdown(f"**{take.prompt}**  \nseed `{take.seed}` · CLAP score {score} · {take.duration_s:.2f} s · "
                    f"{take.sample_rate} Hz")
        if take.nearest is not None:
            similarity, file_name, caption = take.nearest
            near = f"nearest training clip `{file_name}` (similarity {similarity:.3f}): {caption}"
        else:
            near = f"nearest training clip: {novelty_check()[1] or 'not computed'}"
        st.caption(f"watermark: {take.watermark}  \n{near}")
        vocoder = entry.vocoder or "none (the model decodes to audio itself)"
        st.caption(f"vocoder: {vocoder} · loudness: {take.loudness}")
        adapters = entry.parameters.get("adapters") or []
        if adapters:
            st.caption("adapters: " + ", ".join(f"{Path(str(a.get('folder'))).name} ({a.get('component')}, scale "
                                                f"{a.get('scale'):g})" for a in adapters))
        st.audio(str(take.wav), format="audio/wav")
        if take.png.is_file():  # files deleted from the output root by hand: show what is left
            st.image(str(take.png), width="stretch")
        c1, c2, c3 = st.columns(3)
        key = f"{prefix}-{entry.id}-{take.index}"
        c1.download_button("WAV", data=_reader(take.wav), file_name=take.wav.name, mime="audio/wav",
                           key=f"{key}-wav", on_click="ignore", icon=":material/download:")
        if take.flac.is_file():
            c2.download_button("FLAC", data=_reader(take.flac), file_name=take.flac.name, mime="audio/flac",
                               key=f"{key}-flac", on_click="ignore", icon=":material/download:")
        c3.button("Reuse these settings", key=f"{key}-reuse", on_click=reuse_settings,
                  args=(entry.take_settings(take),), help="Fill the Generate page with this clip's settings and seed")
        with st.expander("Parameters"):
            st.json({"seed": take.seed, **entry.parameters}, expanded=False)


def _reader(path: Path) -> Callable[[], bytes]:
    return lambda: path.read_bytes()  # read when downloaded, not on every rerun
