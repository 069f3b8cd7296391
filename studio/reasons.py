"""Reject reasons as readers say them (the engine stores the keys: engine.store.reviews.REASONS), in the order of
their keys 1-6 on the Review page."""

REASONS = {"unrealistic_texture": "unrealistic texture", "wrong_class_features": "wrong class features",
           "artifact": "artifact", "duplicate": "duplicate", "near_copy": "near-copy of a real image",
           "other": "other (say what in the note)"}


def reasons_text(keys: list[str]) -> str:
    return ", ".join(REASONS.get(k, k).removesuffix(" (say what in the note)") for k in keys)
