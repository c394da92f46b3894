"""The scale benchmark's workload: the simulated node mix and the SLMService mix (bench/README.md).

Pure and deterministic: :func:`node_config` is a ``hack/gpu-nodes.yaml`` document,
:func:`service_manifests` the SLMServices with static profiles, from a seed.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from slm_operator.constants import API_VERSION, GROUP, KIND

H100, L4 = "NVIDIA-H100-80GB-HBM3", "NVIDIA-L4"
#: ``nvidia.com/gpu.memory`` of each product, as GPU feature discovery reports it.
MEMORY_MIB = {H100: 81559, L4: 23034}
#: Every service's workload: tokens in and out per request.
WORKLOAD = {"inputTokens": 512, "outputTokens": 256}
#: On each SLMService: its size class.
LABEL_SIZE = f"bench.{GROUP}/size"

#: Node kinds: (name prefix, share of the nodes, product, sharing, device-plugin replicas).
#: "Mostly MPS x4 and time-slicing x4, some DRA, a few exclusive", H100-80GB and L4.
NODE_MIX: tuple[tuple[str, float, str, str, int], ...] = (
    ("h100-mps", 0.40, H100, "mps", 4),
    ("h100-ts", 0.25, H100, "time-slicing", 4),
    ("h100-dra", 0.10, H100, "dra", 1),
    ("h100-excl", 0.10, H100, "none", 1),
    ("l4-mps", 0.10, L4, "mps", 2),
    ("l4-excl", 0.05, L4, "none", 1),
)


@dataclasses.dataclass(frozen=True)
class SizeClass:
    """One kind of model with the static profile its services carry (per GPU product)."""

    name: str
    model: str
    share: float
    #: GPU product -> (batchSize, replicasPerGPU, memoryPerReplicaGiB, tokensPerSecondPerGPU)
    profiles: dict[str, tuple[int, int, float, float]]
    #: Share of this class's services that ask for an L4 instead of an H100.
    l4_share: float = 0.0
    sharing: str = "auto"


#: NB: memoryPerReplicaGiB is what one replica needs at B* (weights + KV cache for B* sequences +
#: runtime overhead); replicasPerGPU is the profile's k*, where throughput stops growing.
SIZE_CLASSES = (
    SizeClass("tiny-125m", "facebook/opt-125m", 0.30,
              {H100: (256, 4, 6.0, 40000.0), L4: (128, 2, 6.0, 9000.0)}, l4_share=0.25),
    SizeClass("small-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 0.25,
              {H100: (128, 4, 12.0, 24000.0), L4: (64, 2, 8.0, 5000.0)}, l4_share=0.2),
    SizeClass("medium-1.3b", "facebook/opt-1.3b", 0.22, {H100: (64, 2, 20.0, 12000.0)}),
    SizeClass("large-3b", "Qwen/Qwen2.5-3B-Instruct", 0.15, {H100: (48, 2, 30.0, 7000.0)}),
    SizeClass("xl-7b", "Qwen/Qwen2.5-7B-Instruct", 0.08, {H100: (32, 1, 40.0, 3500.0)}, sharing="exclusive"),
)
#: scale.gpus 1-3: (gpus, share of the services).
SCALE_MIX = ((1, 0.65), (2, 0.25), (3, 0.10))


def apportion(*, total: int, shares: list[float]) -> list[int]:
    """Split ``total`` by ``shares`` (largest remainder), so counts always sum to ``total``."""
    raw = [total * s / sum(shares) for s in shares]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: total - sum(counts)]:
        counts[i] += 1
    return counts


#: ``node_config(sharing=...)``: the mixed fleet above, or every node of one pool sharing (H100s).
NODE_SHARINGS = ("mix", "none", "mps", "time-slicing", "dra", "dra-shares")


def node_config(*, nodes: int, gpus_per_node: int, sharing: str = "mix", shares: int | None = None,
                capacities: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The hack/cluster.py node config of the benchmark (format: hack/gpu-nodes.yaml).

    ``sharing``: ``mix`` (``NODE_MIX``) or one pool sharing for every node, all H100s; with
    ``dra-shares``, ``shares`` (per GPU) and ``capacities`` (``("memory",)``: a driver exposing
    memory only) go into each node's ``gpu`` block as given (the format's defaults otherwise).
    """
    if sharing not in NODE_SHARINGS:
        raise ValueError(f"sharing {sharing!r}: use one of {', '.join(NODE_SHARINGS)}")
    kinds = NODE_MIX if sharing == "mix" else ((f"h100-{sharing}", 1.0, H100, sharing, 4),)
    entries = []
    counts = apportion(total=nodes, shares=[kind[1] for kind in kinds])
    for (prefix, _, product, pool, replicas), count in zip(kinds, counts, strict=True):
        for i in range(count):
            gpu: dict[str, Any] = {"product": product, "memoryMiB": MEMORY_MIB[product], "count": gpus_per_node,
                                   "sharing": pool}
            if pool in ("mps", "time-slicing"):
                gpu["replicas"] = replicas
            if pool == "dra-shares":
                gpu |= ({"shares": shares} if shares is not None else {}) | (
                    {"capacities": list(capacities)} if capacities is not None else {})
            entries.append({"name": f"{prefix}-{i:03d}", "gpu": gpu})
    return {"defaults": {"cpu": "64", "memory": "512Gi", "pods": "110"}, "nodes": entries}


