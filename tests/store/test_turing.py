"""The blinded Turing test in the store: sampling at the asked ratio, random item keys, a shuffled order per reader,
one final answer per reader and item, and the results worked out by hand."""

import pytest

from engine.store import Store, TuringConflict, TuringProblem, UnknownTuringSession
from engine.store.turing import fooled_images, reader_order
from tests.factories import image_row


def sid(i: int) -> str:
    return f"{i:064x}"


REAL_DF_TRAIN, REAL_DF_VAL, REAL_DF_TEST = range(1, 7), range(7, 9), range(9, 12)
REAL_VASC_TRAIN = range(20, 25)
SYNTHETIC_DF, SYNTHETIC_VASC = range(40, 48), range(60, 68)
DUPLICATE_DF = 90


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "ws" / "dermae.duckdb")
    wide = {**image_row(REAL_DF_TRAIN[0], "df", "real", "train"), "width": 60, "height": 45}
    duplicate = {**image_row(DUPLICATE_DF, "df", "real", "train"), "duplicate_of": sid(REAL_DF_TRAIN[1])}
    store.images.add_rows([wide, *(image_row(i, "df", "real", "train") for i in REAL_DF_TRAIN[1:]),
                           *(image_row(i, "df", "real", "val") for i in REAL_DF_VAL),
                           *(image_row(i, "df", "real", "test") for i in REAL_DF_TEST),
                           *(image_row(i, "vasc", "real", "train") for i in REAL_VASC_TRAIN),
                           *(image_row(i, "df", "synthetic", None, job=7) for i in SYNTHETIC_DF),
                           *(image_row(i, "vasc", "synthetic", None, job=7) for i in SYNTHETIC_VASC),
                           duplicate, image_row(95, "mel", "real", "train")])
    yield store
    store.close()


def new_session(store, **overrides):
    params = {"name": "pilot", "classes": ["df", "vasc"], "n_images": 8, "real_fraction": 0.5, "ask_class": False,
              "ask_realism": False, "created_by": "ada", "seed": 3} | overrides
    return store.turing.create(**params)


def test_a_session_samples_the_asked_ratio_spread_over_the_classes(store):
    # rejected synthetic images are still drawn: the test is about the generator, not the review
    store.reviews.decide([sid(i) for i in SYNTHETIC_DF], "ann", "reject", ["artifact"])
    session = new_session(store, n_images=20, real_fraction=0.4)
    items = store.turing.items(session["id"])
    assert session["n_items"] == len(items) == 20 and session["real_fraction"] == 0.4
    counts = {}
    for item in items:
        counts[item["source"], item["label"]] = counts.get((item["source"], item["label"]), 0) + 1
    assert counts == {("real", "df"): 4, ("real", "vasc"): 4, ("synthetic", "df"): 6, ("synthetic", "vasc"): 6}
    ids = {item["image_id"] for item in items}
    assert len(ids) == 20
    assert not ids & {sid(i) for i in REAL_DF_TEST}  # the real test split is never shown
    assert sid(DUPLICATE_DF) not in ids and sid(95) not in ids  # no duplicate rows, no other class
    assert [item["position"] for item in items] == list(range(1, 21))
    sources = [item["source"] for item in items]
    assert sources not in (sorted(sources), sorted(sources, reverse=True))  # stored order is shuffled, not grouped


def test_every_item_is_shown_at_the_smallest_side_of_the_session(store):
    every_df = new_session(store, classes=["df"], n_images=16, real_fraction=0.5)  # all 8 train/val reals
    assert every_df["image_side"] == 28  # the 60x45 real one is cut down to the others' 28
    assert sid(REAL_DF_TRAIN[0]) in {i["image_id"] for i in store.turing.items(every_df["id"])}


def test_the_same_seed_draws_the_same_images_behind_new_random_keys(store):
    first, second = new_session(store), new_session(store)
    a, b = store.turing.items(first["id"]), store.turing.items(second["id"])
    assert [i["image_id"] for i in a] == [i["image_id"] for i in b]
    keys = [i["key"] for i in a + b]
    assert len(set(keys)) == len(keys)  # never reused, even for the same image
    for item in a:
        assert item["key"] not in item["image_id"] and item["image_id"][:12] not in item["key"]


def test_too_few_images_is_refused_saying_what_is_missing_and_leaves_nothing(store):
    with pytest.raises(TuringProblem, match=r"10 real df \(there are 8\).*fewer images"):
        new_session(store, classes=["df"], n_images=20, real_fraction=0.5)
    with pytest.raises(TuringProblem, match="classes"):
        new_session(store, classes=["eczema"])
    assert store.turing.sessions() == []
    assert store.db.cursor().execute("SELECT count(*) FROM turing_items").fetchone()[0] == 0


