"""The group-commit primitive on its own: batching, hand-off, errors, close."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from statewave_runner.errors import StateError
from statewave_runner.state import _group
from statewave_runner.state._group import GroupCommitter, Op


def start_all(n: int, target: Any) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def test_every_caller_gets_its_own_result_under_stress() -> None:
    batches: list[int] = []

    def run(ops: list[Op]) -> None:
        batches.append(len(ops))
        for op in ops:
            op.succeed(op.payload * 2)

    gc = GroupCommitter(run, "test")
    results: dict[tuple[int, int], int] = {}

    def worker(t: int) -> None:
        for n in range(300):
            results[(t, n)] = gc.submit(t * 1000 + n)

    for th in start_all(48, worker):
        th.join(timeout=60)
    assert len(results) == 48 * 300
    assert all(v == 2 * (t * 1000 + n) for (t, n), v in results.items())
    assert sum(batches) == 48 * 300 == gc.ops
    assert gc.batches == len(batches)


def test_batches_are_capped_and_the_lead_is_handed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_group, "MAX_BATCH", 5)
    sizes: list[int] = []
    leaders: list[str] = []

    def run(ops: list[Op]) -> None:
        sizes.append(len(ops))
        leaders.append(threading.current_thread().name)
        time.sleep(0.02)
        for op in ops:
            op.succeed(None)

    gc = GroupCommitter(run, "test")
    barrier = threading.Barrier(23)

    def worker(i: int) -> None:
        barrier.wait()
        gc.submit(i)

    for th in start_all(23, worker):
        th.join(timeout=60)
    assert sum(sizes) == 23 and max(sizes) <= 5
    assert len(set(leaders)) == len(leaders)  # each batch led by a different caller


def test_a_failed_batch_fails_each_caller_with_its_own_error() -> None:
    def run(ops: list[Op]) -> None:
        ops[0].succeed("first is fine")
        time.sleep(0.01)
        raise OSError("disk gone")

    gc = GroupCommitter(run, "sqlite state /x")
    errors: list[BaseException] = []
    outcomes: list[Any] = []
    barrier = threading.Barrier(6)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            outcomes.append(gc.submit(i))
        except StateError as exc:
            errors.append(exc)

    for th in start_all(6, worker):
        th.join(timeout=60)
    assert len(errors) + len(outcomes) == 6
    assert all("disk gone" in str(e) and "sqlite state /x" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == len(errors)
    assert all(isinstance(e.__cause__, OSError) for e in errors)


def test_an_operation_error_reaches_only_its_caller() -> None:
    def run(ops: list[Op]) -> None:
        for op in ops:
            if op.payload == "bad":
                op.fail(ValueError("bad payload"))
            else:
                op.succeed(op.payload)

    gc = GroupCommitter(run, "test")
    assert gc.submit("good") == "good"
    with pytest.raises(ValueError, match="bad payload"):
        gc.submit("bad")
    assert gc.submit("good again") == "good again"


def test_unsettled_operations_fail_instead_of_succeeding() -> None:
    gc = GroupCommitter(lambda ops: None, "test")
    with pytest.raises(StateError, match="not run"):
        gc.submit(1)


def test_close_waits_for_the_running_batch_then_refuses() -> None:
    started = threading.Event()

    def run(ops: list[Op]) -> None:
        started.set()
        time.sleep(0.1)
        for op in ops:
            op.succeed("done")

    gc = GroupCommitter(run, "test state")
    got: list[str] = []
    th = threading.Thread(target=lambda: got.append(gc.submit(1)))
    th.start()
    started.wait(5)
    gc.close()
    assert got == ["done"]  # close returned only after the batch finished
    th.join()
    with pytest.raises(StateError, match="test state is closed"):
        gc.submit(2)


def test_the_next_leader_wakes_the_previous_batch_before_its_durable_wait() -> None:
    # Batches: [w], then [1, 2], then [100]. The leader of [100] calls
    # wake_previous(): the caller of [1, 2] that did not lead it must return
    # while [100] is still running, not only once it has finished.
    returned: list[Any] = []
    pair_running = threading.Event()
    w_running = threading.Event()
    seen: list[bool] = []

    def until(cond: Any) -> bool:
        deadline = time.monotonic() + 10
        while not cond():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def run(ops: list[Op]) -> None:
        payloads = [op.payload for op in ops]
        if payloads == ["w"]:
            w_running.set()
            assert until(lambda: len(gc._queue) >= 2)  # 1 and 2 queue behind us
        elif 100 not in payloads:
            assert sorted(payloads) == [1, 2]
            pair_running.set()
            assert until(lambda: len(gc._queue) >= 1)  # 100 queues behind us
        else:
            gc.wake_previous()
            seen.append(until(lambda: {1, 2} <= set(returned)))
        for op in ops:
            op.succeed(op.payload)

    gc = GroupCommitter(run, "test")
    threads = [threading.Thread(target=lambda: returned.append(gc.submit("w")))]
    threads[0].start()
    assert w_running.wait(10)
    for i in (1, 2):
        threads.append(threading.Thread(target=lambda i=i: returned.append(gc.submit(i))))
        threads[-1].start()
    assert pair_running.wait(10)
    threads.append(threading.Thread(target=lambda: returned.append(gc.submit(100))))
    threads[-1].start()
    for th in threads:
        th.join(timeout=30)
    assert sorted(returned, key=str) == sorted(["w", 1, 2, 100], key=str)
    assert seen == [True]
    assert gc.batches == 3


def test_callers_of_a_batch_are_all_woken_without_wake_previous() -> None:
    # A backend that never calls wake_previous still wakes everyone, in a chain.
    gate = threading.Event()
    sizes: list[int] = []

    def run(ops: list[Op]) -> None:
        sizes.append(len(ops))
        gate.wait(10)
        for op in ops:
            op.succeed(op.payload)

    gc = GroupCommitter(run, "test")
    results: list[int] = []
    threads = [threading.Thread(target=lambda i=i: results.append(gc.submit(i))) for i in range(20)]
    for th in threads:
        th.start()
    time.sleep(0.1)
    gate.set()
    for th in threads:
        th.join(timeout=30)
    assert sorted(results) == list(range(20))
    assert sum(sizes) == 20 and gc.ops == 20
