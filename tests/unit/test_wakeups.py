"""Event-driven waiting for GPU capacity: what counts as capacity freed, who is due, and the waker.

The planner's inventory is built from factories' nodes and pods (``tests.unit.fakes.gpu_index``)
or, where a promise not yet bound matters, from pools written out; the waker runs its rounds by
hand (``run_once``) and, once, in its own thread.
"""

from __future__ import annotations

import contextvars
import datetime
import threading

import pytest

from slm_operator.gpu_index import PlacementLedger
from slm_operator.planning.inventory import GpuPool, Inventory, free_capacity, grown_products
from slm_operator.planning.moves import seconds_until_lost
from slm_operator.planning.shares import SharedDevice, ShareRequest
from slm_operator.status import MOVE_WAITING, POOL_CRD_MISSING, waiting, waiting_for_capacity
from slm_operator.wakeups import CapacityWaiters, CapacityWaker, NodeGraceTimers
from tests.unit.factories import H100, gpu_pod, node
from tests.unit.fakes import gpu_index

L4 = "NVIDIA-L4"


def inventory(*nodes, pods=()) -> Inventory:
    return gpu_index(*nodes, pods=list(pods)).inventory(ledger=PlacementLedger())


def pool(free: int, *, node_name: str = "m", product: str = H100) -> GpuPool:
    return GpuPool(node=node_name, product=product, memory_mib=81559, gpu_count=2, sharing="none",
                   slots_per_gpu=1, resource_name="nvidia.com/gpu", free=free)


def test_a_pod_gone_or_a_node_added_grows_its_product_and_nothing_else():
    two = node("m", count=2)
    busy = free_capacity(inventory(two, node("l4", product=L4, count=1), pods=[gpu_pod("m"), gpu_pod("l4")]))
    freed = free_capacity(inventory(two, node("l4", product=L4, count=1), pods=[gpu_pod("l4")]))
    assert grown_products(busy, freed) == {H100}
    assert grown_products(freed, busy) == set()  # taken, not freed
    assert grown_products(busy, busy) == set()
    # A node of another product joins: only that product grew.
    added = free_capacity(inventory(two, node("l4", product=L4, count=1), node("l4-b", product=L4, count=1),
                                    pods=[gpu_pod("m"), gpu_pod("l4")]))
    assert grown_products(busy, added) == {L4}
    # An Ended pod holds nothing (the kubelet gave its devices back).
    ended = free_capacity(inventory(two, node("l4", product=L4, count=1),
                                    pods=[gpu_pod("m", phase="Succeeded"), gpu_pod("l4")]))
    assert grown_products(busy, ended) == {H100}


def test_a_promise_bound_is_no_growth_but_a_promise_withdrawn_is():
    promised = free_capacity(Inventory(pools=(pool(2),), reserved={(H100, "none"): 1}))
    bound = free_capacity(Inventory(pools=(pool(1),)))  # its pod landed: one slot less, no promise
    withdrawn = free_capacity(Inventory(pools=(pool(2),)))  # its StatefulSet deleted before a pod landed
    assert grown_products(promised, bound) == set()
    assert grown_products(promised, withdrawn) == {H100}


def test_the_most_free_on_one_node_counts_as_growth_too():
    # Same total, but one node has two free now: a group of two pods fits where it did not.
    spread = free_capacity(Inventory(pools=(pool(1, node_name="a"), pool(1, node_name="b"))))
    packed = free_capacity(Inventory(pools=(pool(2, node_name="a"), pool(0, node_name="b"))))
    assert grown_products(spread, packed) == {H100}


