"""History: every decision event, filterable by reviewer, class and time. Undo is an event too; nothing is ever
deleted or edited, so this is the full record."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import streamlit as st

from engine.labels import CLASSES
from studio import api
from studio.reasons import reasons_text

PAGE = 100

st.title("History")
client = api.client()
cols = st.columns(4)
reviewer = cols[0].selectbox("Reviewer", [None, *(api.call(client.reviewers) or [])], key="history_reviewer",
                             format_func=lambda r: "everyone" if r is None else r)
label = cols[1].selectbox("Class", [None, *CLASSES], key="history_class",
                          format_func=lambda c: "all classes" if c is None else c)
today = datetime.now(UTC).date()
period = cols[2].date_input("Between (UTC)", (today - timedelta(days=30), today), key="history_period")
start, end = (period if isinstance(period, tuple) and len(period) == 2 else (None, None))
page_number = cols[3].number_input("Page", 1, 10**6, 1, key="history_page")

history = api.call(client.review_history, reviewer=reviewer, label=label,
                   since=datetime.combine(start, time.min) if start else None,
                   until=datetime.combine(end, time.min) + timedelta(days=1) if end else None,
                   limit=PAGE, offset=(page_number - 1) * PAGE)
if history is not None:
    st.caption(f"{history.total} events · newest first")
    api.call(api.prefetch_thumbnails, client, [e.image_id for e in history.items])
    st.dataframe([{
        "#": e.seq, "image": api.thumbnail_uri(client, e.image_id), "when (UTC)": e.created_at.strftime(
            "%Y-%m-%d %H:%M:%S"), "reviewer": e.reviewer,
        "class": e.label, "decision": e.decision if e.decision != "undo" else f"undo of #{e.undoes}",
        "reasons": reasons_text(e.reasons), "note": e.note or "",
        "taken back": f"by #{e.undone_by}" if e.undone_by else "", "id": e.image_id[:12],
    } for e in history.items], hide_index=True, width="stretch", row_height=56,
        column_config={"image": st.column_config.ImageColumn("image", width="small"),
                       "reasons": st.column_config.TextColumn("reasons", width="medium"),
                       "note": st.column_config.TextColumn("note", width="medium")})
