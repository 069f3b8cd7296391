"""Review: a reading station. One synthetic lesion at a time, large, beside its nearest real training image and real
images of its class — the real ones at their stored resolution, cropped to the centre square the models see — with
the action bar beside it (always in view), the independent judge's verdict and, one click away, the selector's and
the provenance. Keys: A accept, X reject, 1-6 pick reject reasons, N next, U undo, ? the keys. Reading is blind
when the policy says so: others' decisions show once you have decided. The grid below is for bulk work.
"""

from __future__ import annotations

import streamlit as st

from engine.labels import CLASS_NAMES, CLASSES
from studio import api
from studio.reasons import REASONS, reasons_text

SORTS = {"oldest": "oldest first", "newest": "newest first",
         "-judge_prob": "judge: intended class most likely first", "judge_prob": "judge: least likely first",
         "-intended_prob": "selector: intended class most likely first",
         "intended_prob": "selector: least likely first", "nearest_real_dist": "closest to a real image first",
         "-nearest_real_dist": "farthest from real first", "dup_group": "duplicate groups together",
         "sharpness": "blurriest first"}
GRID_COLUMNS = {64: 10, 96: 8, 128: 6, 160: 5}  # thumbnail side (px) -> cells per row, beside the action bar
READING_SIDE = 384  # on-screen px of the image being read: large enough to judge dermoscopic structure
REAL_BESIDE = 6  # real images of the class shown beside it
KEYS = {"A": "accept the image (or the selected ones)", "X": "reject, with the reasons chosen",
        "1-6": "choose or drop a reject reason", "N": "next image", "U": "undo your last action",
        "?": "show or hide these keys"}
# Streamlit's shortcuts take letters and digits only: "?" is heard here and presses the Keys button.
QUESTION_MARK_KEY = """<script>
const doc = document;
if (!doc.dermaeKeysHelp) {
  doc.dermaeKeysHelp = true;
  doc.addEventListener("keydown", (event) => {
    const typing = /^(input|textarea|select)$/i.test(event.target.tagName) || event.target.isContentEditable;
    const button = doc.querySelector(".st-key-review_keys button");
    if (event.key === "?" && !typing && button) { event.preventDefault(); button.click(); }
  });
}
</script>"""