def test_each_reader_has_a_stable_order_of_their_own():
    keys = [f"key{i}" for i in range(12)]
    ann, bob = reader_order(1, "ann", keys), reader_order(1, "bob", keys)
    assert sorted(ann) == sorted(bob) == sorted(keys)
    assert ann != bob and ann != reader_order(2, "ann", keys)
    assert ann == reader_order(1, "ann", list(reversed(keys)))  # the same whatever order the rows come in


def test_next_follows_the_readers_order_and_skips_what_they_answered(store):
    session = new_session(store)
    keys = [i["key"] for i in store.turing.items(session["id"])]
    order = reader_order(session["id"], "ann", keys)
    first = store.turing.next_item(session["id"], "ann")
    assert (first["key"], first["position"], first["total"], first["answered"]) == (order[0], 1, 8, 0)
    assert store.turing.next_item(session["id"], "ann")["key"] == order[0]  # asking again changes nothing
    store.turing.answer(session["id"], "ann", order[0], "real")
    following = store.turing.next_item(session["id"], "ann")
    assert (following["key"], following["position"], following["answered"]) == (order[1], 2, 1)
    bob = store.turing.next_item(session["id"], "bob")
    assert bob["key"] == reader_order(session["id"], "bob", keys)[0] and bob["answered"] == 0
    for key in order[1:]:
        store.turing.answer(session["id"], "ann", key, "synthetic")
    done = store.turing.next_item(session["id"], "ann")
    assert done["done"] and done["key"] is None and done["answered"] == 8
    assert store.turing.session(session["id"], me="ann")["my_answered"] == 8


def test_an_answer_is_final_and_refusals_say_why(store):
    session = new_session(store)
    key = store.turing.items(session["id"])[0]["key"]
    answer = store.turing.answer(session["id"], "ann", key, "real")
    assert (answer["reviewer"], answer["says"], answer["answered"], answer["total"]) == ("ann", "real", 1, 8)
    with pytest.raises(TuringConflict, match=r"already answered.*final"):
        store.turing.answer(session["id"], "ann", key, "synthetic")
    store.turing.answer(session["id"], "bob", key, "synthetic")  # another reader may
    with pytest.raises(TuringProblem, match="not in session") as refused:
        store.turing.answer(session["id"], "ann", "no-such-key", "real")
    assert type(refused.value) is TuringProblem  # a bad key is a 422, not a conflict
    with pytest.raises(TuringProblem, match="does not ask for the class"):
        store.turing.answer(session["id"], "bob", store.turing.items(session["id"])[1]["key"], "real",
                            class_guess="df")
    with pytest.raises(TuringProblem, match="'real' or 'synthetic'"):
        store.turing.answer(session["id"], "bob", key, "maybe")
    with pytest.raises(UnknownTuringSession):
        store.turing.answer(999, "ann", key, "real")
    closed = store.turing.close(session["id"], "ada")
    assert closed["closed"] and closed["closed_by"] == "ada"
    assert store.turing.close(session["id"], "eve")["closed_by"] == "ada"  # closing again keeps the first
    with pytest.raises(TuringConflict, match="closed"):
        store.turing.answer(session["id"], "cy", key, "real")
    with pytest.raises(TuringConflict, match="closed"):
        store.turing.next_item(session["id"], "cy")
    rows = store.db.cursor().execute("SELECT reviewer, says FROM turing_answers ORDER BY reviewer").fetchall()
    assert rows == [("ann", "real"), ("bob", "synthetic")]  # nothing replaced, nothing added by the refusals


def test_a_session_that_asks_for_class_and_realism_needs_both(store):
    session = new_session(store, ask_class=True, ask_realism=True)
    key = store.turing.items(session["id"])[0]["key"]
    with pytest.raises(TuringProblem, match="asks for the class"):
        store.turing.answer(session["id"], "ann", key, "real", realism=3)
    with pytest.raises(TuringProblem, match="session's classes"):
        store.turing.answer(session["id"], "ann", key, "real", class_guess="mel", realism=3)
    with pytest.raises(TuringProblem, match="realism"):
        store.turing.answer(session["id"], "ann", key, "real", class_guess="df")
    with pytest.raises(TuringProblem, match="realism"):
        store.turing.answer(session["id"], "ann", key, "real", class_guess="df", realism=6)
    assert store.turing.answer(session["id"], "ann", key, "real", class_guess="df", realism=5)["realism"] == 5


