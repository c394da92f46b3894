"""The operator's in-process coordination: per-object locks and the readiness memo.

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
