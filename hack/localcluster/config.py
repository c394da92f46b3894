"""The declarative simulated-GPU-node config (``hack/gpu-nodes.yaml``) and the objects it implies.

Everything here is side-effect free: :func:`parse_config` validates a loaded YAML document and
:func:`node_manifest` / :func:`dra_manifests` turn the result into Kubernetes objects. Validation
is strict and happens before any process starts, so a typo fails with the offending key, the keys
allowed there and the file, instead of silently producing a node without GPUs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from slm_operator.constants import (
    DRA_CAPACITY_MEMORY,
    DRA_CAPACITY_SHARES,
    DRA_DEVICE_CLASS,
    DRA_DRIVER,
    GPU_RESOURCE,
    LABEL_GPU_COUNT,
    LABEL_GPU_MEMORY_MIB,
    LABEL_GPU_PRESENT,
    LABEL_GPU_PRODUCT,
    LABEL_GPU_REPLICAS,
    LABEL_GPU_SHARING,
    POOL_SHARINGS,
)

#: Which nodes KWOK manages: the KWOK convention, so `kwok` leaves real (kind) nodes alone.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

#: Our own convention for nodes whose GPUs are published through DRA instead of the device plugin.
DRA_PRESENT_LABEL = "nvidia.com/dra.present"

_TOP_KEYS = ("defaults", "nodes")
_RESOURCE_KEYS = ("cpu", "memory", "pods", "ephemeralStorage")
_NODE_KEYS = ("name", "gpu", "labels", *_RESOURCE_KEYS)
_GPU_KEYS = ("product", "memoryMiB", "count", "sharing", "replicas", "shares", "capacities")
#: The DRA sharings: no device-plugin capacity, a ResourceSlice instead.
_DRA_SHARINGS = ("dra", "dra-shares")
#: What a ``dra-shares`` GPU may publish: ``memory`` always, ``shares`` with an integer share count.
_SHARED_CAPACITIES = (DRA_CAPACITY_MEMORY, DRA_CAPACITY_SHARES)
#: Shares per GPU when ``shares`` is not given: divisible by 1-6 and 8, so a replica's share 1/k of a
#: GPU is exact for every k up to 8 but 7 (with N=100, three replicas of 34 shares would not fit).
DEFAULT_SHARES = 120

_BUILTIN_DEFAULTS = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeralStorage": "1Ti"}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


class ConfigError(ValueError):
    """The node config is invalid; the message names the field, what is wrong and the fix."""


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """The simulated GPUs of one node."""

    product: str
    memory_mib: int
    count: int
    sharing: str
    replicas: int
    #: ``dra-shares`` only: shares per GPU (``None``: the driver publishes memory only).
    shares: int | None = None

    @property
    def advertised(self) -> int:
        """How many ``nvidia.com/gpu`` the device plugin would advertise (0 for DRA nodes)."""
        return 0 if self.sharing in _DRA_SHARINGS else self.count * self.replicas


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """One simulated node."""

    name: str
    cpu: str
    memory: str
    pods: str
    ephemeral_storage: str
    labels: Mapping[str, str]
    gpu: GpuSpec | None


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """The whole node config, validated."""

    nodes: tuple[NodeSpec, ...]

    @property
    def dra_nodes(self) -> tuple[NodeSpec, ...]:
        """Nodes whose GPUs are published as ResourceSlices (``dra`` and ``dra-shares``)."""
        return tuple(n for n in self.nodes if n.gpu is not None and n.gpu.sharing in _DRA_SHARINGS)


def load_config(*, path: str | Path) -> ClusterConfig:
    """Read and validate a node config file. Raises :class:`ConfigError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the node config: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_config(data=data, source=str(path))


def parse_config(*, data: Any, source: str = "<config>") -> ClusterConfig:
    """Validate a loaded YAML document. Side-effect free; raises :class:`ConfigError`."""
    where = _Where(source)
    top = where.mapping(data, "", _TOP_KEYS)
    defaults = dict(_BUILTIN_DEFAULTS)
    if "defaults" in top:
        given = where.mapping(top["defaults"], "defaults", _RESOURCE_KEYS)
        for key, value in given.items():
            defaults[key] = where.quantity(value, f"defaults.{key}")
    raw_nodes = top.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise where.error("nodes", "must be a non-empty list of nodes (each with at least `name`)")
    nodes: list[NodeSpec] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_nodes):
        node = _parse_node(where, raw, f"nodes[{index}]", defaults)
        if node.name in seen:
            raise where.error(f"nodes[{index}].name", f"duplicate node name {node.name!r}; names must be unique")
        seen.add(node.name)
        nodes.append(node)
    return ClusterConfig(nodes=tuple(nodes))


def _parse_node(where: _Where, raw: Any, at: str, defaults: Mapping[str, str]) -> NodeSpec:
    fields = where.mapping(raw, at, _NODE_KEYS)
    name = fields.get("name")
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > 63:
        raise where.error(f"{at}.name",
                          f"{name!r} is not a valid node name: use lower-case letters, digits and '-' (at most 63)")
    resources = {key: where.quantity(fields[key], f"{at}.{key}") if key in fields else defaults[key]
                 for key in _RESOURCE_KEYS}
    labels = {}
    if "labels" in fields:
        raw_labels = fields["labels"]
        if not isinstance(raw_labels, dict):
            raise where.error(f"{at}.labels", "must be a mapping of label key to string value")
        for key, value in raw_labels.items():
            if not isinstance(key, str) or not _LABEL_KEY.match(key):
                raise where.error(f"{at}.labels", f"{key!r} is not a valid label key")
            if key.startswith("nvidia.com/"):
                # NB: these are derived from `gpu`; a hand-written one could contradict the capacity.
                raise where.error(f"{at}.labels.{key}", "nvidia.com/ labels are derived from `gpu`; set gpu.* instead")
            if not isinstance(value, str) or not _LABEL_VALUE.match(value) or len(value) > 63:
                raise where.error(f"{at}.labels.{key}",
                                  f"{value!r} is not a valid label value (quote numbers and booleans)")
            labels[key] = value
    gpu = _parse_gpu(where, fields["gpu"], f"{at}.gpu") if "gpu" in fields else None
    return NodeSpec(
        name=name,
        cpu=resources["cpu"],
        memory=resources["memory"],
        pods=resources["pods"],
        ephemeral_storage=resources["ephemeralStorage"],
        labels=labels,
        gpu=gpu,
    )


def _parse_gpu(where: _Where, raw: Any, at: str) -> GpuSpec:
    fields = where.mapping(raw, at, _GPU_KEYS)
    for required in ("product", "memoryMiB", "count", "sharing"):
        if required not in fields:
            raise where.error(f"{at}.{required}", f"is required (a gpu block needs {', '.join(_GPU_KEYS[:4])})")
    product = fields["product"]
    if not isinstance(product, str) or not product or not _LABEL_VALUE.match(product) or len(product) > 63:
        raise where.error(f"{at}.product", f"{product!r} must be a label-safe product name like NVIDIA-H100-80GB-HBM3")
    memory_mib = where.positive_int(fields["memoryMiB"], f"{at}.memoryMiB")
    count = where.positive_int(fields["count"], f"{at}.count")
    sharing = fields["sharing"]
    # NB: a node's `sharing` is one of the operator's pool sharings: none, mps and time-slicing mimic
    # the NVIDIA device plugin (`nvidia.com/gpu` extended resource), dra its DRA driver (ResourceSlices).
    if sharing not in POOL_SHARINGS:
        raise where.error(f"{at}.sharing",
                          f"{sharing!r} is not a sharing mode; use one of: {', '.join(POOL_SHARINGS)}")
    replicas = where.positive_int(fields.get("replicas", 1), f"{at}.replicas")
    if sharing in ("none", *_DRA_SHARINGS) and replicas != 1:
        raise where.error(
            f"{at}.replicas",
            f"must be 1 (or omitted) with sharing {sharing!r}; replicas only apply to mps and time-slicing",
        )
    if sharing in ("mps", "time-slicing") and "replicas" not in fields:
        raise where.error(f"{at}.replicas", f"is required with sharing {sharing!r} (how many clients share one GPU)")
    shares = _parse_shares(where, fields, at) if sharing == "dra-shares" else None
    if sharing != "dra-shares":
        for key in ("shares", "capacities"):
            if key in fields:
                raise where.error(f"{at}.{key}", f"only applies to sharing dra-shares, not {sharing!r}; remove it")
    return GpuSpec(product=product, memory_mib=memory_mib, count=count, sharing=sharing, replicas=replicas,
                   shares=shares)


def _parse_shares(where: _Where, fields: Mapping[str, Any], at: str) -> int | None:
    """Shares per GPU of a ``dra-shares`` node, or ``None`` when it publishes memory only."""
    capacities = fields.get("capacities", list(_SHARED_CAPACITIES))
    if (not isinstance(capacities, list) or not capacities or len(set(capacities)) != len(capacities)
            or any(c not in _SHARED_CAPACITIES for c in capacities) or DRA_CAPACITY_MEMORY not in capacities):
        raise where.error(f"{at}.capacities", f"{capacities!r} must be [memory] (a driver run with "
                          "--consumable-shares=memory) or [memory, shares] (--consumable-shares=N)")
    if DRA_CAPACITY_SHARES not in capacities:
        if "shares" in fields:
            raise where.error(f"{at}.shares", "needs `shares` in gpu.capacities; remove it for a memory-only GPU")
        return None
    return where.positive_int(fields.get("shares", DEFAULT_SHARES), f"{at}.shares")


class _Where:
    """Builds errors that name the source file and the dotted path of the bad field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, at: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {at or 'top level'}: {problem}")

    def mapping(self, value: Any, at: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(at, f"must be a mapping with keys from: {', '.join(allowed)}")
        unknown = [key for key in value if key not in allowed]
        if unknown:
            prefix = f"{at}." if at else ""
            raise self.error(f"{prefix}{unknown[0]}",
                             f"unknown key {unknown[0]!r}; allowed keys here: {', '.join(allowed)}")
        return value

    def quantity(self, value: Any, at: str) -> str:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not _QUANTITY.match(text):
            raise self.error(at, f"{value!r} is not a Kubernetes quantity like 64, 500m or 512Gi")
        return text

    def positive_int(self, value: Any, at: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(at, f"{value!r} must be a positive integer")
        return value


def node_labels(*, node: NodeSpec) -> dict[str, str]:
    """The labels a node carries: Kubernetes' own, the GPU feature labels, then the user's."""
    labels = {
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    }
    gpu = node.gpu
    if gpu is not None:
        labels.update(
            {
                LABEL_GPU_PRODUCT: gpu.product,
                LABEL_GPU_MEMORY_MIB: str(gpu.memory_mib),
                LABEL_GPU_COUNT: str(gpu.count),
            }
        )
        if gpu.sharing in _DRA_SHARINGS:
            # NB: no gpu.present here, so device-plugin workloads selecting on it never land on a
            # node that has no `nvidia.com/gpu` capacity.
            labels[DRA_PRESENT_LABEL] = "true"
        else:
            labels.update(
                {
                    LABEL_GPU_PRESENT: "true",
                    LABEL_GPU_REPLICAS: str(gpu.replicas),
                    LABEL_GPU_SHARING: gpu.sharing,
                    "nvidia.com/mps.capable": "true" if gpu.sharing == "mps" else "false",
                }
            )
    labels.update(node.labels)
    return labels


def node_manifest(*, node: NodeSpec, index: int) -> dict[str, Any]:
    """The Node object to create, status included (the API server keeps status on Node create).

    ``index`` (the node's place in the config) gives it its own InternalIP, 10.0.<i/250>.<i%250+2>.
    """
    resources = {
        "cpu": node.cpu,
        "memory": node.memory,
        "pods": node.pods,
        "ephemeral-storage": node.ephemeral_storage,
    }
    if node.gpu is not None and node.gpu.advertised:
        resources[GPU_RESOURCE] = str(node.gpu.advertised)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": node_labels(node=node),
            "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "addresses": [
                {"type": "InternalIP", "address": f"10.0.{index // 250}.{index % 250 + 2}"},
                {"type": "Hostname", "address": node.name},
            ],
        },
    }


def dra_manifests(*, config: ClusterConfig) -> list[dict[str, Any]]:
    """The DeviceClass and one ResourceSlice per DRA node, as the NVIDIA DRA driver would publish.

    ``dra-shares`` devices are published as the driver does with ``--consumable-shares``
    (kubernetes-sigs/dra-driver-nvidia-gpu, gpu-kubelet-plugin): ``allowMultipleAllocations: true``,
    and a ``requestPolicy`` on each consumable capacity.
    """
    if not config.dra_nodes:
        return []
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": DRA_DEVICE_CLASS},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRA_DRIVER}"'}}]},
        }
    ]
    for node in config.dra_nodes:
        assert node.gpu is not None  # NB: dra_nodes only holds nodes with a gpu block.
        devices = [
            {
                "name": f"gpu-{index}",
                "attributes": {
                    "productName": {"string": node.gpu.product},
                    "type": {"string": "gpu"},
                    "index": {"int": index},
                },
                "capacity": {DRA_CAPACITY_MEMORY: {"value": f"{node.gpu.memory_mib}Mi"}},
            }
            | (_consumable(node.gpu) if node.gpu.sharing == "dra-shares" else {})
            for index in range(node.gpu.count)
        ]
        objects.append(
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceSlice",
                "metadata": {"name": f"{node.name}-{DRA_DRIVER}"},
                "spec": {
                    "driver": DRA_DRIVER,
                    "nodeName": node.name,
                    "pool": {"name": node.name, "generation": 1, "resourceSliceCount": 1},
                    "devices": devices,
                },
            }
        )
    return objects


def _consumable(gpu: GpuSpec) -> dict[str, Any]:
    """A shared device's fields, as NVIDIA's driver publishes them with ``--consumable-shares``.

    ``--consumable-shares=N`` (``shares`` given): memory any amount in 1Mi steps, 0 by default (a
    claim that asks none takes none), and N ``shares`` of which a claim takes 1 unless it asks more.
    ``--consumable-shares=memory`` (``capacities: [memory]``): memory only, the whole GPU by default,
    so a claim that asks no memory takes the device alone.
    """
    memory = f"{gpu.memory_mib}Mi"
    if gpu.shares is None:
        memory_policy = {"default": memory, "validRange": {"min": "1Mi", "max": memory, "step": "1Mi"}}
        return {"allowMultipleAllocations": True,
                "capacity": {DRA_CAPACITY_MEMORY: {"value": memory, "requestPolicy": memory_policy}}}
    shares = str(gpu.shares)
    return {"allowMultipleAllocations": True, "capacity": {
        DRA_CAPACITY_MEMORY: {"value": memory, "requestPolicy": {
            "default": "0", "validRange": {"min": "0", "max": memory, "step": "1Mi"}}},
        DRA_CAPACITY_SHARES: {"value": shares, "requestPolicy": {
            "default": "1", "validRange": {"min": "1", "max": shares, "step": "1"}}},
    }}
