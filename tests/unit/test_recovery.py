"""coordinator/train/recovery.py: recoveries are limited by a rate, not a count, and a recovery hit by another fault tries again
after a backoff."""
from __future__ import annotations

import pytest

from dni.errors import WorkerLost
from dni.coordinator.train.recovery import BACKOFF_LIMIT, RecoveryBudget, RecoveryLimit, backoff, recover, recovering


def budget(limit: int, window: float) -> tuple[RecoveryBudget, list[float]]:
    clock = [0.0]
    return RecoveryBudget(limit, window, clock=lambda: clock[0]), clock


def test_the_limit_counts_recoveries_within_the_window_only():
    spent, clock = budget(limit=2, window=60)
    for now in (0, 30, 61, 91, 122, 152):  # never more than two within any 60 s
        clock[0] = now
        spent.spend(WorkerLost(0, "gone"))
    clock[0] = 160
    with pytest.raises(RecoveryLimit, match=r"^3 workers lost within 60 s: giving up \(max_recoveries = 2 within "
                                            r"recovery_window = 60 s; .*\); the last: stage 1 gone$") as error:
        spent.spend(WorkerLost(1, "stage 1 gone"))
    assert error.value.stage == 1


def test_a_long_window_is_named_in_minutes_and_zero_allows_none():
    spent, _ = budget(limit=0, window=600)
    with pytest.raises(RecoveryLimit, match="^1 workers lost within 10 minutes"):
        spent.spend(WorkerLost(2, "x"))


def test_the_backoff_doubles_from_half_a_second_up_to_its_limit():
    assert [backoff(retry) for retry in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, BACKOFF_LIMIT]


def test_a_try_hit_by_another_loss_is_retried_for_that_loss_after_a_backoff():
    spent, _ = budget(limit=10, window=60)
    waits: list[float] = []
    tries: list[tuple[int, int]] = []

    def attempt(loss: WorkerLost, retry: int) -> str:
        tries.append((loss.stage, retry))
        if retry < 2:
            raise WorkerLost(retry + 1, f"lost while replacing stage {loss.stage}")
        return "recovered"

    assert recover(spent, WorkerLost(0, "first"), attempt, waits.append) == "recovered"
    assert tries == [(0, 0), (1, 1), (2, 2)]
    assert waits == [0.0, 0.5, 1.0]
    assert len(spent.recent) == 3, "every try is spent from the budget"


def test_a_loss_given_back_by_the_pool_ends_the_recovery():
    spent, _ = budget(limit=10, window=60)
    loss = WorkerLost(1, "nothing can replace it")

    def attempt(given: WorkerLost, retry: int) -> None:
        raise given

    with pytest.raises(WorkerLost) as error:
        recover(spent, loss, attempt, lambda seconds: None)
    assert error.value is loss and len(spent.recent) == 1


def test_retries_that_keep_failing_end_at_the_limit():
    spent, _ = budget(limit=3, window=60)

    def attempt(loss: WorkerLost, retry: int) -> None:
        raise WorkerLost(1, f"try {retry} lost")

    with pytest.raises(RecoveryLimit, match="4 workers lost .* the last: try 2 lost"):
        recover(spent, WorkerLost(1, "first"), attempt, lambda seconds: None)


def test_a_run_goes_on_from_the_step_each_recovery_gives_whether_the_loss_came_at_the_start_or_in_training():
    spent, _ = budget(limit=10, window=60)
    losses = iter([WorkerLost(0, "lost while configuring"), WorkerLost(1, "lost at step 7"), WorkerLost(2, "at step 9")])
    trained: list[int] = []

    def start() -> int:
        raise next(losses)

    def train(step: int) -> str:
        trained.append(step)
        if len(trained) < 3:
            raise next(losses)
        return f"finished after starting at {step}"

    recovered_at = iter([0, 5, 8])
    result = recovering(spent, lambda loss, retry: next(recovered_at), lambda seconds: None, start, train)
    assert (result, trained, len(spent.recent)) == ("finished after starting at 8", [0, 5, 8], 3)


def test_recoveries_in_a_row_from_one_checkpoint_end_the_run_at_any_rate():
    spent, _ = budget(limit=3, window=60)
    for step in (100, 200, 200, 200):  # progress, then three recoveries that all go back to step 200
        spent.resuming_from(step, WorkerLost(1, "x"))
    with pytest.raises(RecoveryLimit, match=r"^4 workers lost in a row without the run getting past its checkpoint at "
                                            r"step 200: giving up \(max_recoveries = 3; checkpoint more often"):
        spent.resuming_from(200, WorkerLost(1, "stage 1 gone"))
    spent.resuming_from(300, WorkerLost(1, "x"))  # past it: counted afresh
    assert spent.in_a_row == 1
