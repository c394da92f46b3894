"""Event-driven waiting for GPU capacity: who waits for which product, and the thread that wakes them.

A service the planner could not place for want of capacity (``status.waiting_for_capacity``) is
not polled. It registers in :class:`CapacityWaiters` with the product it waits for and a
:meth:`~CapacityWaiters.mark` taken before it planned. Every event of the inventory's watches
(pods, our groups, claims, GPU nodes, ResourceSlices) pokes the :class:`CapacityWaker`; after a
debounce of a second it rebuilds the inventory (no API call), and where
``planning.inventory.free_capacity`` grew it bumps that product's epoch and reconciles the services
that planned before the bump, oldest waiter first. A steady cluster has no events, so no work.

NB: the mark is taken before planning and the bump after the inventory had the change, so a
change that lands while a service plans is never lost: either the plan saw it, or the service
registers with a mark older than the bump and is reconciled (at once, if it registers late).

:class:`NodeGraceTimers` does the same for a node turned NotReady: one call per node once its grace
period is over.

Side-effect free apart from its own memory and threads: no kopf, no Kubernetes client (the
reconcile of a woken service is a callable it is given).
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping

from slm_operator.planning.inventory import CapacityKey, Inventory, free_capacity, grown_products

logger = logging.getLogger(__name__)

#: ``namespace/name`` of an SLMService.
ServiceKey = str
#: The waiter's product (``None``: any, the planner picks one) → the epoch it planned at.
Mark = Mapping[str | None, int]


@dataclasses.dataclass
class _Waiter:
    product: str | None
    mark: int
    since: float


class CapacityWaiters:
    """The services waiting for GPU capacity, per product, with the epoch each last planned at.

    An epoch per product counts the times its free capacity grew; ``None`` (a service without
    ``spec.gpu.product``) counts growth of any product. Thread-safe.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._epochs: dict[str | None, int] = {None: 0}
        self._waiters: dict[ServiceKey, _Waiter] = {}
        self._clock = clock
        #: Called when a service registers with a mark older than its product's epoch.
        self.on_stale: Callable[[], None] = lambda: None

    def mark(self) -> dict[str | None, int]:
        """The epochs now: take it before planning, hand it to :meth:`wait` after."""
        with self._lock:
            return dict(self._epochs)

    def wait(self, key: ServiceKey, *, product: str | None, mark: Mark) -> None:
        """``key`` planned at ``mark`` and waits for capacity of ``product``. It keeps its place in
        the queue (the time it first waited) while it keeps waiting."""
        with self._lock:
            seen = mark.get(product, 0)
            waiter = self._waiters.get(key)
            since = waiter.since if waiter is not None else self._clock()
            self._waiters[key] = _Waiter(product=product, mark=seen, since=since)
            stale = seen < self._epochs.get(product, 0)
        if stale:
            self.on_stale()

    def done(self, key: ServiceKey) -> None:
        """``key`` waits for capacity no more (placed, deleted, or waiting for something else)."""
        with self._lock:
            self._waiters.pop(key, None)

    def grew(self, products: set[str]) -> None:
        """The free capacity of ``products`` grew."""
        if not products:
            return
        with self._lock:
            for product in products:
                self._epochs[product] = self._epochs.get(product, 0) + 1
            self._epochs[None] += 1

    def due(self) -> list[ServiceKey]:
        """The waiters that planned before their product's capacity last grew, oldest first."""
        with self._lock:
            due = [(w.since, key) for key, w in self._waiters.items() if w.mark < self._epochs.get(w.product, 0)]
        return [key for _, key in sorted(due)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiters)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._waiters


