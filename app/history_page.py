"""History page: this session's generations, newest first; replay, download, reuse, clear."""

from __future__ import annotations

import shutil

import streamlit as st
from soundsmith.app import jobs, ui


def clear_history() -> None:
    """Button callback: forget the entries and delete their files from the session folder."""
    for entry in ui.history():
        shutil.rmtree(entry.folder, ignore_errors=True)
    st.session_state["history"] = []


def render() -> None:
    st.title("History")
    if st.session_state.get("go_generate"):  # "Reuse these settings" was pressed on this page
        st.switch_page("generate_page.py")
    entries = ui.history()
    if not entries:
        st.info("No generations in this session yet. They are kept until you close the tab or clear them.")
        return
    takes = [t for e in entries for t in e.takes]
    c1, c2 = st.columns([1, 1])
    c1.download_button(f"Download all {len(takes)} clips (zip)", data=lambda: jobs.zip_bytes([t.wav for t in takes]),
                       file_name="soundsmith-history.zip", mime="application/zip", on_click="ignore",
                       key="h_zip", icon=":material/folder_zip:")
    c2.button("Clear history", key="h_clear", on_click=clear_history, icon=":material/delete:",
              help="Removes every clip of this session from the server")
    for entry in reversed(entries):
        first = entry.takes[0]
        with st.expander(f"{entry.created} · {first.prompt} · {len(entry.takes)} clip(s) · "
                         f"{entry.parameters.get('mode', 'text-to-audio')}", expanded=entry is entries[-1]):
            st.caption(f"model {entry.model} · {entry.seconds:.1f} s compute")
            columns = st.columns(min(2, len(entry.takes)))
            for i, take in enumerate(entry.takes):
                with columns[i % len(columns)]:
                    ui.take_card(entry, take, prefix="history")


if __name__ == "__main__":
    render()
