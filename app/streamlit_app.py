"""The app's entry script: `streamlit run app/streamlit_app.py` (what `soundsmith app` runs).

Four pages (st.navigation) share the sidebar's model picker and the session's folder and history.
"""

from __future__ import annotations

import streamlit as st
from soundsmith.app import ui


def main() -> None:
    st.set_page_config(page_title="soundsmith", page_icon=":material/graphic_eq:", layout="wide")
    pages = [
        st.Page("generate_page.py", title="Generate", icon=":material/graphic_eq:", default=True),
        st.Page("batch_page.py", title="Batch", icon=":material/queue_music:"),
        st.Page("evaluate_page.py", title="Evaluate", icon=":material/analytics:"),
        st.Page("history_page.py", title="History", icon=":material/history:"),
    ]
    page = st.navigation(pages)
    ui.sidebar()
    page.run()


if __name__ == "__main__":
    main()
