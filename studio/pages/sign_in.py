"""Sign in with an account an admin made (`dermae users add NAME --role reviewer`)."""

from __future__ import annotations

import streamlit as st

from studio import api

st.title("DerMAE Studio")
st.write("Review synthetic skin lesions before they are used for training.")
if api.engine_url() is None:
    st.error("No engine server is running for this workspace: start one with `dermae up`.")
with st.form("sign_in"):
    name = st.text_input("Name", key="sign_in_name")
    password = st.text_input("Password", type="password", key="sign_in_password")
    submitted = st.form_submit_button("Sign in", type="primary")
if submitted and api.call(api.sign_in, name.strip(), password) is not None:
    st.rerun()
st.caption("No account? An admin adds one with `dermae users add NAME --role reviewer`.")
