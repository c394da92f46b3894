"""The operator's own Prometheus metrics: one registry, every name prefixed ``slm_operator_``.

What is measured where:

* ``reconcile`` times each reconcile (:func:`observe_reconcile`); ``profile_source`` counts profile
  runs, cache lookups and measurement durations (:func:`record_profile`, :func:`record_cache_lookup`);
  ``kube`` counts API requests and error answers (:func:`api_call`).
* ``handlers`` keeps every served SLMService's status (:func:`service_entry`, by its own watch) and,
  at start-up, hands a function that reads them (:func:`watch_services`) and a function that builds
  the planner's GPU inventory (:func:`watch_inventory`) to the collectors here; both are read when
  Prometheus scrapes, so a gauge never outlives its service and the inventory is the one a plan
  made now would see.
* ``serve`` starts the ``/metrics`` endpoint (``SLM_METRICS_PORT``).

Label cardinality is bounded: no per-pod or per-node label anywhere. ``product`` × ``sharing`` (or
``mechanism``) is a handful per cluster; ``verb`` and ``code`` are a few API verbs and HTTP codes;
``source``, ``result``, ``outcome`` and ``phase`` are fixed lists below. The only per-object labels
are ``namespace`` and ``slm_service`` on the three per-service gauges (phase, planned tokens/s,
batch size B*), one series each per SLMService (seven for the phase): as many as the cluster has
SLMServices, which the dashboards need to draw each service against its plan. The label is
``slm_service``, not ``name``, so it joins the vLLM pods' series, which the chart's PodMonitor labels
the same way.

No kopf, no Kubernetes client: callers pass plain status dicts and planner inventories.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from slm_operator import __version__
from slm_operator.planning.inventory import Inventory
from slm_operator.status import Phase

__all__ = [
    "API_VERBS", "METRIC_NAMES", "PHASES", "PROFILE_RESULTS", "PROFILE_SOURCES", "REGISTRY", "api_call",
    "inventory_totals", "observe_reconcile", "record_cache_lookup", "record_profile", "serve", "service_entry",
    "service_sample", "watch_inventory", "watch_services",
]

logger = logging.getLogger(__name__)
PREFIX: Final = "slm_operator"
MIB: Final = 1024**2

#: The phases an SLMService can be in (``status.Phase``).
PHASES: Final[tuple[str, ...]] = get_args(Phase)
#: Where a profile came from: ``Profile.source`` (measured, estimated, static) or a cached result.
PROFILE_SOURCES: Final = ("measured", "estimated", "static", "cache")
#: ``started`` applies to measurements only (a profiler Job or a local run); ``failed`` to every
#: source but the cache (a measurement that failed, a spec or model the estimate cannot use).
PROFILE_RESULTS: Final = ("started", "succeeded", "failed")
#: The API calls ``kube`` makes (server-side apply is its own verb, as the API server counts it).
API_VERBS: Final = ("apply", "get", "list", "create", "delete", "patch")
#: A reconcile's outcome: the phase it left the service in, or ``Error`` (an unexpected exception).
RECONCILE_OUTCOMES: Final = (*PHASES, "Error")

# NB: no ``*_created`` series beside each counter and histogram: Prometheus reads resets by itself,
# and they would double the series of every labelled counter.
disable_created_metrics()  # type: ignore[no-untyped-call]
#: The operator's one registry (``prometheus_client``'s global default stays unused).
REGISTRY: Final = CollectorRegistry(auto_describe=True)

BUILD_INFO: Final = Gauge(f"{PREFIX}_build_info", "The operator's version; always 1.", ["version"],
                          registry=REGISTRY)
BUILD_INFO.labels(version=__version__).set(1)
# NB: the process's memory, CPU and open files under our prefix (slm_operator_process_*).
ProcessCollector(namespace=PREFIX, registry=REGISTRY)

RECONCILE_SECONDS: Final = Histogram(
    f"{PREFIX}_reconcile_duration_seconds",
    "Time one SLMService reconcile took (parse, profile, plan, apply, status), by the phase it left.",
    ["outcome"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
PROFILE_RUNS: Final = Counter(
    f"{PREFIX}_profile_runs",
    "Profiles the reconciler obtained, by source (measured, estimated, static, cache) and result "
    "(started, succeeded, failed; started for measurements only).",
    ["source", "result"], registry=REGISTRY,
)
PROFILE_SECONDS: Final = Histogram(
    f"{PREFIX}_profile_duration_seconds",
    "Time a profile took: a measurement from start until the operator saw its result; an estimate's "
    "computation.",
    ["source"], registry=REGISTRY,
    buckets=(0.001, 0.01, 0.1, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 2400.0, 3600.0),
)
PROFILE_CACHE_LOOKUPS: Final = Counter(
    f"{PREFIX}_profile_cache_lookups",
    "Lookups of a measured profile in the result-ConfigMap cache, by result (hit, miss).",
    ["result"], registry=REGISTRY,
)
API_REQUESTS: Final = Counter(f"{PREFIX}_api_requests", "Kubernetes API requests the reconciler made, by verb.",
                              ["verb"], registry=REGISTRY)
API_ERRORS: Final = Counter(
    f"{PREFIX}_api_errors",
    "Kubernetes API requests answered with an error, by verb and HTTP code (none: no answer). NB: 404 "
    "on get/delete and 409 on create are expected outcomes (gone already, made by another).",
    ["verb", "code"], registry=REGISTRY,
)

# NB: every series that can occur exists from the start (at 0), so rate() and increase() see the first one.
for _source in PROFILE_SOURCES:
    for _result in {"measured": PROFILE_RESULTS, "cache": ("succeeded",)}.get(_source, ("succeeded", "failed")):
        PROFILE_RUNS.labels(source=_source, result=_result)
for _lookup in ("hit", "miss"):
    PROFILE_CACHE_LOOKUPS.labels(result=_lookup)
for _verb in API_VERBS:
    API_REQUESTS.labels(verb=_verb)


# --- Recording: called by the work and I/O layers -------------------------------------------------

def observe_reconcile(*, outcome: str | None, seconds: float) -> None:
    """One reconcile ended in ``outcome`` (a phase, or ``Error``) after ``seconds``."""
    RECONCILE_SECONDS.labels(outcome=outcome if outcome in RECONCILE_OUTCOMES else "Error").observe(seconds)


def record_profile(*, source: str, result: str, seconds: float | None = None) -> None:
    """A profile of ``source`` ``result``-ed; ``seconds``: how long it took (observed when given)."""
    if source not in PROFILE_SOURCES or result not in PROFILE_RESULTS:
        raise ValueError(f"profile source {source!r} / result {result!r}: use {PROFILE_SOURCES} / {PROFILE_RESULTS}")
    PROFILE_RUNS.labels(source=source, result=result).inc()
    if seconds is not None:
        PROFILE_SECONDS.labels(source=source).observe(seconds)


def record_cache_lookup(*, hit: bool) -> None:
    PROFILE_CACHE_LOOKUPS.labels(result="hit" if hit else "miss").inc()


@contextlib.contextmanager
def api_call(verb: str, *, code_of: Callable[[BaseException], int | None]) -> Iterator[None]:
    """Count one API request of ``verb``, and its error answer if the body raises (re-raised).

    ``code_of`` reads the HTTP status from the client's exception (``None``: not an API answer,
    e.g. a refused connection, counted with code ``none``).
    """
    API_REQUESTS.labels(verb=verb).inc()
    try:
        yield
    except Exception as exc:
        code = code_of(exc)
        API_ERRORS.labels(verb=verb, code=str(code) if code is not None else "none").inc()
        raise


# --- Per-service gauges, from the statuses the watch sees -----------------------------------------

@dataclasses.dataclass(frozen=True)
class ServiceSample:
    """What the gauges need of one SLMService's status."""

    phase: str | None
    planned_tokens_per_second: float | None
    batch_size: int | None
    product: str | None
    mechanism: str | None
    gpus: int
    replicas_per_gpu: int


