"""Readers & agreement: the acceptance policy (admins set k), each reviewer's own queue, and chance-corrected
agreement between reviewers per class with the number of images it rests on."""

from __future__ import annotations

import streamlit as st

from engine.data.labels import CLASSES
from studio import api

st.title("Readers & agreement")
client = api.client()
me = api.session().user

policy = api.call(client.review_policy)
if policy is None:
    st.stop()
st.subheader("Acceptance policy")
st.write(f"An image is **accepted** with **{policy.accepts_needed}** accept(s) and no reject; one reject rejects it.")
if me.role == "admin":
    with st.form("policy"):
        k = st.number_input("Accepts needed (k)", 1, 20, policy.accepts_needed, key="policy_k")
        if st.form_submit_button("Set policy") and api.call(client.set_review_policy, int(k)) is not None:
            st.rerun()

st.subheader("Your queue")
queue = {c: (api.call(client.review_queue, label=c, mine=True, limit=1) or None) for c in CLASSES}
st.dataframe([{"class": c, "images you have not decided": q.total if q else None} for c, q in queue.items()],
             hide_index=True)

st.subheader("Agreement between reviewers")
agreement = api.call(client.agreement)
if agreement is not None:
    st.dataframe([{"class": c, "reviewers": ", ".join(a.reviewers) or "–", "images decided by 2+": a.images,
                   "kappa": None if a.kappa is None else round(a.kappa, 3),
                   "method": {"cohen": "Cohen's kappa (2 readers)", "fleiss": "Fleiss' kappa (3+ readers)"}.get(
                       a.method or "", "–")} for c, a in agreement.items()], hide_index=True)
    st.caption("Kappa corrects raw agreement for chance: 1 is perfect, 0 is what chance alone gives. With few "
               "images it is unstable: read it together with the count.")
