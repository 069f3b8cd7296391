"""Readers & agreement on a hand-made case with a known answer, through AppTest against a real engine: two readers
on 12 df images — both accept 5, both reject 4, ann accepts where bob rejects 2, the reverse 1. Percent agreement
9/12 = 75%; chance (7/12)(6/12) + (5/12)(6/12) = 0.5; Cohen's kappa (0.75 - 0.5) / 0.5 = 0.50. vasc, read by both
on 3 images only, is "not enough images"."""

import pytest

from tests.processes import review_server
from tests.studio.apptest import table_with

PAGE = "pages/agreement.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = review_server(tmp_path_factory.mktemp("agreement") / "ws",
                           {"ann": "reviewer", "bob": "reviewer", "ada": "admin"}, {"df": 12, "vasc": 3})
    ann, bob = server.signed_in("ann"), server.signed_in("bob")
    pairs = [("accept", "accept")] * 5 + [("reject", "reject")] * 4 + [("accept", "reject")] * 2 + \
        [("reject", "accept")]
    for image, (by_ann, by_bob) in zip(server.ids["df"], pairs, strict=True):
        for client, decision in ((ann, by_ann), (bob, by_bob)):
            client.decide([image], decision, ["artifact"] if decision == "reject" else [])
    for image in server.ids["vasc"]:
        ann.decide([image], "accept")
        bob.decide([image], "accept")
    yield server
    server.stop()


def test_the_agreement_table_shows_n_percent_agreement_and_kappa_with_its_interval(app):
    at = app("ada")
    table = table_with(at, "kappa [95% CI]")
    df = table[table["scope"] == "df"].iloc[0]
    assert df["images read by 2+"] == 12 and df["agree"] == "75%" and df["method"] == "Cohen's kappa (2 readers)"
    kappa, interval = df["kappa [95% CI]"].split(" ", 1)
    low, high = (float(v) for v in interval.strip("[]").split(", "))
    assert kappa == "0.50" and -1 <= low < 0.5 < high <= 1
    vasc = table[table["scope"] == "vasc"].iloc[0]
    assert vasc["kappa [95% CI]"] == "not enough images (3 < 10)" and vasc["agree"] == "100%"
    overall = table[table["scope"] == "all classes"].iloc[0]
    assert overall["images read by 2+"] == 15


def test_the_readers_decisions_side_by_side_for_a_class(app):
    at = app("ada")
    at.selectbox(key="agreement_scope").select("df").run()
    pairs = table_with(at, "bob: accept")
    assert pairs.loc["ann: accept", "bob: accept"] == 5 and pairs.loc["ann: accept", "bob: reject"] == 2
    assert pairs.loc["ann: reject", "bob: accept"] == 1 and pairs.loc["ann: reject", "bob: reject"] == 4
