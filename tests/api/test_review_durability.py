"""Review decisions are never lost: under concurrent reviewers while a job logs metrics, and across a kill -9 of
the server mid-burst. Small-scale runs of bench/review_load.py's scenarios (one implementation): counts are exact,
nothing is timed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.review_load import kill_run, load_run


def test_concurrent_reviewers_while_a_job_logs_lose_and_double_nothing(tmp_path: Path) -> None:
    reviewers, decisions, baseline = 5, 40, 10
    result = load_run(tmp_path / "ws", reviewers=reviewers, decisions=decisions, baseline=baseline, images=20)
    assert result.errors == []
    check = result.check
    sent = sum(len(burst.acks) for _, _, burst in result.phases)
    assert sent == reviewers * decisions + 2 * baseline  # every request of the measured phases acknowledged
    assert (check.lost, check.duplicates, check.inconsistent) == ([], [], [])
    assert check.found == check.acknowledged == check.stored == check.listed
    assert check.acknowledged == sent + reviewers * 5  # one decision per request (+ 5 warm-up requests each)
    assert result.job_running and result.metric_points > 0 and result.metric_steps_whole  # logged all along


@pytest.mark.slow
def test_every_acknowledged_decision_survives_a_kill_9_mid_burst(tmp_path: Path) -> None:
    # Odd-numbered reviewers send bulk requests of 4 images: each must be stored whole or not at all.
    result = kill_run(tmp_path / "ws", reviewers=4, decisions=10_000, batch=4, kill_after=1.5, images=20)
    burst, check = result.burst, result.check
    assert burst.errors == [] and result.errors == []
    assert burst.unfinished == 4, "the kill must land mid-burst"
    assert check.acknowledged > 0
    assert check.lost == [] and check.found == check.acknowledged
    assert check.duplicates == [] and check.inconsistent == []  # no half bulk request, nothing nobody sent
    # What is stored beyond the acknowledged: requests committed just before the kill, whose answer never came.
    assert check.stored == check.acknowledged + check.committed_unacknowledged
    assert check.committed_unacknowledged <= sum(len(r.image_ids) for r in burst.cut_off)
    # The store works after the restart, and its sequence did not go back (no seq handed out twice).
    assert result.after_restart_seq is not None and result.after_restart_seq > result.max_seq_before
