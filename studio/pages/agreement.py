"""Readers & agreement: the review policy (admins set k and blind reading; every change is on record), what is left
in each reviewer's own queue, and agreement between reviewers — overall and per class: how many images it rests
on, percent agreement, the table of the readers' decisions, and chance-corrected kappa with its 95% interval."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.labels import CLASS_NAMES, CLASSES
from studio import api

METHODS = {"cohen": "Cohen's kappa (2 readers)", "fleiss": "Fleiss' kappa (3+ readers)"}

st.title("Readers & agreement")
client = api.client()
me = api.session().user

policy = api.call(client.review_policy)
if policy is None:
    st.stop()
st.subheader("Review policy")
st.write(f"An image is **accepted** with **{policy.accepts_needed}** accept(s) and no reject; one reject rejects it. "
         + ("Reading is **blind**: a reviewer sees no other reviewer's decision on an image until they have decided "
            "it (admins see everything)." if policy.blind else
            "Reading is **open**: reviewers see each other's decisions before deciding, which biases agreement."))
if me.role == "admin":
    with st.form("policy"):
        cols = st.columns(2)
        # keyed by the policy's version: changed elsewhere (CLI, another admin), the fields start from the new one
        version = f"{policy.changed_at}"
        k = cols[0].number_input("Accepts needed (k)", 1, 20, policy.accepts_needed, key=f"policy_k_{version}")
        blind = cols[1].toggle("Blind reading", policy.blind, key=f"policy_blind_{version}")
        if st.form_submit_button("Set policy"):
            changed = {"accepts_needed": int(k) if k != policy.accepts_needed else None,
                       "blind": blind if blind != policy.blind else None}  # only what this admin changed
            if all(v is None for v in changed.values()):
                st.info("Nothing changed.")
            elif api.call(client.set_review_policy, **changed) is not None:
                st.rerun()
    trail = api.call(client.review_policy_history) or []
    if trail:
        with st.expander(f"Policy changes ({len(trail)})"):
            st.dataframe([{"when (UTC)": p.changed_at, "by": p.changed_by, "accepts needed": p.accepts_needed,
                           "reading": "blind" if p.blind else "open"} for p in trail], hide_index=True)

st.subheader("Your queue")
left = api.call(client.review_progress) or {}
st.dataframe([{"class": c, "name": CLASS_NAMES[c], "images you have not decided": left.get(c, 0)} for c in CLASSES],
             hide_index=True)

st.subheader("Agreement between reviewers")
agreement = api.call(client.agreement)
if agreement is None:
    st.stop()


def kappa_text(row) -> str:
    if row.images == 0:
        return "no image read by two reviewers yet"
    if not row.enough:
        return f"not enough images ({row.images} < {row.min_images})"
    if row.kappa is None:
        return "undefined: every decision was the same"
    interval = f" [{row.kappa_ci95[0]:.2f}, {row.kappa_ci95[1]:.2f}]" if row.kappa_ci95 else ""
    return f"{row.kappa:.2f}{interval}"


st.dataframe([{"scope": "all classes" if scope == "all" else scope,
               "images read by 2+": row.images,
               "agree": "–" if row.percent_agreement is None else f"{row.percent_agreement:.0%}",
               "kappa [95% CI]": kappa_text(row), "method": METHODS.get(row.method or "", "–"),
               "reviewers": ", ".join(row.reviewers) or "–"} for scope, row in agreement.items()],
             hide_index=True)
st.caption("Agree: the share of reader pairs on an image that made the same decision. Kappa corrects that for "
           "chance (1 perfect, 0 what chance alone gives); its interval comes from resampling the images. Below "
           f"{next(iter(agreement.values())).min_images} shared images kappa swings too far to read.")

scopes = [s for s, row in agreement.items() if row.images]
if scopes:
    scope = st.selectbox("Decisions side by side for", scopes, key="agreement_scope",
                         format_func=lambda s: "all classes" if s == "all" else f"{s} · {CLASS_NAMES[s]}")
    row = agreement[scope]
    readers = row.reviewers if row.method == "cohen" else []
    table = pd.DataFrame(row.table).T.loc[lambda t: (t.sum(axis=1) > 0) | (t.sum(axis=0) > 0)]
    table = table.loc[:, table.index]
    first, second = (readers if len(readers) == 2 else ("first reader", "second reader"))
    table.index = [f"{first}: {d}" for d in table.index]
    table.columns = [f"{second}: {d}" for d in table.columns]
    st.dataframe(table)
    st.caption("Each reader pair on an image counts once, the readers of a pair in name order"
               + (f" (rows {first}, columns {second})." if len(readers) == 2 else "."))
