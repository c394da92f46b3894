"""The fleet benchmark's workload: consumable-GPU nodes and SLMServices sized by throughput targets.

Pure and deterministic (bench/README.md, "bench/fleet.py"): :func:`node_config` is a
``hack/gpu-nodes.yaml`` document whose GPUs are all published as consumable DRA devices
(``sharing: dra-shares``); :func:`service_manifests` draws each service's target from a
heavy-tailed distribution, in fractions of one GPU's plateau, so most services need well under
half a GPU and a few need several. The model classes and their static profiles are the scale
benchmark's (``bench/scale_workload.py``) plus one whose k* is 3.
"""

from __future__ import annotations

import math
import random
from typing import Any

from bench.scale_workload import (
    H100,
    L4,
    LABEL_SIZE,
    MEMORY_MIB,
    SIZE_CLASSES,
    SizeClass,
    apportion,
    service_manifest,
    static_profile,
)

#: Node kinds: (name prefix, share of the nodes, product). Every GPU is a consumable DRA device.
NODE_MIX: tuple[tuple[str, float, str], ...] = (("h100-shares", 0.8, H100), ("l4-shares", 0.2, L4))
SHARING = "dra-shares"
#: A service's target, as a fraction of one GPU's plateau (the class's ``tokensPerSecondPerGPU``):
#: log-normal with this median and log-sd, clipped. NB: with median 0.15 and sd 1.0, 88 % of the
#: services need less than half a GPU, 3 % more than one, the largest a few GPUs: the shape of
#: a fleet of fine-tunes and small chat models with modest traffic and a few popular ones.
TARGET_MEDIAN_GPU = 0.15
TARGET_LOG_SD = 1.0
TARGET_CLIP_GPU = (0.02, 4.0)
#: The scale benchmark's five classes and a sixth whose k* is 3. NB: with k* in {1, 2, 4} alone every
#: share (120, 60, 30 of 120) divides the larger ones and any first fit packs perfectly; a third of a
#: GPU (40 shares) beside quarters and halves is where GPUs fragment.
FLEET_CLASSES = (*SIZE_CLASSES, SizeClass("mid-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", 0.15,
                                          {H100: (96, 3, 14.0, 15000.0), L4: (48, 1, 10.0, 3000.0)}, l4_share=0.1))
#: On each SLMService: the target's fraction of one GPU, for the report.
ANNOTATION_TARGET_GPU = "bench.slm.pareto.dev/target-gpu-fraction"


def node_config(*, nodes: int, gpus_per_node: int) -> dict[str, Any]:
    """The hack/cluster.py node config of the fleet benchmark (format: hack/gpu-nodes.yaml)."""
    entries = []
    counts = apportion(total=nodes, shares=[kind[1] for kind in NODE_MIX])
    for (prefix, _, product), count in zip(NODE_MIX, counts, strict=True):
        for i in range(count):
            entries.append({"name": f"{prefix}-{i:03d}", "gpu": {
                "product": product, "memoryMiB": MEMORY_MIB[product], "count": gpus_per_node, "sharing": SHARING}})
    return {"defaults": {"cpu": "64", "memory": "512Gi", "pods": "110"}, "nodes": entries}


def target_fraction(*, rng: random.Random) -> float:
    """One draw of a service's target in fractions of one GPU's plateau."""
    low, high = TARGET_CLIP_GPU
    return min(high, max(low, math.exp(rng.gauss(math.log(TARGET_MEDIAN_GPU), TARGET_LOG_SD))))


def service_manifests(*, services: int, namespaces: int, seed: int) -> list[dict[str, Any]]:
    """``services`` SLMServices with static profiles and throughput targets; deterministic."""
    rng = random.Random(seed)
    manifests = []
    for i in range(services):
        size = rng.choices(FLEET_CLASSES, weights=[c.share for c in FLEET_CLASSES])[0]
        product = L4 if L4 in size.profiles and rng.random() < size.l4_share else H100
        batch, k, memory, tps = size.profiles[product]
        fraction = target_fraction(rng=rng)
        # NB: every class shares GPUs here, the 7B one too (one replica is a whole GPU's share).
        manifest = service_manifest(
            name=f"svc-{i:05d}", namespace=f"fleet-{i % namespaces}", model=size.model, product=product,
            sharing="auto", gpus=1, labels={LABEL_SIZE: size.name},
            profiling=static_profile(batch=batch, k=k, memory_gib=memory, tokens_per_second=tps))
        manifest["metadata"]["annotations"] = {ANNOTATION_TARGET_GPU: f"{fraction:.4f}"}
        manifest["spec"]["scale"] = {"targetTokensPerSecond": round(fraction * tps, 1)}
        manifests.append(manifest)
    return manifests

