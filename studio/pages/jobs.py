"""Jobs: start the generator chain, a generate job or a train chain from a form filled with the profile's
defaults; follow every job live (a pipeline's chain shown as one); read logs; cancel and retry."""

from __future__ import annotations

import os
from collections import defaultdict

import streamlit as st

from engine.pipelines import freeze_uncurated_twin, generator_chain, synthetic_in, train_chain, uncurated_twin_of
from engine.profiles import DEFAULT_PROFILE, PROFILES, load_profile
from engine.schemas import TERMINAL_STATES, JobInfo, JobState, PipelineStep, PipelineSubmit
from studio import api
from studio.params_form import params_form

STATE_ICONS = {"queued": ":material/schedule:", "running": ":material/play_circle:",
               "cancelling": ":material/stop_circle:", "succeeded": ":material/check_circle:",
               "failed": ":material/error:", "cancelled": ":material/block:"}
REFRESH_SECONDS = 2

st.title("Jobs")
client = api.client()
may_start = api.can_decide()


@st.cache_data(ttl=600, show_spinner=False)
def kind_schemas(_client) -> dict[str, dict]:
    """{job kind: JSON schema of its parameters}, as the engine publishes them (GET /job-kinds)."""
    return {k.name: k.params_schema for k in _client.job_kinds()}


def step_editor(pipeline: PipelineSubmit, key: str) -> PipelineSubmit | None:
    """The chain's steps, one at a time, as typed fields pre-filled with the profile's values; what was changed is
    kept while another step is shown. None while a field does not parse."""
    schemas = api.call(kind_schemas, client) or {}
    # edits belong to this chain as the profile and version made it: another profile or version starts afresh
    made = hash(pipeline.model_dump_json())
    edits = st.session_state.setdefault(f"{key}_edits_{made}", {})
    steps = {step.key: step for step in pipeline.steps}
    which = st.selectbox("Adjust a step", list(steps), key=f"{key}_step", format_func=lambda k: (
        f"{k} · {steps[k].kind}" + (f" (after {', '.join(steps[k].after_keys)})" if steps[k].after_keys else "")
        + (" · changed" if k in edits and edits[k] != steps[k].params else "")))
    step = steps[which]
    if step.kind not in schemas:
        st.error(f"the engine does not know job kind {step.kind!r}")
        return None
    # the widgets' keys carry the chain's identity too: a field drawn for another version must not keep its value
    edits[which], problems = params_form(schemas[step.kind], edits.get(which, step.params),
                                         key=f"{key}_{pipeline.name}_{made}_{which}")
    for problem in problems:
        st.error(f"{which}: {problem}")
    return None if problems else PipelineSubmit(name=pipeline.name, steps=[
        PipelineStep(key=s.key, kind=s.kind, params=edits.get(s.key, s.params), after_keys=s.after_keys)
        for s in pipeline.steps])


def submit(pipeline: PipelineSubmit | None) -> None:
    if pipeline is None:
        return
    run = api.call(client.submit_pipeline, pipeline)
    if run is not None:
        st.session_state["jobs_started"] = run.id
        st.success(f"Started **{run.id}**: jobs {', '.join(str(j.id) for j in run.jobs)}.")


