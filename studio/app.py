"""DerMAE Studio: `streamlit run studio/app.py` (or `dermae up`). Sign in, then review synthetic lesions per class,
freeze curated dataset versions, run jobs and compare training runs.

Each page is one file under pages/; this script only signs people in and picks the page.
"""

from __future__ import annotations

import os

import streamlit as st

from engine.settings import exposure_problem
from studio import api

# Navigation on top and the sidebar (who is signed in, sign out) folded away: the Review page's reading station
# needs the full width — at 1280 px a sidebar leaves no room for a 384 px lesion beside its nearest real image.
st.set_page_config(page_title="DerMAE Studio", page_icon="🔬", layout="wide", initial_sidebar_state="collapsed")
st.html("<style>[data-testid='stMainBlockContainer'] {padding-top: 3.5rem; padding-bottom: 2rem}</style>")

# Started by hand on another address, the studio serves nothing unless a token was set on purpose, as the engine
# and `dermae up` demand. (`dermae up` and the repository's .streamlit/config.toml set 127.0.0.1.)
exposure = exposure_problem(st.get_option("server.address") or "127.0.0.1", os.environ.get("DERMAE_API_TOKEN"),
                            "the studio", "DERMAE_API_TOKEN")
if exposure:
    st.error(exposure)
    st.stop()

if api.session() is None:
    page = st.navigation([st.Page("pages/sign_in.py", title="Sign in", icon=":material/login:")])
else:
    user = api.session().user
    with st.sidebar:
        st.caption(f"Signed in as **{user.name}** ({user.role})")
        if st.button("Sign out", key="sign_out"):
            api.sign_out()
            st.rerun()
    page = st.navigation([
        st.Page("pages/overview.py", title="Overview", icon=":material/bar_chart:", default=True),
        st.Page("pages/review.py", title="Review", icon=":material/grid_view:"),
        st.Page("pages/agreement.py", title="Readers & agreement", icon=":material/groups:"),
        st.Page("pages/history.py", title="History", icon=":material/history:"),
        st.Page("pages/turing.py", title="Turing test", icon=":material/visibility:"),
        st.Page("pages/runs.py", title="Runs & models", icon=":material/insights:"),
        st.Page("pages/datasets.py", title="Datasets", icon=":material/dataset:"),
        st.Page("pages/jobs.py", title="Jobs", icon=":material/play_circle:"),
    ], position="top")
page.run()
