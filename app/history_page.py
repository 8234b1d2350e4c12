"""History page: the app's generations, newest first, kept in its output folder (they survive a reload and a
restart); replay, download, reuse, clear."""

from __future__ import annotations

import streamlit as st
from soundsmith.app import jobs, ui

PER_PAGE = 20  # entries drawn at once: each card sends its audio and picture to the browser


def clear_history() -> None:
    """Button callback: delete the listed entries' clips from the output folder and forget them."""
    ui.history_store().remove(ui.history())
    st.session_state["history"] = []
    st.session_state["h_page"] = 1


def render() -> None:
    st.title("History")
    if st.session_state.get("go_generate"):  # "Reuse these settings" was pressed on this page
        st.switch_page("generate_page.py")
    entries = ui.history(reload=True)  # other sessions' clips, and files deleted on disk, show at once
    if not entries:
        st.info(f"No generations yet. They are kept in {ui.default_output_dir()} until you clear them.")
        return
    takes = [t for e in entries for t in e.takes]
    c1, c2 = st.columns([1, 1])
    c1.download_button(f"Download all {len(takes)} clips (zip)", data=lambda: jobs.zip_bytes([t.wav for t in takes]),
                       file_name="soundsmith-history.zip", mime="application/zip", on_click="ignore",
                       key="h_zip", icon=":material/folder_zip:")
    c2.button("Clear history", key="h_clear", on_click=clear_history, icon=":material/delete:",
              help=f"Deletes every clip listed here from {ui.default_output_dir()}")
    newest_first = entries[::-1]
    pages = (len(newest_first) + PER_PAGE - 1) // PER_PAGE
    page = 1
    if pages > 1:
        st.session_state["h_page"] = min(max(int(st.session_state.get("h_page", 1)), 1), pages)
        page = int(st.number_input(f"Page (of {pages}, newest first)", 1, pages, step=1, key="h_page"))
    if len(entries) >= jobs.HISTORY_SHOWN:
        st.caption(f"The newest {jobs.HISTORY_SHOWN} generations; older ones stay in {ui.default_output_dir()}.")
    for entry in newest_first[(page - 1) * PER_PAGE:page * PER_PAGE]:
        first = entry.takes[0]
        with st.expander(f"{entry.created} · {first.prompt} · {len(entry.takes)} clip(s) · "
                         f"{entry.parameters.get('mode', 'text-to-audio')}", expanded=entry is newest_first[0]):
            st.caption(f"model {entry.model} · {entry.seconds:.1f} s compute")
            columns = st.columns(min(2, len(entry.takes)))
            for i, take in enumerate(entry.takes):
                with columns[i % len(columns)]:
                    ui.take_card(entry, take, prefix="history")


if __name__ == "__main__":
    render()