def test_dra_shares_grow_with_memory_or_shares_given_back():
    def shares(used_memory: int, used_shares: int, pending: tuple[ShareRequest, ...] = ()) -> Inventory:
        device = SharedDevice(driver="gpu.nvidia.com", pool="m", name="gpu-0", node="m", memory_mib=81559,
                              shares=8, used_memory_mib=used_memory, used_shares=used_shares)
        return Inventory(pools=(GpuPool(node="m", product=H100, memory_mib=81559, gpu_count=1,
                                        sharing="dra-shares", slots_per_gpu=1, resource_name=None, free=1,
                                        devices=(device,)),),
                         pending_shares={H100: pending} if pending else {})
    full = free_capacity(shares(80000, 8))
    assert grown_products(full, free_capacity(shares(60000, 6))) == {H100}
    # A pending claim allocated (pending → used) is no growth.
    assert grown_products(free_capacity(shares(60000, 6, (ShareRequest(memory_mib=20000, shares=2),))),
                          free_capacity(shares(80000, 8))) == set()


def test_waiters_are_due_after_their_product_grew_oldest_first():
    clock = iter(range(100))
    waiters = CapacityWaiters(clock=lambda: next(clock))
    stale: list[str] = []
    waiters.on_stale = lambda: stale.append("poked")
    before = waiters.mark()
    waiters.wait("ns/late", product=H100, mark=before)
    waiters.wait("ns/l4", product=L4, mark=before)
    waiters.wait("ns/any", product=None, mark=before)
    waiters.wait("ns/late", product=H100, mark=before)  # waits on: keeps its place
    assert waiters.due() == [] and stale == []

    waiters.grew({H100})
    assert waiters.due() == ["ns/late", "ns/any"]  # not the L4 one; a service without product waits for any
    # Reconciled, still no room: it waits again from a mark taken before it planned, not due.
    waiters.wait("ns/late", product=H100, mark=waiters.mark())
    assert waiters.due() == ["ns/any"]
    waiters.done("ns/any")
    assert waiters.due() == [] and len(waiters) == 2 and "ns/any" not in waiters

    # Capacity grew while one planned: it registers with the older mark, is due, and pokes the waker.
    mark = waiters.mark()
    waiters.grew({L4})
    waiters.wait("ns/l4", product=L4, mark=mark)
    assert stale == ["poked"] and waiters.due() == ["ns/l4"]


class Cluster:
    """An inventory the test changes, and the reconciles the waker asks for."""

    def __init__(self, waiters: CapacityWaiters, free: int) -> None:
        self.free, self.waiters, self.reconciled = free, waiters, []

    def inventory(self) -> Inventory:
        return Inventory(pools=(pool(self.free),))

    def reconcile(self, key: str) -> None:
        self.reconciled.append(key)
        if key == "ns/broken":
            raise RuntimeError("API down")
        self.waiters.wait(key, product=H100, mark=self.waiters.mark())  # still no room


def test_the_waker_reconciles_due_waiters_only_when_capacity_grew():
    waiters = CapacityWaiters()
    cluster = Cluster(waiters, free=0)
    waker = CapacityWaker(waiters=waiters, inventory=cluster.inventory, reconcile=cluster.reconcile)
    mark = waiters.mark()
    for key in ("ns/a", "ns/broken", "ns/b"):
        waiters.wait(key, product=H100, mark=mark)
    # The first round wakes every waiter: they planned before the waker had a view.
    assert waker.run_once() == ["ns/a", "ns/broken", "ns/b"]
    assert cluster.reconciled == ["ns/a", "ns/broken", "ns/b"]  # one failing does not stop the others

    cluster.reconciled.clear()
    assert waker.run_once() == ["ns/broken"]  # nothing grew: only the one whose reconcile failed is due
    cluster.free = 0
    waiters.done("ns/broken")
    cluster.reconciled.clear()
    assert waker.run_once() == [] and cluster.reconciled == []  # a steady cluster costs nothing

    cluster.free = 1  # a GPU freed
    assert waker.run_once() == ["ns/a", "ns/b"]


WHOSE: contextvars.ContextVar[str] = contextvars.ContextVar("whose", default="nobody's")


