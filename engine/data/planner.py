"""The rebalance planner: how many synthetic images each class needs.

target per class, by rule:
  majority  the size of the largest class in the real train split
  fixed     a number N for every class
  explicit  given per class
quota = max(0, target - real train count - synthetic images already accepted), optionally capped per class.
"""

from __future__ import annotations

from enum import StrEnum

from engine.labels import CLASSES


class TargetRule(StrEnum):
    majority = "majority"
    fixed = "fixed"
    explicit = "explicit"


def class_targets(real_train: dict[str, int], rule: TargetRule | str, target: int | None = None,
                  counts: dict[str, int] | None = None) -> dict[str, int]:
    """Images each class should have in all (real train + accepted synthetic) under `rule`."""
    rule = TargetRule(rule)
    if rule == TargetRule.majority:
        return dict.fromkeys(CLASSES, max(real_train.get(c, 0) for c in CLASSES))
    if rule == TargetRule.fixed:
        if target is None or target < 0:
            raise ValueError("the fixed rule needs target >= 0")
        return dict.fromkeys(CLASSES, target)
    unknown = sorted(set(counts or {}) - set(CLASSES))
    if counts is None or unknown:
        raise ValueError(f"the explicit rule needs counts per class; unknown classes: {unknown}")
    return {c: counts.get(c, 0) for c in CLASSES}


def plan_quotas(real_train: dict[str, int], accepted: dict[str, int], rule: TargetRule | str,
                target: int | None = None, counts: dict[str, int] | None = None,
                cap_per_class: int | None = None) -> dict[str, int]:
    targets = class_targets(real_train, rule, target, counts)
    quotas = {c: max(0, targets[c] - real_train.get(c, 0) - accepted.get(c, 0)) for c in CLASSES}
    if cap_per_class is not None:
        quotas = {c: min(q, cap_per_class) for c, q in quotas.items()}
    return quotas
