"""The Overview's table of the judge's report: each figure beside its bar, met or not."""

from studio.fidelity import FAIL, PASS, rows

REPORT = {"per_class": {
    "df": {"n": 300, "intended_rate": 0.62, "real_val_recall": 0.18, "precision": 0.97, "recall": 0.50,
           "fd": 30.0, "fd_floor": 52.5, "fd_at_n": 11, "near_copies": 1, "n_unseen_real": 23,
           "c2st": {"accuracy": 0.93, "ci95": [0.82, 0.98], "n_per_side": 23},
           "real_vs_real": {"precision": 0.96, "recall": 0.55, "n": 11},
           "bars": {"intended_rate": True, "precision": True, "recall": True}},
    "vasc": {"n": 4, "intended_rate": 0.25, "real_val_recall": 0.79, "near_copies": 0, "n_unseen_real": 3,
             "bars": {"intended_rate": False, "precision": False, "recall": False}},
}}


def test_each_figure_sits_beside_its_bar_and_missing_ones_are_dashes():
    df, vasc = rows(REPORT, {"df": 1})
    assert df["judge intended-class rate"] == f"0.62 {PASS}" and df["its real-val recall (ceiling)"] == "0.18"
    assert df["recall (real vs real)"] == f"0.50 {PASS} (0.55)" and df["FD (floor)"] == "30.0 (52.5) at n=11"
    assert df["near-copies (accepted)"] == f"1 (1) {FAIL}"  # an accepted near-copy breaks the bar
    assert df["real vs synthetic told apart"] == "0.93 [0.82, 0.98] n=23+23"
    assert vasc["judge intended-class rate"] == f"0.25 {FAIL}"
    too_few_images = "–"
    for column in ("precision (real vs real)", "FD (floor)", "real vs synthetic told apart"):
        assert vasc[column] == too_few_images, column
    assert vasc["near-copies (accepted)"] == f"0 (0) {PASS}"
