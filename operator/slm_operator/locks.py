"""The operator's in-process coordination: per-object locks, the readiness memo and the status memo.

Handlers run in kopf's executor threads. The reconciler and the readiness handler both write an
SLMService's status, so each read-decide-write holds that object's lock; the readiness handler
skips StatefulSet events that did not change readiness (most of them) without an API call.

Side-effect free apart from their own memory: no kopf, no Kubernetes client.
"""

from __future__ import annotations

import threading


class ObjectLocks:
    """One lock per ``(namespace, name)``, made on first use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def of(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())


class ReadinessMemo:
    """The ready replicas last seen per StatefulSet (``namespace/name``)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._ready: dict[str, int] = {}

    def changed(self, key: str, ready: int, *, deleted: bool = False) -> bool:
        """Remember ``ready`` for ``key``; ``False`` when it is what was seen last (nothing to do).
        A deleted object is forgotten, and always counts as a change."""
        with self._guard:
            if deleted:
                self._ready.pop(key, None)
                return True
            if self._ready.get(key) == ready:
                return False
            self._ready[key] = ready
            return True

    def forget(self, key: str) -> None:
        """Forget ``key``: its next event counts as a change (after a write that failed, say)."""
        with self._guard:
            self._ready.pop(key, None)


class StatusMemo:
    """The status the reconciler last wrote per SLMService, and the resourceVersion it read then.

    kopf hands a handler the object as of the last watch event. Two runs of the reconciler moments
    apart (a retrying handler and a timer, say) can both start from the same event: the second
    would decide from a status the first has already changed (and post the first's Event again).
    While the object's resourceVersion is still the one the last write was based on, the watch has
    not shown that write yet: :meth:`current` gives the written status instead.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._written: dict[tuple[str, str], tuple[str, dict[str, object]]] = {}

    def current(self, namespace: str, name: str, *, resource_version: str | None,
                seen: dict[str, object]) -> dict[str, object]:
        """``seen`` (the event's status), or what was written since where the event is that old."""
        with self._guard:
            based_on, written = self._written.get((namespace, name), (None, None))
            if written is not None and resource_version is not None and based_on == resource_version:
                return dict(written)
            self._written.pop((namespace, name), None)
            return seen

    def remember(self, namespace: str, name: str, *, resource_version: str | None,
                 status: dict[str, object]) -> None:
        with self._guard:
            if resource_version is None:
                self._written.pop((namespace, name), None)
            else:
                self._written[(namespace, name)] = (resource_version, dict(status))

    def forget(self, namespace: str, name: str) -> None:
        """Another writer (the readiness fold) changed the status: trust the next event."""
        with self._guard:
            self._written.pop((namespace, name), None)