def test_the_waker_thread_runs_a_round_after_a_poke_in_its_starters_context():
    waiters = CapacityWaiters()
    cluster = Cluster(waiters, free=0)
    woken = threading.Event()
    seen: list[str] = []

    def reconcile(key: str) -> None:
        seen.append(WHOSE.get())  # kopf's settings live in a context variable: Events need them
        cluster.reconcile(key)
        woken.set()
    WHOSE.set("kopf's")
    waker = CapacityWaker(waiters=waiters, inventory=cluster.inventory, reconcile=reconcile,
                          debounce_seconds=0.01).start()
    try:
        waker.poke()  # the first round: a view, nobody waits yet
        mark = waiters.mark()
        for _ in range(500):
            if waker.rounds:
                break
            woken.wait(0.01)
        assert waker.rounds == 1 and not woken.is_set()
        waiters.wait("ns/a", product=H100, mark=mark)
        cluster.free = 1
        waker.poke()
        assert woken.wait(5), "the waker did not reconcile the waiter after a poke"
        assert cluster.reconciled == ["ns/a"] and seen == ["kopf's"]
    finally:
        waker.stop()


CAPACITY = {"type": "Planned", "status": "False", "reason": "InsufficientSlots"}


@pytest.mark.parametrize(("status", "for_capacity"), [
    ({"phase": "Pending", "conditions": [CAPACITY]}, True),
    ({"phase": "Pending", "conditions": [CAPACITY | {"reason": "NoMatchingGPUs"}]}, True),
    ({"phase": "Pending", "conditions": [{"type": "Available", "status": "False", "reason": "SecretNotFound"}]},
     False),
    ({"phase": "Pending", "conditions": [CAPACITY, {"type": "Progressing", "reason": MOVE_WAITING}]}, False),
    ({"phase": "Pending", "conditions": [CAPACITY, {"type": "Routed", "reason": POOL_CRD_MISSING}]},
     False),
    ({"phase": "Degraded", "conditions": [{"type": "Planned", "reason": "PartialPlacement"},
                                          {"type": "Progressing", "reason": "Complete"}]}, True),
    ({"phase": "Degraded", "conditions": [{"type": "Planned", "reason": "PartialPlacement"},
                                          {"type": "Progressing", "reason": "StartingReplicas"}]}, False),
    ({"phase": "Degraded", "conditions": [{"type": "Progressing", "reason": "ApplyRetrying"}]}, False),
    ({"phase": "Deploying", "conditions": [{"type": "Planned", "reason": "PartialPlacement"}]}, False),
    ({"phase": "Ready", "conditions": [{"type": "Planned", "reason": "Planned"}]}, False),
])
def test_only_a_wait_for_capacity_alone_leaves_the_retry_timer(status, for_capacity):
    assert waiting_for_capacity(status) is for_capacity
    # The retry timer polls every other wait; a Ready one is polled by neither, nor is one whose
    # replicas are starting (readiness events move it on).
    assert waiting(status) is (status["phase"] not in ("Ready", "Deploying") and not for_capacity)


NOW = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize(("ready", "left"), [
    (None, None),
    ({"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-02T11:00:00Z"}, None),
    ({"type": "Ready", "status": "False", "lastTransitionTime": "2026-12-02T11:59:00Z"}, 240.0),
    ({"type": "Ready", "status": "Unknown", "lastTransitionTime": "2026-12-02T11:00:00Z"}, 0.0),
    ({"type": "Ready", "status": "False"}, 300.0),  # no transition time: the count starts now
])
def test_a_node_not_ready_is_lost_when_its_grace_period_is_over(ready, left):
    status = {"conditions": [ready]} if ready else {}
    assert seconds_until_lost(status=status, now=NOW, grace_seconds=300) == left


def test_one_grace_timer_per_node_cancelled_when_it_is_ready_again():
    timers, fired = NodeGraceTimers(), []
    done = threading.Event()
    WHOSE.set("kopf's")

    def call(node: str) -> None:
        fired.append((node, WHOSE.get()))
        done.set()
    assert timers.schedule("a", delay=0.05, call=lambda: call("a"))
    assert not timers.schedule("a", delay=0.05, call=lambda: call("a again"))  # one pending per node
    assert timers.schedule("b", delay=60, call=lambda: call("b"))
    timers.cancel("b")  # Ready again before its grace was over
    assert done.wait(5) and fired == [("a", "kopf's")]
    assert timers.pending() == []
    timers.stop()