def number(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


@st.cache_data(ttl=15, show_spinner=False)
def generation_jobs(_client) -> list[int]:
    """The generate jobs, for the filter: a few seconds old at most, and not fetched on every decision."""
    return [j.id for j in _client.jobs(kind="generate").items]


@st.cache_data(ttl=15, show_spinner=False)
def known_reviewers(_client) -> list[str]:
    return _client.reviewers()


def nothing_text() -> str:
    """Why the page is empty, in the terms of the filters chosen."""
    text = "Nothing to review with these filters." + (" Your queue for this class is empty." if mine else "")
    policy = api.call(client.review_policy)
    if policy is not None and policy.blind and me.role != "admin" and (status != "all" or reviewer) and mine:
        text += (" Under blind reading, a status or reviewer filter shows only images you have decided, and your "
                 "queue holds none of those: turn *My queue only* off to see them.")
    return text


state = st.session_state
client = api.client()
me = api.session().user
state.setdefault("review_offset", 0)
state.setdefault("review_cursor", 0)
state.setdefault("review_undo", [])  # one entry per action: the event seqs it made, for U
state.setdefault("review_chosen", [])  # reject reasons picked for the next rejection; cleared by every decision
state.setdefault("review_confirm", None)  # a bulk decision waiting for its confirmation
state.setdefault("review_show_keys", False)

# -- what to show ---------------------------------------------------------------------------------------------------
heading = st.columns([1, 3.4, 1.6], vertical_alignment="bottom")
heading[0].header("Review", anchor=False)
if state.pop("review_open", False):  # "open" in the grid: set before the switch is drawn
    state.review_view = "reading"
state.setdefault("review_view", "reading")  # the switch takes its value from here, never from a default as well
# Reading: one image, large, for judging; grid: many at once, for bulk work. The grid is drawn only when asked
# for: 48 thumbnails with their checkboxes would slow every decision's rerun.
view = heading[2].segmented_control("View", ["reading", "grid"], key="review_view",
                                    required=True, label_visibility="collapsed",
                                    format_func={"reading": "One image", "grid": "Grid (bulk)"}.get)
top = st.columns([3.4, 2.6, 2.0, 1.3], vertical_alignment="bottom")  # the longest class name fits at 1280 px
label = top[0].selectbox("Class", CLASSES, format_func=lambda c: f"{c} · {CLASS_NAMES[c]}", key="review_class")
# "all" by default: with my queue on, a second reader must see the images a first one already settled under k=1,
# or readers never overlap and agreement has nothing to rest on
status = top[1].segmented_control("Status", ["all", "pending", "accepted", "rejected"], default="all",
                                  key="review_status", required=True)
sort = top[2].selectbox("Sort", list(SORTS), format_func=SORTS.get, key="review_sort")
mine = top[3].toggle("My queue only", value=True, key="review_mine",
                     help="Only the images you have not decided yet")

left = api.call(client.review_progress) or {}
after = CLASSES[CLASSES.index(label) + 1:] + CLASSES[:CLASSES.index(label)]
next_class = next((c for c in after if left.get(c)), None)
heading[1].markdown(f"**{left.get(label, 0)}** left in your {label} queue · "
                    + (f"next class with work: **{next_class}** ({left[next_class]} left)" if next_class else
                       "no other class has work for you"))

with st.expander("Filters by score, job and reviewer · display"):
    cols = st.columns(4)
    intended = cols[0].slider("Selector's intended-class probability", 0.0, 1.0, (0.0, 1.0), 0.05,
                              key="review_intended")
    max_nearest = cols[1].number_input("Nearest-real distance at most (0 = any)", 0.0, 1e6, 0.0,
                                       key="review_max_nearest")
    job_ids = [None, *(api.call(generation_jobs, client) or [])]
    generation_job = cols[2].selectbox("Generation job", job_ids, format_func=lambda j: "any" if j is None else
                                       f"job {j}", key="review_job")
    reviewers = [None, *(api.call(known_reviewers, client) or [])]
    reviewer = cols[3].selectbox("Decided by", reviewers, format_func=lambda r: "anyone or no one" if r is None
                                 else r, key="review_reviewer",
                                 help="Under blind reading this matches only images you have decided.")
    dup_group = cols[0].number_input("Duplicate group (-1 = any)", -1, 10**9, -1, key="review_dup")
    page_size = cols[1].select_slider("Images per page", [24, 48, 96], 48, key="review_page_size")
    side = cols[2].select_slider("Thumbnail size (px)", list(GRID_COLUMNS), 128, key="review_side")
    smooth = cols[3].radio("Enlarge with", ["nearest neighbour", "smooth"], key="review_scaling",
                           horizontal=True) == "smooth"

filters = {"label": label, "status": None if status == "all" else status, "sort": sort, "mine": mine,
           "min_intended": intended[0] if intended[0] > 0 else None,
           "max_intended": intended[1] if intended[1] < 1 else None,
           "max_nearest": max_nearest or None, "generation_job": generation_job, "reviewer": reviewer,
           "dup_group": dup_group if dup_group >= 0 else None}
signature = repr(sorted(filters.items())) + f"|{page_size}"
if state.get("review_signature") != signature:  # new filters: back to the first page
    state.review_signature, state.review_offset, state.review_cursor = signature, 0, 0

page = api.call(client.review_queue, **filters, limit=page_size, offset=state.review_offset)
if page is None:
    st.stop()
if not page.items and state.review_offset > 0 and page.total > 0:  # the last page emptied under us: step back
    state.review_offset = max(0, (page.total - 1) // page_size * page_size)
    st.rerun()
items = page.items
state.review_cursor = min(state.review_cursor, max(0, len(items) - 1))
current = items[state.review_cursor] if items else None
selected = [i.id for i in items if state.get(f"select_{i.id}")] if view == "grid" else []

reference = api.call(client.images, source="real", split="train", label=label, limit=REAL_BESIDE) \
    if view == "reading" else None
if view == "grid":
    api.call(api.prefetch_thumbnails, client, [i.id for i in items])
as_model_sees = state.get("review_as_model", False)
current_size = api.image_info(client, current.id).width if current is not None else None


def real_png(image_id: str, side: int) -> tuple[bytes, str]:
    """A real image's centre square (what the models see) enlarged smoothly, at its stored resolution or, with
    "as the model sees it", at the synthetic images' size; and the caption saying which."""
    info = api.image_info(client, image_id)
    through = current_size if as_model_sees and current_size else None
    return (api.image_png(client, image_id, side, True, thumbnail=False, square=True, through=through),
            api.shown_at(info.width, info.height, side, square=True, through=through))


# -- actions ----------------------------------------------------------------------------------------------------
def remember(events) -> None:
    """After a decision: undo can take it back, the selection empties and the chosen reasons clear, so the next
    X never reuses them silently."""
    if events:
        state.review_undo.append([e.seq for e in events])
        for e in events:
            state.pop(f"select_{e.image_id}", None)
        state.review_chosen = []
        state.pop("review_note", None)


def advance() -> None:
    """After a decision: in my queue the decided image leaves the page, so the cursor already points at the next."""
    if not mine:
        state.review_cursor += 1
        if state.review_cursor >= len(items):
            go_page(+1)


def go_page(step: int) -> None:
    new = state.review_offset + step * page_size
    if 0 <= new < page.total:
        state.review_offset, state.review_cursor = new, 0
    else:
        state.review_cursor = min(state.review_cursor, max(0, len(items) - 1))


def decide(targets: list[str], decision: str, reasons: list[str], note: str | None, bulk: bool) -> None:
    events = api.call(client.decide, targets, decision, reasons, note)
    remember(events)
    if events and not bulk:
        advance()
    if events:  # on failure, stay: the error shown must not be wiped by a rerun
        st.rerun()


def ask_or_decide(decision: str, reasons: list[str], note: str | None) -> None:
    """A decision on the current image goes at once; one on a selection waits for a confirmation naming the
    count."""
    if selected and len(selected) > 1:
        state.review_confirm = {"decision": decision, "targets": list(selected), "reasons": reasons, "note": note}
        st.rerun()
    decide(selected or [current.id], decision, reasons, note, bulk=bool(selected))


def toggle_reason(reason: str) -> None:
    chosen = state.review_chosen
    state.review_chosen = [r for r in chosen if r != reason] if reason in chosen else [*chosen, reason]


# -- the action bar: the same keys in both views ----------------------------------------------------------------
def action_bar() -> None:
    targets = selected or ([current.id] if current else [])
    decide_allowed = api.can_decide() and bool(targets)
    act = st.columns(2)
    accept = act[0].button("Accept", type="primary", shortcut="a", disabled=not decide_allowed, key="review_accept",
                           width="stretch")
    reject = act[1].button("Reject", shortcut="x", disabled=not decide_allowed, key="review_reject",
                           width="stretch")
    st.caption(f"Acts on {f'{len(selected)} selected' if selected else 'the current image'}. "
               "Reject because (keys 1-6):")
    chosen = state.review_chosen
    for row_start in range(0, len(REASONS), 2):
        pair = st.columns(2)
        for column, (number_key, (reason, words)) in zip(
                pair, list(enumerate(REASONS.items(), start=1))[row_start:row_start + 2], strict=False):
            if column.button(f"{number_key} · {words}", key=f"review_reason_{reason}", shortcut=str(number_key),
                             type="primary" if reason in chosen else "secondary", width="stretch", wrap=True,
                             disabled=not decide_allowed):
                toggle_reason(reason)
                st.rerun()
    note = st.text_input("Note (needed for 'other')", key="review_note") if "other" in chosen else None
    move = st.columns(3)
    if move[0].button("Next", shortcut="n", key="review_next", disabled=not items, width="stretch"):
        state.review_cursor += 1
        if state.review_cursor >= len(items):
            go_page(+1)
        st.rerun()
    if move[1].button("Undo", shortcut="u", key="review_undo_button", disabled=not state.review_undo,
                      width="stretch", help="Takes back your last action (a new event; nothing is deleted)"):
        for seq in reversed(state.review_undo.pop()):
            api.call(client.undo, seq)
        st.rerun()
    if move[2].button("Keys ?", key="review_keys", width="stretch"):
        state.review_show_keys = not state.review_show_keys
        st.rerun()
    st.html(QUESTION_MARK_KEY, unsafe_allow_javascript=True)  # our own constant, no user input
    if state.review_show_keys:
        st.info("  \n".join(f"**{key}** — {what}" for key, what in KEYS.items()))

    if accept:
        ask_or_decide("accept", [], None)
    if reject:
        if not chosen:
            st.warning("Choose a reason first (keys 1-6, or click one), then reject.")
        elif "other" in chosen and not (note or "").strip():
            st.warning("Say what is wrong in the note: reason 'other' needs one.")
        else:
            ask_or_decide("reject", list(chosen), note)

    confirm = state.review_confirm
    if confirm:
        count, verb = len(confirm["targets"]), confirm["decision"]
        because = f" because {reasons_text(confirm['reasons'])}" if confirm["reasons"] else ""
        st.warning(f"{verb.capitalize()} **{count}** selected images{because}?")
        yes, no = st.columns(2)
        if yes.button(f"Yes, {verb} {count}", key="review_confirm_yes", type="primary", width="stretch"):
            state.review_confirm = None
            decide(confirm["targets"], verb, confirm["reasons"], confirm["note"], bulk=True)
        if no.button("Cancel", key="review_confirm_no", width="stretch"):
            state.review_confirm = None
            st.rerun()
    if not api.can_decide():
        st.info(f"{me.name} is a {me.role}: you can look, not decide.")


def about_current() -> None:
    """The verdicts on the image being read, and its provenance one click away."""
    judge = "unscored" if current.judge_prob is None else \
        f"**{current.judge_prob:.2f}** (it says {current.judge_class})"
    st.markdown(f"**Judge** (independent, never selects): intended class {judge}")
    if current.blinded:
        st.markdown("Blind reading: others' decisions on this image show once you have decided it.")
    else:
        st.markdown(f"status **{current.status}** · {current.accepts} accept, {current.rejects} reject · "
                    f"{', '.join(current.reviewers or []) or 'no one yet'}")
    if current.near_copy:
        st.warning("Flagged as a near-copy of the nearest real image (memorisation).")
    with st.expander("Selector, scores and provenance"):
        st.markdown(
            f"- selector (reference classifier, ranked the candidates): intended class "
            f"**{number(current.intended_prob, '.3f')}** (it says {current.predicted_class or '–'})\n"
            f"- duplicate group {'none' if current.dup_group in (None, -1) else int(current.dup_group)}, "
            f"sharpness {number(current.sharpness, '.3g')}\n"
            f"- generation job {current.generation_job}, seed {current.seed}, guidance {current.guidance}, "
            f"{current.steps} steps\n- checkpoint `{current.checkpoint}`"
            + (f" (a preview, diffusion step {current.preview_step})" if current.preview_step else ""))
    st.toggle("Real images as the model sees them", key="review_as_model",
              help="Off: real images at their stored resolution (centre square). On: brought to the synthetic "
                   "images' size first, for a like-for-like look.")
    if current.my_decision and current.my_seq and api.can_decide() and st.button(
            f"Undo my '{current.my_decision}' on this image", key="review_undo_current"):
        api.call(client.undo, current.my_seq)
        st.rerun()


def reading_view() -> None:
    """The image being read and its nearest real image at 384 px, the action bar beside them, real images of the
    class below."""
    reading = st.columns([READING_SIDE, READING_SIDE, 330])  # the action bar keeps 330 px beside the two images
    if current is not None:
        info = api.image_info(client, current.id)
        preview = f" · ⚠ preview: made at diffusion step {current.preview_step}, before training ended" \
            if current.preview_step else ""
        position = state.review_cursor + state.review_offset + 1
        reading[0].image(api.image_png(client, current.id, READING_SIDE, True, thumbnail=False), width=READING_SIDE,
                         caption=f"synthetic {label} ({position} of {page.total}) · "
                                 f"{api.shown_at(info.width, info.height, READING_SIDE)}{preview}")
        if current.nearest_real_id:
            png, shown = real_png(current.nearest_real_id, READING_SIDE)
            reading[1].image(png, width=READING_SIDE, caption=f"nearest real training image (judge's features, "
                                                              f"distance {current.nearest_real_dist:.3g}) · {shown}")
    else:
        reading[0].info(nothing_text())
    with reading[2]:
        action_bar()
        if current is not None:
            about_current()
    if reference and reference.items:
        strip = st.columns(REAL_BESIDE)
        for column, image in zip(strip, reference.items, strict=False):
            png, shown = real_png(image.id, 192)
            column.image(png, width="stretch", caption=f"real {label} · {shown}")


def grid_view() -> None:
    """A page of thumbnails to select from, the action bar beside it acting on the selection."""
    bar, grid = st.columns([330, 900])
    with bar:
        action_bar()
    with grid:
        first, last = state.review_offset + 1, state.review_offset + len(items)
        st.caption(f"{page.total} images match · showing {first}–{last}" if items else nothing_text())
        choose = st.columns([1.3, 1.2, 3])
        if choose[0].button("Select all on page", key="review_select_all", disabled=not items):
            for i in items:
                state[f"select_{i.id}"] = True
            st.rerun()
        if choose[1].button("Clear selection", key="review_clear", disabled=not selected):
            for i in items:
                state[f"select_{i.id}"] = False
            st.rerun()
        per_row = GRID_COLUMNS[side]
        for row_start in range(0, len(items), per_row):
            cells = st.columns(per_row)
            for index, (cell, item) in enumerate(zip(cells, items[row_start:row_start + per_row], strict=False),
                                                 start=row_start):
                picked = item.id in selected
                box = cell.container(border=picked)  # the selection shows as a frame around the cell
                marker = "▶ " if index == state.review_cursor else ""
                score = f"judge {item.judge_prob:.2f}" if item.judge_prob is not None else "unscored"
                told = "blind" if item.blinded else item.status
                mine_text = f" · you: {item.my_decision}" if item.my_decision else ""
                box.image(api.image_png(client, item.id, side, smooth), width=side,
                          caption=f"{marker}{'✓ ' if picked else ''}{score} · {told}{mine_text}"
                                  + (" · preview" if item.preview_step else ""))
                box.checkbox("select", key=f"select_{item.id}", label_visibility="collapsed")
                if box.button("open", key=f"open_{item.id}", type="tertiary"):
                    state.review_cursor, state.review_open = index, True  # read it: the view switches
                    st.rerun()
        nav = st.columns([1, 1, 3])
        if nav[0].button("◀ Previous page", disabled=state.review_offset == 0, key="review_prev_page"):
            go_page(-1)
            st.rerun()
        if nav[1].button("Next page ▶", disabled=last >= page.total, key="review_next_page"):
            go_page(+1)
            st.rerun()


reading_view() if view == "reading" else grid_view()