class CapacityWaker:
    """A daemon thread that turns inventory events into reconciles of the due waiters.

    :meth:`poke` is cheap and may be called from any watch thread on every event. The thread waits
    ``debounce_seconds`` after a poke (a burst of events is one round: a roll-out's pod events are a
    few rounds a second, not one each), rebuilds the inventory with ``inventory``, and hands every
    due waiter to ``reconcile``, one after another. A failing reconcile is logged and leaves its
    waiter due; another round follows ``RETRY_SECONDS`` later.

    NB: the round does not take the planner's lock. It needs none: the inventory's stores are each
    thread-safe, and the marks (taken before planning) and the epochs (bumped after the round saw
    the change) order a round against a plan whichever runs first; holding the lock would only make
    the plans of new services wait behind the rounds.
    """

    #: A round in which a reconcile failed (an API outage) is followed by another this much later.
    RETRY_SECONDS = 5.0

    def __init__(
        self, *, waiters: CapacityWaiters, inventory: Callable[[], Inventory], reconcile: Callable[[ServiceKey], None],
        debounce_seconds: float = 1.0,
    ) -> None:
        self._waiters = waiters
        self._inventory = inventory
        self._reconcile = reconcile
        self._debounce = debounce_seconds
        self._poked = threading.Event()
        self._stopped = threading.Event()
        self._last: dict[CapacityKey, int] | None = None
        self._thread: threading.Thread | None = None
        self.rounds = 0
        waiters.on_stale = self.poke

    def poke(self) -> None:
        """Something the inventory is built from changed."""
        self._poked.set()

    def start(self) -> CapacityWaker:
        """Start the thread in a copy of the caller's context (its context variables go with it; the
        operator's ``reconcile`` runs each woken service in kopf's resource context itself)."""
        if self._thread is None:
            context = contextvars.copy_context()
            self._thread = threading.Thread(target=context.run, args=(self._run,), name="capacity-waker", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._poked.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def run_once(self) -> list[ServiceKey]:
        """One round: compare the free capacity with the last round's, wake the due; whom it woke."""
        now = free_capacity(self._inventory())
        # NB: the first round counts every product as grown: services may have registered on a
        # view older than the one it starts from.
        grown = {key[0] for key in now} if self._last is None else grown_products(self._last, now)
        self._last = now
        self._waiters.grew(grown)
        due = self._waiters.due()
        failed = False
        for key in due:
            if self._stopped.is_set():
                break
            try:
                self._reconcile(key)
            except Exception:  # NB: still due (its mark is old): a round RETRY_SECONDS later tries again
                logger.exception("reconciling %s after GPU capacity freed failed", key)
                failed = True
        if failed and not self._stopped.is_set():
            retry = threading.Timer(self.RETRY_SECONDS, self.poke)
            retry.daemon = True
            retry.start()
        self.rounds += 1
        return due

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._poked.wait()
            if self._stopped.wait(self._debounce):
                return
            self._poked.clear()
            try:
                self.run_once()
            except Exception:  # NB: the thread must outlive one bad round (a half-built inventory)
                logger.exception("capacity wake-up round failed")


class NodeGraceTimers:
    """One pending call per node, run once the node has been NotReady for the grace period: the
    services with a replica there are reconciled then, and their groups move (``planning.moves``).

    NB: event-driven, like the capacity wake-ups: a node's status events say when it turned
    NotReady; no timer polls services that are Ready. A node Ready again (or deleted) cancels its
    call. Each call runs in a thread of its own, in a copy of the scheduler's context (kopf's).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timers: dict[str, threading.Timer] = {}

    def schedule(self, node: str, *, delay: float, call: Callable[[], None]) -> bool:
        """Run ``call`` in ``delay`` seconds unless one is already pending for ``node``; whether it
        was scheduled now."""
        with self._lock:
            if node in self._timers:
                return False
            context = contextvars.copy_context()

            def fire() -> None:
                with self._lock:
                    self._timers.pop(node, None)
                try:
                    context.run(call)
                except Exception:  # NB: the services' own handlers retry what failed here
                    logger.exception("reconciling the services on NotReady node %s failed", node)
            timer = threading.Timer(delay, fire)
            timer.daemon = True
            self._timers[node] = timer
            timer.start()
            return True

    def cancel(self, node: str) -> None:
        with self._lock:
            timer = self._timers.pop(node, None)
        if timer is not None:
            timer.cancel()

    def pending(self) -> list[str]:
        with self._lock:
            return sorted(self._timers)

    def stop(self) -> None:
        with self._lock:
            timers, self._timers = list(self._timers.values()), {}
        for timer in timers:
            timer.cancel()