if may_start:
    with st.expander("Start", expanded=not (api.call(client.jobs, limit=1) or api.EMPTY_JOBS).total):
        default_profile = os.environ.get("DERMAE_PROFILE", DEFAULT_PROFILE)
        profile_name = st.selectbox("Profile", PROFILES, PROFILES.index(default_profile)
                                    if default_profile in PROFILES else PROFILES.index(DEFAULT_PROFILE),
                                    key="jobs_profile",
                                    help="cpu64: HAM10000 at 64 px on a CPU (the default) · tiny: DermaMNIST at "
                                         "28-32 px on a CPU · paper: 256 px, GPU · smoke: seconds, for tests")
        profile = load_profile(profile_name)
        generator_tab, generate_tab, train_tab = st.tabs(["Generator chain", "Generate images", "Train chain"])
        with generator_tab:
            st.caption("VAE, then the latent diffusion model, then the reference classifier (the selector) and the "
                       "independent judge, then generation for the planner's quotas (a score job follows).")
            chain = step_editor(generator_chain(profile), "jobs_gen")
            if st.button("Start the generator chain", type="primary", key="jobs_start_generator"):
                submit(chain)
        with generate_tab:
            st.caption("More synthetic images from the newest trained generator, for the planner's quotas.")
            params = profile.params("generate")
            cols = st.columns(4)
            target = cols[0].number_input("Images per class (fixed rule)", 0, 100_000, int(params.get("target", 600)),
                                          50, key="jobs_generate_target")
            guidance = cols[1].number_input("Guidance", 0.0, 20.0, float(params.get("guidance", 3.0)), 0.5,
                                            key="jobs_generate_guidance")
            steps = cols[2].number_input("Sampling steps", 1, 1000, int(params.get("steps", 25)),
                                         key="jobs_generate_steps")
            per_class = params.get("class_oversample") or {}
            oversample = cols[3].number_input("Candidates per kept image", 1.0, 10.0,
                                              float(params.get("oversample", 1.0)), 0.5, key="jobs_generate_over",
                                              help="The profile sets some classes apart: " + ", ".join(
                                                  f"{c} {v:g}" for c, v in per_class.items()) if per_class else None)
            if st.button("Queue generation", type="primary", key="jobs_start_generate"):
                job = api.call(client.submit_job, "generate", params | {
                    "rule": "fixed", "target": int(target), "guidance": float(guidance), "steps": int(steps),
                    "oversample": float(oversample)})
                if job is not None:
                    st.success(f"Queued generate job {job.id}; a score job follows it.")
        with train_tab:
            versions = api.call(client.datasets) or []
            if not versions:
                st.info("No dataset version yet: freeze one on the Datasets page first.")
            else:
                st.caption("MAE pre-training → teacher fine-tune → students distilled on the version, each with its "
                           "real-only baseline, evaluated on the real test split; the first student is exported.")
                chosen = st.selectbox("Dataset version", [v.id for v in versions], key="jobs_train_dataset")
                version = next(v for v in versions if v.id == chosen)
                st.caption(f"{chosen}: {synthetic_in(version)} synthetic train images "
                           f"({version.policy.get('selection', 'reviews')}); the distilled arm is named after what "
                           "it trains on.")
                uncurated = uncurated_twin_of(versions, version)
                if "uncurated" in profile.arms and synthetic_in(version) and uncurated is None:
                    st.info("The uncurated arm (as many synthetic images per class, drawn from everything generated "
                            "before any review) needs its own version: freeze it to include the arm.")
                    if st.button("Freeze the uncurated twin", key="jobs_freeze_twin"):
                        twin = api.call(freeze_uncurated_twin, client, version)
                        if twin is not None:
                            st.rerun()
                chain = step_editor(train_chain(profile, version, uncurated=uncurated), "jobs_train")
                if st.button("Start the train chain", type="primary", key="jobs_start_train"):
                    submit(chain)


def job_line(job: JobInfo, icon: bool = True) -> str:
    """One line per job; the icon only where markdown is rendered (not in a selectbox)."""
    message = f" · {job.progress.message}" if job.progress.message else ""
    label = job.pipeline_key or job.kind
    prefix = f"{STATE_ICONS.get(job.state.value, '')} " if icon else ""
    slurm = f" · Slurm {job.slurm_job_id}" if job.slurm_job_id else ""
    return f"{prefix}job {job.id} · {label} ({job.kind}) · {job.state.value}{slurm}{message}"


def show_job(job: JobInfo) -> None:
    if job.state in TERMINAL_STATES:
        st.caption(job_line(job) + (f" — {job.error}" if job.error else ""))
    else:
        st.progress(min(1.0, job.progress.fraction or 0.0), text=job_line(job))


