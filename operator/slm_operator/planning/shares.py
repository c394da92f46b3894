"""Consumable GPU shares (``dra-shares``): the devices, what one replica's claim asks, what fits.

NVIDIA's DRA driver run with ``--consumable-shares`` publishes each GPU with
``allowMultipleAllocations: true`` and consumable capacities (``constants.DRA_CAPACITY_*``):
``memory`` always and, with an integer share count N, ``shares``. Independent ResourceClaims (any
namespace) each consume part of one device, and the scheduler keeps every capacity's sum within
its value. Each allocation's consumption is in the claim's
``status.allocation.devices.results[].consumedCapacity``; :class:`SharedDevice` adds those up, so the
planner's own accounting never promises a device more than it has.

Side-effect free.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from slm_operator.constants import DRA_CAPACITY_MEMORY, DRA_CAPACITY_SHARES

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIX = {None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}
MIB = 2**20


def parse_quantity(value: object) -> float:
    """A Kubernetes quantity (``80Gi``, ``30000Mi``, ``120``, ``500m``) as a number; 0 if unreadable."""
    match = _QUANTITY.match(str(value).strip())
    if not match:
        return 0.0
    try:
        return float(match.group(1)) * _SUFFIX[match.group(2)]
    except ValueError:
        return 0.0


@dataclasses.dataclass(frozen=True)
class ShareRequest:
    """What one replica's claim consumes of a shared device.

    ``shares`` is ``None`` when the claim asks no ``shares`` (GPUs that publish memory only): a
    device that has a ``shares`` capacity then takes its request policy's default, 1 share.
    """

    memory_mib: int
    shares: int | None


@dataclasses.dataclass(frozen=True)
class SharedDevice:
    """One GPU that allows multiple allocations, with what its allocated claims consume."""

    driver: str
    pool: str
    name: str
    node: str
    memory_mib: int
    #: The ``shares`` capacity's value, ``None`` when the driver publishes memory only.
    shares: int | None
    used_memory_mib: int = 0
    used_shares: int = 0
    allocations: int = 0

    @property
    def key(self) -> str:
        """``<driver>/<pool>/<device>``: one physical GPU, as allocation results name it."""
        return device_key(driver=self.driver, pool=self.pool, device=self.name)

    def consumption(self, request: ShareRequest) -> tuple[int, int] | None:
        """(memory MiB, shares) ``request`` takes here; ``None`` where it can never be allocated
        (it asks a capacity the device lacks, or more than the device has)."""
        if request.shares is not None and self.shares is None:
            return None
        shares = 0 if self.shares is None else (request.shares if request.shares is not None else 1)
        if request.memory_mib > self.memory_mib or (self.shares is not None and shares > self.shares):
            return None
        return request.memory_mib, shares

    def fits(self, request: ShareRequest) -> bool:
        taken = self.consumption(request)
        if taken is None:
            return False
        memory, shares = taken
        return (self.used_memory_mib + memory <= self.memory_mib
                and (self.shares is None or self.used_shares + shares <= self.shares))

    def with_allocation(self, request: ShareRequest) -> SharedDevice:
        memory, shares = self.consumption(request) or (request.memory_mib, request.shares or 0)
        return dataclasses.replace(self, used_memory_mib=self.used_memory_mib + memory,
                                   used_shares=self.used_shares + shares, allocations=self.allocations + 1)

    def free_fraction(self) -> float:
        """The least free of its capacities, as a fraction of the device."""
        memory = 1 - self.used_memory_mib / max(self.memory_mib, 1)
        shares = 1 - self.used_shares / self.shares if self.shares else 1.0
        return max(0.0, min(memory, shares))


def device_key(*, driver: str, pool: str, device: str) -> str:
    return f"{driver}/{pool}/{device}"


def consumed(capacity: dict[str, object] | None) -> tuple[int, int]:
    """(memory MiB rounded up, shares) of one allocation result's ``consumedCapacity``."""
    capacity = capacity or {}
    memory = math.ceil(parse_quantity(capacity.get(DRA_CAPACITY_MEMORY, 0)) / MIB)
    return memory, math.ceil(parse_quantity(capacity.get(DRA_CAPACITY_SHARES, 0)))


def first_fit(devices: Sequence[SharedDevice], requests: Iterable[ShareRequest]) -> tuple[list[SharedDevice], int]:
    """Place ``requests`` one by one on the first device they fit, in the given order (the
    scheduler's allocator also takes a node's devices in order). Returns the devices afterwards and
    how many requests did not fit."""
    placed = list(devices)
    missed = 0
    # NB: devices only fill up here, so a device too full for a request stays too full for the same
    # request: each distinct request resumes where it last fit (a fleet has few distinct sizes).
    resume: dict[ShareRequest, int] = {}
    for request in requests:
        at = next((i for i in range(resume.get(request, 0), len(placed)) if placed[i].fits(request)), None)
        if at is None:
            missed += 1
            resume[request] = len(placed)
        else:
            placed[at] = placed[at].with_allocation(request)
            resume[request] = at
    return placed, missed


def fitting_replicas(devices: Sequence[SharedDevice], request: ShareRequest, *, limit: int) -> int:
    """How many more replicas of ``request`` the devices hold (at most ``limit``)."""
    count = 0
    for device in devices:
        while count < limit and device.fits(request):
            device = device.with_allocation(request)
            count += 1
    return count


@dataclasses.dataclass(frozen=True)
class DeviceOccupancy:
    """How many of one service's replicas a GPU holds (``status.placement.devices[]``)."""

    node: str
    device: str
    replicas: int

    def to_status(self) -> dict[str, Any]:
        return {"node": self.node, "device": self.device, "replicas": self.replicas}


def allocated_devices(claim: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(node, device key) of each device an allocated claim holds; empty while unallocated.

    The node is the allocation's node selector (a node-local device), else the pool's name (NVIDIA's
    driver names a node's pool after the node).
    """
    allocation = (claim.get("status") or {}).get("allocation") or {}
    node = ""
    for term in (allocation.get("nodeSelector") or {}).get("nodeSelectorTerms") or ():
        for field in term.get("matchFields") or ():
            if field.get("key") == "metadata.name" and field.get("values"):
                node = field["values"][0]
    return [(node or r.get("pool", ""), device_key(driver=r.get("driver", ""), pool=r.get("pool", ""),
                                                   device=r.get("device", "")))
            for r in (allocation.get("devices") or {}).get("results") or ()]


def device_occupancy(claims: Iterable[Mapping[str, Any]]) -> list[DeviceOccupancy]:
    """Per GPU, how many of the claims are allocated on it; ordered by node and device."""
    counts: dict[tuple[str, str], int] = {}
    for claim in claims:
        for node, key in allocated_devices(claim):
            device = key.rsplit("/", 1)[-1]
            counts[(node, device)] = counts.get((node, device), 0) + 1
    return [DeviceOccupancy(node=node, device=device, replicas=n) for (node, device), n in sorted(counts.items())]
