"""Per-object locks and the readiness memo."""

import threading

from slm_operator.locks import ObjectLocks, ReadinessMemo


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
