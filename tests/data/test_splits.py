from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.data.splits import DEFAULT_FRACTIONS, lesion_aware_split
from engine.labels import CLASSES

# A dataset: per lesion, a class and a number of images (HAM10000 has 1-6 images per lesion).
lesions = st.lists(st.tuples(st.sampled_from(CLASSES), st.integers(1, 6)), min_size=1, max_size=400)


def expand(spec):
    labels, lesion_ids = [], []
    for n, (cls, count) in enumerate(spec):
        labels += [cls] * count
        lesion_ids += [f"L{n}"] * count
    return labels, lesion_ids


@given(lesions, st.integers(0, 2**16))
@settings(max_examples=150, deadline=None)
def test_no_lesion_is_in_two_splits(spec, seed):
    labels, lesion_ids = expand(spec)
    splits = lesion_aware_split(labels, lesion_ids, seed=seed)
    seen = defaultdict(set)
    for lesion, split in zip(lesion_ids, splits, strict=True):
        seen[lesion].add(split)
    assert all(len(s) == 1 for s in seen.values())


@given(lesions, st.integers(0, 2**16))
@settings(max_examples=150, deadline=None)
def test_each_class_is_split_within_one_lesion_of_its_target(spec, seed):
    labels, lesion_ids = expand(spec)
    splits = lesion_aware_split(labels, lesion_ids, seed=seed)
    largest = max(count for _, count in spec)
    per_class = Counter(labels)
    got = Counter(zip(labels, splits, strict=True))
    for cls, total in per_class.items():
        for split, fraction in zip(("train", "val", "test"), DEFAULT_FRACTIONS, strict=True):
            assert abs(got[(cls, split)] - fraction * total) <= largest, (cls, split, total)


@given(lesions)
@settings(max_examples=30, deadline=None)
def test_same_seed_same_split(spec):
    labels, lesion_ids = expand(spec)
    assert lesion_aware_split(labels, lesion_ids, seed=7) == lesion_aware_split(labels, lesion_ids, seed=7)


def test_images_without_lesion_ids_are_their_own_lesions():
    labels = ["nv"] * 100
    splits = lesion_aware_split(labels, [None] * 100, seed=0)
    assert Counter(splits) == {"train": 70, "val": 10, "test": 20}


def test_bad_arguments():
    with pytest.raises(ValueError, match="same length"):
        lesion_aware_split(["nv"], [])
    with pytest.raises(ValueError, match="sum to 1"):
        lesion_aware_split(["nv"], ["a"], fractions=(0.5, 0.1, 0.1))


# --- a scarce-data clinic's subsample (issue 22's --real-fraction) ---

def clinic_items() -> list[dict]:
    """Real train rows of 3 classes, 1-3 images per lesion, and synthetic rows that a subsample must keep."""
    items = []
    for label, lesions in (("nv", 200), ("df", 9), ("vasc", 1)):
        for lesion in range(lesions):
            for image in range(1 + lesion % 3):
                items.append({"id": f"{label}{lesion}-{image}", "label": label, "source": "real",
                              "lesion_id": f"{label}-L{lesion}"})
    return items + [{"id": f"syn{i}", "label": "df", "source": "synthetic", "lesion_id": None} for i in range(5)]


def test_a_real_fraction_keeps_that_share_of_each_classes_lesions_whole_and_every_synthetic_image():
    from engine.data.splits import real_subsample

    items = clinic_items()
    kept = real_subsample(items, 0.25)
    lesions = {label: {i["lesion_id"] for i in kept if i["label"] == label and i["source"] == "real"}
               for label in ("nv", "df", "vasc")}
    assert {k: len(v) for k, v in lesions.items()} == {"nv": 50, "df": 3, "vasc": 1}  # ceil, at least one
    for item in items:  # a lesion is kept with all its images or not at all
        if item["source"] == "real":
            assert (item in kept) is (item["lesion_id"] in lesions[item["label"]])
    assert sum(i["source"] == "synthetic" for i in kept) == 5
    assert real_subsample(list(reversed(items)), 0.25) == list(reversed(kept))  # fixed by the ids, not the order
    assert lesions["nv"] <= {i["lesion_id"] for i in real_subsample(items, 0.5)}  # nested: more data adds lesions
    assert real_subsample(items, 1.0) == items
    with pytest.raises(ValueError, match="real fraction must be in"):
        real_subsample(items, 0)