def service_sample(status: Mapping[str, Any] | None) -> ServiceSample:
    """Read a status as the CRD stores it (``status.profile``, ``status.placement``). Side-effect free."""
    status = status or {}
    profile = status.get("profile") or {}
    placement = status.get("placement") or {}
    planned = placement.get("plannedTokensPerSecond")
    batch = profile.get("batchSize")
    return ServiceSample(
        phase=status.get("phase"),
        planned_tokens_per_second=float(planned) if isinstance(planned, (int, float)) else None,
        batch_size=int(batch) if isinstance(batch, (int, float)) else None,
        product=profile.get("gpuProduct"),
        mechanism=placement.get("mechanism"),
        gpus=int(placement.get("gpus") or 0),
        replicas_per_gpu=int(placement.get("replicasPerGPU") or 0),
    )


#: The served services' samples as a watch keeps them: ``((namespace, name), sample)`` pairs.
ServiceSamples = Callable[[], Iterable[tuple[tuple[str, str], ServiceSample]]]


def service_entry(
    *, namespace: str, name: str, status: Mapping[str, Any] | None
) -> dict[tuple[str, str], ServiceSample]:
    """One served SLMService's entry (``handlers.SERVICES``)."""
    return {(namespace, name): service_sample(status)}


class _ScrapeTime(Collector):
    """A collector whose source is read when Prometheus scrapes (``None``: no samples).

    NB: sources read kopf's indexes from the scrape thread while the event loop updates them; a
    read that races an update raises RuntimeError and is simply taken again.
    """

    ATTEMPTS = 3

    def __init__(self) -> None:
        self.source: Callable[[], Any] | None = None

    def _read(self) -> Any:
        if self.source is None:
            return None
        for _ in range(self.ATTEMPTS):
            try:
                return self.source()
            except RuntimeError:
                continue
        logger.warning("%s skipped this scrape: the indexes kept changing while read", type(self).__name__)
        return None


