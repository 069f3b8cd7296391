"""Overview: which data the workspace holds and how it was split; per class, the real train count, synthetic
pending / accepted / rejected and the target; the class balance before and after the accepted synthetic images;
the independent judge's verdict on the newest generated set, class by class against the bars; generation for the
planner's deficit; running jobs."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from engine.data.planner import TargetRule, class_targets, plan_quotas
from engine.labels import CLASSES
from studio import api, fidelity

LOG_TICKS = [1, 3, 10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000]


def generation_estimate(client, images: int) -> str:
    """About how long generating `images` takes, from the newest finished generate job's speed (candidates
    made per second, oversampling included); unknown before the first."""
    done = api.call(client.jobs, kind="generate", state="succeeded", limit=1)
    job = done.items[0] if done and done.items else None
    result = job.result if job and isinstance(job.result, dict) else {}
    if not (job and job.started_at and job.finished_at and result.get("generated") and result.get("candidates")):
        return "how long it takes shows after a first generation has run"
    seconds = (job.finished_at - job.started_at).total_seconds() * images / result["generated"]
    return f"about {seconds / 60:.0f} min at the speed of generate job {job.id} " \
           f"({result['candidates'] / result['generated']:.1f} candidates per kept image)"


st.title("Overview")
client = api.client()
stats = api.call(client.stats)
if stats is None:
    st.stop()
if stats.phantom:
    st.warning("This workspace holds PHANTOM lesions (generated shapes), not clinical data.")
batches = [b for b in (api.call(client.imports) or []) if b.n_added]
if batches:
    st.caption("Real data: " + "; ".join(
        f"{b.format} ({b.n_added} images, {b.split_kind or 'unrecorded'} split)" for b in batches)
        + ("" if all(b.split_kind == "lesion-aware" for b in batches) else
           " — where a split is not lesion-aware, images of one lesion may sit in train and test and test figures "
           "are optimistic."))

real_train = stats.real["train"]
accepted = stats.synthetic["accepted"]
left, right = st.columns([1, 2])
with left:
    rule = st.radio("Target per class", [r.value for r in TargetRule if r != TargetRule.explicit],
                    format_func={"majority": "up to the largest class", "fixed": "a fixed number"}.get,
                    horizontal=True, key="overview_rule")
    fixed = st.number_input("Images per class (real + accepted)", 0, 100_000, 600, 50, key="overview_target",
                            disabled=rule != "fixed")
targets = class_targets(real_train, rule, int(fixed))
deficit = plan_quotas(real_train, accepted, rule, int(fixed))

rows = [{"class": c, "real train": real_train[c], "pending": stats.synthetic["pending"][c],
         "accepted": accepted[c], "rejected": stats.synthetic["rejected"][c], "target": targets[c],
         "still needed": deficit[c]} for c in CLASSES]
with right:
    st.dataframe(rows, hide_index=True, width="stretch")

figure = go.Figure([
    go.Bar(name="real train", x=list(CLASSES), y=[real_train[c] for c in CLASSES], marker_color="#8c6d62"),
    go.Bar(name="+ accepted synthetic", x=list(CLASSES), y=[accepted[c] for c in CLASSES], marker_color="#e07a5f"),
])
figure.add_scatter(x=list(CLASSES), y=[targets[c] for c in CLASSES], mode="markers", name="target",
                   marker={"symbol": "line-ew-open", "size": 28, "color": "#3d405b", "line": {"width": 3}})
log_scale = st.toggle("log scale", True, key="overview_log")
figure.update_layout(barmode="stack", height=360, margin={"t": 30, "b": 10}, yaxis_title="images",
                     title="Class balance: before (real) and after (stacked: + accepted synthetic)")
if log_scale:  # plotly's default log ticks ("2 5 100 2 5") are unreadable: round numbers, with separators
    figure.update_yaxes(type="log", tickvals=LOG_TICKS, tickformat=",d")
st.plotly_chart(figure, width="stretch")

fidelity.show_judge_report(client)

needed = sum(deficit.values())
if api.can_decide():
    # Generation needs a trained generator: one that is done, or one still training (then generation waits for it).
    trained = bool((api.call(client.jobs, kind="train_ldm", state="succeeded", limit=1) or api.EMPTY_JOBS).total)
    training = [j for state in ("running", "queued") for j in (api.call(client.jobs, kind="train_ldm", state=state)
                                                               or api.EMPTY_JOBS).items]
    if not trained and not training:
        st.info("No generator is trained yet: start one with `dermae pipeline generator` (or `make demo`).")
    label = f"Queue generation of {needed:,} images for the deficit…" if needed else "No class needs images"
    if st.button(label, disabled=needed == 0 or not (trained or training), type="primary", key="overview_generate"):
        st.session_state.overview_confirm = True  # the count shown is the deficit as it stands when confirmed
    if st.session_state.get("overview_confirm"):
        st.warning(f"Generate **{needed:,}** images ({', '.join(f'{c} {n:,}' for c, n in deficit.items() if n)})? "
                   f"That is {generation_estimate(client, needed)}.")
        yes, no, _ = st.columns([1, 1, 4])
        if yes.button(f"Yes, queue {needed:,}", key="overview_generate_yes", type="primary", disabled=needed == 0):
            st.session_state.overview_confirm = None
            params = {"rule": rule, "target": int(fixed)} if rule == "fixed" else {"rule": rule}
            after = [] if trained else [training[0].id]
            job = api.call(client.submit_job, "generate", params, after=after)
            if job is not None:
                waits = f" It starts when generator job {after[0]} has finished." if after else ""
                st.success(f"Queued generate job {job.id}; a score job follows it.{waits} Its images appear "
                           "under Review as they are made.")
        if no.button("Cancel", key="overview_generate_no"):
            st.session_state.overview_confirm = None
            st.rerun()

st.subheader("Jobs")
pages = [api.call(client.jobs, state=state) for state in ("running", "cancelling", "queued")]
active = [job for page in pages if page is not None for job in page.items]
if not active:
    st.caption("No job is running or queued.")
for job in active:
    fraction = job.progress.fraction
    text = f"job {job.id} · {job.kind} · {job.state.value}" + (f" · {job.progress.message}"
                                                                if job.progress.message else "")
    st.progress(min(1.0, fraction or 0.0), text=text)
