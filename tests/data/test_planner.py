import pytest

from engine.data.planner import plan_quotas

REAL = {"akiec": 228, "bcc": 359, "bkl": 769, "df": 80, "mel": 779, "nv": 4693, "vasc": 99}


def test_majority_fills_every_class_up_to_nv():
    quotas = plan_quotas(REAL, {}, "majority")
    assert quotas["nv"] == 0 and quotas["df"] == 4693 - 80
    assert all(REAL[c] + q == 4693 for c, q in quotas.items())


def test_accepted_synthetic_images_count_towards_the_target():
    quotas = plan_quotas(REAL, {"df": 300, "vasc": 500}, "fixed", target=400)
    assert quotas == {"akiec": 172, "bcc": 41, "bkl": 0, "df": 20, "mel": 0, "nv": 0, "vasc": 0}


def test_explicit_counts_and_a_cap():
    quotas = plan_quotas(REAL, {}, "explicit", counts={"df": 200, "vasc": 1000}, cap_per_class=500)
    assert quotas == {"akiec": 0, "bcc": 0, "bkl": 0, "df": 120, "mel": 0, "nv": 0, "vasc": 500}


def test_bad_rules_say_what_they_need():
    with pytest.raises(ValueError, match="fixed rule needs target"):
        plan_quotas(REAL, {}, "fixed")
    with pytest.raises(ValueError, match=r"unknown classes: \['eczema'\]"):
        plan_quotas(REAL, {}, "explicit", counts={"eczema": 3})
    with pytest.raises(ValueError):
        plan_quotas(REAL, {}, "median")