class _Services(_ScrapeTime):
    """Every served SLMService's last status, from the watch's index, as gauges at scrape time."""

    def collect(self) -> Iterable[Metric]:
        samples: list[tuple[tuple[str, str], ServiceSample]] = sorted(self._read() or (), key=lambda kv: kv[0])
        per_phase = GaugeMetricFamily(f"{PREFIX}_service_phase",
                                      "1 for the phase each SLMService is in, 0 for the others.",
                                      labels=["namespace", "slm_service", "phase"])
        planned = GaugeMetricFamily(f"{PREFIX}_service_planned_tokens_per_second",
                                    "Tokens/s (input + output) the SLMService's current plan expects "
                                    "(status.placement.plannedTokensPerSecond).",
                                    labels=["namespace", "slm_service"])
        batch = GaugeMetricFamily(f"{PREFIX}_service_batch_size",
                                  "The Pareto batch size B* each replica runs at: its vLLM --max-num-seqs "
                                  "(status.profile.batchSize).",
                                  labels=["namespace", "slm_service"])
        services = GaugeMetricFamily(f"{PREFIX}_services", "SLMServices by phase.", labels=["phase"])
        gpus = GaugeMetricFamily(f"{PREFIX}_placed_gpus",
                                 "GPUs the operator's plans place (one GPU group each), by GPU product, sharing "
                                 "mechanism and replicas per GPU (k).",
                                 labels=["product", "mechanism", "replicas_per_gpu"])
        by_phase = dict.fromkeys(PHASES, 0)
        placed: dict[tuple[str, str, str], int] = {}
        for (namespace, name), sample in samples:
            for phase in PHASES:
                per_phase.add_metric([namespace, name, phase], 1.0 if sample.phase == phase else 0.0)
            if sample.phase in by_phase:
                by_phase[sample.phase] += 1
            if sample.planned_tokens_per_second is not None:
                planned.add_metric([namespace, name], sample.planned_tokens_per_second)
            if sample.batch_size is not None:
                batch.add_metric([namespace, name], float(sample.batch_size))
            if sample.gpus and sample.product and sample.mechanism:
                key = (sample.product, sample.mechanism, str(sample.replicas_per_gpu))
                placed[key] = placed.get(key, 0) + sample.gpus
        for phase, count in by_phase.items():
            services.add_metric([phase], float(count))
        for key, count in sorted(placed.items()):
            gpus.add_metric(list(key), float(count))
        return [per_phase, planned, batch, services, gpus]


_SERVICES: Final = _Services()
REGISTRY.register(_SERVICES)


def watch_services(samples: ServiceSamples | None) -> None:
    """Scrapes read the per-service gauges from ``samples`` (a watch's, fed by :func:`service_entry`):
    a deleted service leaves the watch's store, and its series go with it."""
    _SERVICES.source = None if samples is None else (lambda: list(samples()))


# --- The GPU inventory the planner sees -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class InventoryTotals:
    """One (product, pool sharing) of the inventory, summed over its nodes."""

    gpus: int
    slots: int
    free_slots: int
    reserved_slots: int
    free_memory_bytes: float


