"""Per-object locks and the readiness memo."""

import threading

from slm_operator.locks import ObjectLocks, ReadinessMemo, StatusMemo


def test_one_lock_per_object():
    locks = ObjectLocks()
    assert locks.of("ns", "a") is locks.of("ns", "a")
    assert locks.of("ns", "a") is not locks.of("ns", "b") and locks.of("ns", "a") is not locks.of("other", "a")


def test_the_memo_reports_changes_only():
    memo = ReadinessMemo()
    assert memo.changed("ns/a-g0", 0) and not memo.changed("ns/a-g0", 0)
    assert memo.changed("ns/a-g0", 1) and not memo.changed("ns/a-g0", 1)
    assert memo.changed("ns/a-g0", 1, deleted=True)  # a deletion always counts, and is forgotten
    assert memo.changed("ns/a-g0", 1)


def test_the_memo_is_safe_across_threads():
    memo = ReadinessMemo()
    changes = []
    threads = [threading.Thread(target=lambda: changes.append(memo.changed("k", 5))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert changes.count(True) == 1


def test_an_event_older_than_our_last_write_gives_the_written_status():
    statuses = StatusMemo()
    seen = {"phase": "Profiling"}
    assert statuses.current("ns", "a", resource_version="7", seen=seen) == seen  # nothing written yet
    statuses.remember("ns", "a", resource_version="7", status={"phase": "Deploying"})
    # A timer fires with the same event (resourceVersion 7): it must not decide from "Profiling".
    assert statuses.current("ns", "a", resource_version="7", seen=seen) == {"phase": "Deploying"}
    assert statuses.current("ns", "b", resource_version="7", seen=seen) == seen  # per object
    # The watch has shown a newer version (ours, or anyone's): the event is the truth, the memo goes.
    assert statuses.current("ns", "a", resource_version="8", seen={"phase": "Ready"}) == {"phase": "Ready"}
    assert statuses.current("ns", "a", resource_version="7", seen=seen) == seen


def test_another_writer_or_an_unknown_version_drops_the_written_status():
    statuses = StatusMemo()
    statuses.remember("ns", "a", resource_version="7", status={"phase": "Deploying"})
    statuses.forget("ns", "a")  # the readiness fold wrote from a fresh read
    assert statuses.current("ns", "a", resource_version="7", seen={"phase": "Profiling"}) == {"phase": "Profiling"}
    statuses.remember("ns", "a", resource_version=None, status={"phase": "Deploying"})
    assert statuses.current("ns", "a", resource_version=None, seen={"phase": "Profiling"}) == {"phase": "Profiling"}