def static_profile(*, batch: int, k: int, memory_gib: float, tokens_per_second: float) -> dict[str, Any]:
    """``spec.profiling`` of a service with a static profile."""
    return {"mode": "static", "static": {"batchSize": batch, "replicasPerGPU": k, "memoryPerReplicaGiB": memory_gib,
                                         "tokensPerSecondPerGPU": tokens_per_second}}


def service_manifest(*, name: str, namespace: str, model: str, product: str, sharing: str, gpus: int,
                     profiling: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """One SLMService of the benchmark: the fixed workload, a product, ``gpus`` GPUs."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = labels
    return {
        "apiVersion": f"{GROUP}/{API_VERSION}", "kind": KIND, "metadata": metadata,
        "spec": {
            "model": model,
            "gpu": {"product": product, "sharing": sharing},
            "workload": dict(WORKLOAD),
            "profiling": profiling,
            "scale": {"gpus": gpus},
        },
    }


def service_manifests(*, services: int, namespaces: int, seed: int) -> list[dict[str, Any]]:
    """``services`` SLMServices with static profiles, spread over ``namespaces``; deterministic."""
    rng = random.Random(seed)
    manifests = []
    for i in range(services):
        size = rng.choices(SIZE_CLASSES, weights=[c.share for c in SIZE_CLASSES])[0]
        product = L4 if L4 in size.profiles and rng.random() < size.l4_share else H100
        batch, k, memory, tps = size.profiles[product]
        gpus = rng.choices([g for g, _ in SCALE_MIX], weights=[w for _, w in SCALE_MIX])[0]
        manifests.append(service_manifest(
            name=f"svc-{i:05d}", namespace=f"bench-{i % namespaces}", model=size.model, product=product,
            sharing=size.sharing, gpus=gpus, labels={LABEL_SIZE: size.name},
            profiling=static_profile(batch=batch, k=k, memory_gib=memory, tokens_per_second=tps)))
    return manifests


def probe_manifest(*, name: str, namespace: str) -> dict[str, Any]:
    """The start-up curve's probe: the tiny class on one MPS-shared H100."""
    batch, k, memory, tps = SIZE_CLASSES[0].profiles[H100]
    return service_manifest(name=name, namespace=namespace, model=SIZE_CLASSES[0].model, product=H100,
                            sharing="mps", gpus=1,
                            profiling=static_profile(batch=batch, k=k, memory_gib=memory, tokens_per_second=tps))