def test_results_worked_out_by_hand(store):
    """8 items (per class 2 real, 2 synthetic). Ann is right on all but one synthetic df, which she calls real;
    Bob calls everything real. Ann names every class right, Bob says df each time. Realism: Ann 5 for real, 2 for
    synthetic (4 for the one that fooled her); Bob 4 for everything."""
    session = new_session(store, ask_class=True, ask_realism=True)
    items = store.turing.items(session["id"])
    synthetic_df = [i for i in items if i["source"] == "synthetic" and i["label"] == "df"]
    convincing = synthetic_df[0]
    for item in items:
        fooled_ann = item is convincing
        ann_says = "real" if fooled_ann else item["source"]
        ann_realism = 5 if item["source"] == "real" else (4 if fooled_ann else 2)
        store.turing.answer(session["id"], "ann", item["key"], ann_says, class_guess=item["label"],
                            realism=ann_realism)
        store.turing.answer(session["id"], "bob", item["key"], "real", class_guess="df", realism=4)

    results = store.turing.results(session["id"])
    overall = results["overall"]
    # 11 of 16 right; P(X >= 11 | n=16, p=.5) = (4368 + 1820 + 560 + 120 + 16 + 1) / 2^16, doubled
    assert (overall["n"], overall["correct"], overall["accuracy"]) == (16, 11, 11 / 16)
    assert overall["p_value"] == pytest.approx(2 * 6885 / 65536)
    assert overall["sensitivity"] == 3 / 8 and overall["specificity"] == 1.0  # synthetic called synthetic: Ann's 3
    assert overall["class_guesses"] == 16 and overall["class_accuracy"] == 12 / 16
    assert overall["realism_real"] == 4.5 and overall["realism_synthetic"] == (4 + 2 * 3 + 4 * 4) / 8
    ann, bob = results["per_reviewer"]["ann"], results["per_reviewer"]["bob"]
    assert (ann["correct"], ann["n"]) == (7, 8) and ann["p_value"] == pytest.approx(2 * 9 / 256)
    assert (bob["correct"], bob["n"]) == (4, 8) and bob["p_value"] == pytest.approx(1.0)
    assert bob["sensitivity"] == 0.0 and bob["specificity"] == 1.0
    df, vasc = results["per_class"]["df"], results["per_class"]["vasc"]
    assert (df["correct"], df["n"]) == (5, 8) and df["p_value"] == pytest.approx(2 * (56 + 28 + 8 + 1) / 256)
    assert (vasc["correct"], vasc["n"]) == (6, 8) and vasc["p_value"] == pytest.approx(2 * (28 + 8 + 1) / 256)
    # both say "real" on 5 items, disagree on 3: observed 5/8, chance 5/8 * 1 + 3/8 * 0 -> kappa 0
    assert results["agreement"]["overall"]["method"] == "cohen"
    assert results["agreement"]["overall"]["images"] == 8
    assert results["agreement"]["overall"]["kappa"] == pytest.approx(0.0)
    assert results["readers"] == ["ann", "bob"]
    # the convincing one: 2 of 2 said real; the other synthetic items got 1 of 2, not a majority
    assert [(f["image_id"], f["said_real"], f["answers"]) for f in results["fooled"]] == [
        (convincing["image_id"], 2, 2)]


def test_the_fooled_rule_needs_two_answers_unless_there_is_one_reader():
    def row(key, reviewer, says):
        return {"item_key": key, "image_id": f"id-{key}", "source": "synthetic", "label": "df",
                "reviewer": reviewer, "says": says, "class_guess": None, "realism": None}

    two_readers = [row("a", "ann", "real"), row("b", "ann", "synthetic"), row("b", "bob", "synthetic")]
    assert fooled_images(two_readers) == []  # "a" got only one answer
    assert [f["key"] for f in fooled_images([row("a", "ann", "real"), row("b", "ann", "synthetic")])] == ["a"]
    three = [row("c", "ann", "real"), row("c", "bob", "real"), row("c", "cy", "synthetic"),
             row("d", "ann", "real"), row("d", "bob", "real")]
    assert [(f["key"], f["share_real"]) for f in fooled_images(three)] == [("d", 1.0), ("c", 2 / 3)]


def test_sessions_list_progress_and_unknown_ids(store):
    first = new_session(store, name="first")
    second = new_session(store, name="second")
    key = store.turing.items(first["id"])[0]["key"]
    store.turing.answer(first["id"], "ann", key, "real")
    store.turing.answer(first["id"], "bob", key, "real")
    listed = store.turing.sessions(me="ann")
    assert [s["name"] for s in listed] == ["second", "first"]
    assert (listed[1]["n_answers"], listed[1]["n_readers"], listed[1]["my_answered"]) == (2, 2, 1)
    assert listed[0]["n_answers"] == 0 and second["classes"] == ["df", "vasc"]
    with pytest.raises(UnknownTuringSession):
        store.turing.results(999)
