"""Datasets: freeze the curated set as a new immutable version (real images + synthetic accepted under the policy,
up to per-class targets), browse versions with their counts and lineage, and export one for use anywhere."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from engine.labels import CLASSES
from engine.pipelines import curation_badge
from engine.schemas import DatasetVersion
from studio import api

st.title("Datasets")
client = api.client()
stats = api.call(client.stats)
policy = api.call(client.review_policy)
if stats is None or policy is None:
    st.stop()

with st.expander("Freeze the curated set as a new version", expanded=False):
    st.caption(f"Every real image (train, val and test as imported) plus the synthetic images accepted under the "
               f"policy in force — {policy.accepts_needed} accept(s) and no reject — as extra train images. "
               "A version never changes; training always names one.")
    accepted = stats.synthetic["accepted"]
    cap = st.toggle("Cap synthetic images per class", False, key="datasets_cap_on")
    targets = None
    if cap:
        st.caption("At most this many accepted synthetic images per class (the earliest accepted first):")
        columns = st.columns(len(CLASSES))
        targets = {c: int(col.number_input(f"{c} ({accepted[c]} accepted)", 0, 1_000_000, accepted[c],
                                           key=f"datasets_cap_{c}")) for c, col in zip(CLASSES, columns, strict=True)}
    else:
        st.dataframe([{"class": c, "real train": stats.real["train"][c], "accepted synthetic": accepted[c]}
                      for c in CLASSES], hide_index=True)
    name = st.text_input("Name", "curated", max_chars=64, key="datasets_name",
                         help="Letters, digits, - _ . (a date and a random suffix are added)")
    note = st.text_input("Note", key="datasets_note", placeholder="why this version exists")
    if st.button("Freeze", type="primary", key="datasets_freeze", disabled=not api.can_decide()):
        version = api.call(client.freeze_dataset, name, note or None, targets=targets)
        if version is not None:
            st.success(f"Froze **{version.id}**: {version.n_images} images.")

versions = api.call(client.datasets) or []
if not versions:
    st.info("No version yet: freeze the curated set above (or `dermae datasets freeze NAME`).")
    st.stop()


def totals(version: DatasetVersion, source: str) -> int:
    return sum(sum(per_class.values()) for per_class in version.counts.get(source, {}).values())


st.subheader("Versions")
st.dataframe([{"version": v.id, "created (UTC)": v.created_at.strftime("%Y-%m-%d %H:%M"), "real": totals(v, "real"),
               "synthetic": totals(v, "synthetic"), "curation": curation_badge(v), "note": v.note or ""}
              for v in versions], hide_index=True, width="stretch")
chosen = st.selectbox("Version", [v.id for v in versions], key="datasets_version")
version = next(v for v in versions if v.id == chosen)
badge = curation_badge(version)
st.badge(badge, color="green" if badge.startswith("human-reviewed") else "gray" if badge.startswith("real only")
         else "orange", icon=":material/verified:" if badge.startswith("human-reviewed") else None)

real_train = version.counts.get("real", {}).get("train", {})
synthetic = version.counts.get("synthetic", {}).get("train", {})
left, right = st.columns([3, 2])
with left:
    figure = go.Figure([
        go.Bar(name="real train", x=list(CLASSES), y=[real_train.get(c, 0) for c in CLASSES], marker_color="#8c6d62"),
        go.Bar(name="synthetic (train)", x=list(CLASSES), y=[synthetic.get(c, 0) for c in CLASSES],
               marker_color="#e07a5f"),
    ])
    figure.update_layout(barmode="stack", height=320, margin={"t": 30, "b": 10}, yaxis_title="images",
                         title=f"{version.id}: train images per class")
    st.plotly_chart(figure, width="stretch")
with right:
    st.dataframe([{"class": c, **{f"{source} {split}": per_split.get(split, {}).get(c, 0)
                                  for source, per_split in version.counts.items() for split in per_split}}
                  for c in CLASSES], hide_index=True)

def real_data_text(real_data: list[dict]) -> str:
    if not real_data:
        return "not recorded (frozen before versions kept it)"
    return "; ".join(f"{e['images']} from {e['format']} `{e['source']}`, {e['split_kind'] or 'unrecorded'} split"
                     for e in real_data)


st.markdown("**Lineage** — what this version rests on")
lineage, version_policy = version.lineage, version.policy
st.markdown(
    f"- selection: `{version_policy.get('selection')}`, {version_policy.get('accepts_needed')} accept(s) and no "
    f"reject; caps per class: {version_policy.get('targets') or 'none'}\n"
    f"- real images: {real_data_text(lineage.get('real_data', []))}\n"
    f"- review events behind its synthetic images: {lineage.get('review_events', 0)}\n"
    f"- generation jobs: {', '.join(map(str, lineage.get('generation_jobs', []))) or 'none'}\n"
    f"- generator checkpoints: {', '.join(f'`{c}`' for c in lineage.get('checkpoints', [])) or 'none'}\n"
    f"- manifest SHA-256: `{version.manifest_sha256}`")

st.markdown("**Export** — manifest (CSV and Parquet) and images in `<split>/<class>/` folders, as torchvision's "
            "`ImageFolder` reads them")
if st.button("Prepare the zip", key="datasets_prepare"):
    with st.spinner("Packing the images…"):
        st.session_state["datasets_zip"] = (version.id, api.call(client.dataset_zip, version.id))
prepared = st.session_state.get("datasets_zip")
if prepared and prepared[0] == version.id and prepared[1]:
    st.download_button(f"Download {version.id}.zip ({len(prepared[1]) / 1e6:.1f} MB)", prepared[1],
                       f"{version.id}.zip", "application/zip", key="datasets_download")
st.caption(f"Or to a folder: `dermae datasets export {version.id} DEST`")