def inventory_totals(inventory: Inventory) -> dict[tuple[str, str], InventoryTotals]:
    """Per (product, sharing): GPUs, slots, free slots after what planned groups still need
    (``reserved``), and the GPU memory behind those free slots (a slot's share of its GPU).
    Side-effect free."""
    sums: dict[tuple[str, str], list[float]] = {}
    for pool in inventory.pools:
        acc = sums.setdefault((pool.product, pool.sharing), [0, 0, 0, 0.0])
        acc[0] += pool.gpu_count
        acc[1] += pool.gpu_count * pool.slots_per_gpu
        acc[2] += pool.free
        acc[3] += pool.free * pool.memory_mib * MIB / max(pool.slots_per_gpu, 1)
    totals = {}
    for key, (gpus, slots, free, memory) in sorted(sums.items()):
        reserved = int(inventory.reserved.get(key, 0))
        usable = max(0, int(free) - reserved)
        # NB: reserved slots are not tied to a node; the memory they take is their share of the mean slot.
        totals[key] = InventoryTotals(gpus=int(gpus), slots=int(slots), free_slots=usable, reserved_slots=reserved,
                                      free_memory_bytes=memory * usable / free if free else 0.0)
    return totals


class _InventoryGauges(_ScrapeTime):
    """The inventory a plan made now would see, built at scrape time by the source ``handlers`` set."""

    def collect(self) -> Iterable[Metric]:
        families = {
            "gpus": GaugeMetricFamily(f"{PREFIX}_inventory_gpus",
                                      "Physical GPUs on schedulable GPU nodes, by product and pool sharing "
                                      "(none, mps, time-slicing, dra).", labels=["product", "sharing"]),
            "slots": GaugeMetricFamily(f"{PREFIX}_inventory_slots",
                                       "Device-plugin slots (GPUs × replicas per GPU) or DRA devices.",
                                       labels=["product", "sharing"]),
            "free_slots": GaugeMetricFamily(f"{PREFIX}_inventory_free_slots",
                                            "Slots or devices a new plan could take now: free, minus what planned "
                                            "groups still need.", labels=["product", "sharing"]),
            "reserved_slots": GaugeMetricFamily(f"{PREFIX}_inventory_reserved_slots",
                                                "Slots or devices promised to planned groups whose pods or "
                                                "claims are not bound yet.", labels=["product", "sharing"]),
            "free_memory_bytes": GaugeMetricFamily(f"{PREFIX}_inventory_free_memory_bytes",
                                                   "GPU memory behind the free slots (each slot's share of its GPU).",
                                                   labels=["product", "sharing"]),
        }
        inventory: Inventory | None = self._read()
        if inventory is not None:
            for (product, sharing), totals in inventory_totals(inventory).items():
                for field, family in families.items():
                    family.add_metric([product, sharing], float(getattr(totals, field)))
        return list(families.values())


_INVENTORY: Final = _InventoryGauges()
REGISTRY.register(_INVENTORY)


def watch_inventory(source: Callable[[], Inventory] | None) -> None:
    """Scrapes build the inventory gauges with ``source`` (``None``: no inventory gauges)."""
    _INVENTORY.source = source


# --- The endpoint ---------------------------------------------------------------------------------

def serve(*, port: int, addr: str = "0.0.0.0") -> Callable[[], None]:
    """Serve ``/metrics`` (any path answers) on ``addr:port`` in a daemon thread; returns a stop function."""
    server, thread = start_http_server(port, addr=addr, registry=REGISTRY)
    logger.info("metrics on http://%s:%d/metrics", addr, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return stop


#: Every metric family this module exposes (``_total``, ``_bucket``... are samples of these).
METRIC_NAMES: Final = (
    f"{PREFIX}_build_info",
    f"{PREFIX}_reconcile_duration_seconds",
    f"{PREFIX}_profile_runs_total",
    f"{PREFIX}_profile_duration_seconds",
    f"{PREFIX}_profile_cache_lookups_total",
    f"{PREFIX}_api_requests_total",
    f"{PREFIX}_api_errors_total",
    f"{PREFIX}_service_phase",
    f"{PREFIX}_service_planned_tokens_per_second",
    f"{PREFIX}_service_batch_size",
    f"{PREFIX}_services",
    f"{PREFIX}_placed_gpus",
    f"{PREFIX}_inventory_gpus",
    f"{PREFIX}_inventory_slots",
    f"{PREFIX}_inventory_free_slots",
    f"{PREFIX}_inventory_reserved_slots",
    f"{PREFIX}_inventory_free_memory_bytes",
)