@st.fragment(run_every=REFRESH_SECONDS)
def live_jobs() -> None:
    page = api.call(client.jobs, limit=200)
    if page is None:
        return
    if not page.items:
        st.caption("No job yet.")
        return
    pipelines: dict[str, list[JobInfo]] = defaultdict(list)
    single = []
    for job in page.items:
        if job.pipeline_id:
            pipelines[job.pipeline_id].append(job)
        else:
            single.append(job)
    for pipeline_id, jobs in sorted(pipelines.items(), key=lambda item: -max(j.id for j in item[1])):
        jobs.sort(key=lambda j: j.id)
        done = sum(j.state == JobState.succeeded for j in jobs)
        broken = [j for j in jobs if j.state in (JobState.failed, JobState.cancelled)]
        active = any(j.state not in TERMINAL_STATES for j in jobs)
        state = "running" if active else ("failed" if broken else "succeeded")
        with st.expander(f"**{pipeline_id}** · {done}/{len(jobs)} jobs done", icon=STATE_ICONS[state],
                         expanded=active or pipeline_id == st.session_state.get("jobs_started")):
            st.progress(done / len(jobs), text=f"pipeline {pipeline_id}: {done} of {len(jobs)} jobs succeeded"
                        + (f", {len(broken)} failed or cancelled" if broken else ""))
            for job in jobs:
                show_job(job)
    if single:
        st.markdown("**Single jobs**")
        for job in single:
            show_job(job)


st.subheader("Live")
live_jobs()

st.subheader("One job")
recent = api.call(client.jobs, limit=200)
if recent is None or not recent.items:
    st.stop()
job_id = st.selectbox("Job", [j.id for j in recent.items], key="jobs_selected", index=None,
                      placeholder="Choose a job to see its log, events and result, and to cancel or retry it",
                      format_func=lambda i: job_line(next(j for j in recent.items if j.id == i), icon=False))
if job_id is None:
    st.stop()
job = api.call(client.job, job_id)
if job is None:
    st.stop()
cols = st.columns(4)
cols[0].metric("State", job.state.value)
cols[1].metric("Attempt", f"{job.attempt} of {job.max_attempts}")
cols[2].metric("Progress", f"{job.progress.fraction:.0%}" if job.progress.fraction is not None else "–")
cols[3].metric("Pipeline", job.pipeline_id or "–")
st.caption(f"Asks for {job.resources.describe(job.num_processes)}"
           + (f" · runs as Slurm job {job.slurm_job_id}" if job.slurm_job_id else ""))
if job.error:
    st.error(job.error)
buttons = st.columns(6)
cancel = buttons[0].button("Cancel", key="jobs_cancel", disabled=not may_start or job.state in TERMINAL_STATES)
if cancel and api.call(client.cancel_job, job.id) is not None:
    st.success(f"Cancelling job {job.id}: it checkpoints, then stops; retry resumes it.")
retry = buttons[1].button("Retry", key="jobs_retry",
                          disabled=not may_start or job.state not in (JobState.failed, JobState.cancelled))
if retry and api.call(client.retry_job, job.id) is not None:
    st.success(f"Job {job.id} is queued again (with the jobs downstream that failed because of it); it resumes "
               "from its last checkpoint.")
with st.expander("Parameters and result"):
    st.json({"params": job.params, "result": job.result, "after": job.after})
log = api.call(client.job_logs, job.id, tail=200)
st.markdown("**Log** (last 200 lines)")
st.code(log.text if log and log.text else "(empty)", language=None)
events = api.call(client.job_events, job.id) or []
st.dataframe([{"when (UTC)": e.created_at.strftime("%H:%M:%S"), "attempt": e.attempt, "event": e.event,
               "message": e.message or ""} for e in events], hide_index=True, width="stretch")
