"""GPU datasheet numbers the estimator needs, looked up by the names Kubernetes nodes publish.

NVIDIA GPU feature discovery labels a node with ``nvidia.com/gpu.product``: the CUDA device name
with spaces turned into dashes (``NVIDIA-H100-80GB-HBM3``, ``NVIDIA-A100-SXM4-80GB``,
``Tesla-T4``), plus ``-SHARED`` when time-slicing/MPS renames the resource, or ``-MIG-...`` for a
MIG slice. :func:`lookup_gpu` accepts those names and short aliases (``H100-SXM``, ``A100-80GB``,
``L4``), case-insensitively.

Numbers are vendor datasheet values: memory as the device exposes it (GiB), peak HBM/GDDR
bandwidth (GB/s, 10^9 bytes/s) and dense (no sparsity) bf16 tensor TFLOP/s (fp16 on the T4, which
has no bf16). Where a number is not a datasheet value, ``note`` says where it comes from.

What decoding actually gets is the *effective* bandwidth: the peak times one efficiency factor
per memory technology (:data:`MEMORY_EFFICIENCY`), the share of the peak that large streaming
reads (weight GEMVs, paged-attention KV reads) reach. It is a GPU constant; the estimator's engine
constants (per-step and per-layer overheads) are calibrated separately
(:mod:`~slm_operator.profiling.estimator`). Side-effect free; no I/O.
"""

from __future__ import annotations

import dataclasses
import re

from slm_operator.errors import UnknownGpuError

__all__ = ["GpuSpec", "lookup_gpu", "known_gpu_names", "GPUS", "MEMORY_EFFICIENCY"]


#: Achieved share of the peak bandwidth by large streaming reads, per memory technology. One value
#: for all: STREAM-like kernels reach 80-90% of the peak on HBM2 (A100 40 GB), HBM2e, HBM3 (H100)
#: and GDDR6 alike, and we have no measurement that tells the technologies apart. 0.80 is the
#: prior; two public vLLM batch-1 decode measurements of one 8B model on an A100 40 GB (HBM2) and
#: an H100 80 GB (HBM3) agree with it (tests/unit/profiling/data/public_vllm.json, docs/profiling.md).
MEMORY_EFFICIENCY: dict[str, float] = {"HBM2": 0.80, "HBM2e": 0.80, "HBM3": 0.80, "HBM3e": 0.80, "GDDR6": 0.80}


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """One GPU model's capacity, as far as LLM decoding cares."""

    name: str
    memory_gib: float
    #: Peak memory bandwidth (GB/s) of the datasheet (or, where ``note`` says so, derived).
    hbm_bandwidth_gbs: float
    bf16_tflops: float
    #: Memory technology, the key of :data:`MEMORY_EFFICIENCY`.
    memory_type: str = "HBM3"
    #: Product names as GPU feature discovery publishes them (``nvidia.com/gpu.product``).
    product_names: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    #: Where a number is not a published datasheet value, this says so.
    note: str = ""

    @property
    def bandwidth_bytes_s(self) -> float:
        """Peak (datasheet) bandwidth, bytes/s: the HBM roofline."""
        return self.hbm_bandwidth_gbs * 1e9

    @property
    def memory_efficiency(self) -> float:
        return MEMORY_EFFICIENCY[self.memory_type]

    @property
    def effective_bandwidth_bytes_s(self) -> float:
        """What decode kernels get: the peak times the memory technology's efficiency."""
        return self.memory_efficiency * self.bandwidth_bytes_s

    @property
    def flops(self) -> float:
        return self.bf16_tflops * 1e12

    def with_memory(self, memory_gib: float | None) -> GpuSpec:
        """The same GPU with another usable memory size (MIG slice, MPS limit, or a correction)."""
        if memory_gib is None:
            return self
        if not memory_gib > 0:
            raise ValueError(f"GPU memory override must be > 0 GiB, got {memory_gib!r}")
        return dataclasses.replace(self, memory_gib=float(memory_gib))


GPUS: tuple[GpuSpec, ...] = (
    GpuSpec(
        "A100-SXM4-40GB", 40.0, 1555, 312, "HBM2",
        product_names=("NVIDIA-A100-SXM4-40GB",),
        aliases=("A100-40GB", "A100-SXM-40GB", "A100"),
    ),
    GpuSpec(
        "A100-PCIE-40GB", 40.0, 1555, 312, "HBM2",
        product_names=("NVIDIA-A100-PCIE-40GB", "NVIDIA-A100-PCIe-40GB"),
        aliases=("A100-PCIE",),
    ),
    GpuSpec(
        "A100-SXM4-80GB", 80.0, 2039, 312, "HBM2e",
        product_names=("NVIDIA-A100-SXM4-80GB",),
        aliases=("A100-80GB", "A100-SXM-80GB"),
    ),
    GpuSpec(
        "A100-PCIE-80GB", 80.0, 1935, 312, "HBM2e",
        product_names=("NVIDIA-A100-80GB-PCIe", "NVIDIA-A100-PCIE-80GB"),
        aliases=("A100-80GB-PCIE",),
    ),
    GpuSpec(
        "H100-PCIE", 79.6, 2000, 756, "HBM2e",
        product_names=("NVIDIA-H100-PCIe", "NVIDIA-H100-80GB-PCIe"),
        aliases=("H100-PCIE-80GB",),
    ),
    GpuSpec(
        "H100-SXM5-80GB", 79.6, 3350, 989, "HBM3",
        product_names=("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-SXM5-80GB"),
        aliases=("H100-SXM", "H100-80GB", "H100"),
    ),
    GpuSpec(
        "H100-SXM5-64GB", 63.43, 2039, 989, "HBM2e",
        product_names=("NVIDIA-H100-64GB-HBM2e", "NVIDIA-H100-64GB"),
        aliases=("H100-64GB",),
        note=(
            "the 64 GB HBM2e H100 of the reference measurements (MareNostrum 5); no public datasheet gives "
            "its bandwidth. 2,039 GB/s is the HBM2e H100 interface rate (H100 PCIe: 5,120-bit HBM2e at "
            "3.19 Gb/s): with the HBM efficiency it gives 1.63 TB/s effective, where the OPT-1.3B reference "
            "curves put it (docs/profiling.md); the former 2,680 GB/s (4 of 5 HBM3 stacks) was a guess"
        ),
    ),
    GpuSpec(
        "H100-NVL", 93.6, 3900, 835, "HBM3",
        product_names=("NVIDIA-H100-NVL",),
        aliases=("H100-NVL-94GB",),
    ),
    GpuSpec(
        "H200", 140.4, 4800, 989, "HBM3e",
        product_names=("NVIDIA-H200", "NVIDIA-H200-141GB-HBM3e"),
        aliases=("H200-SXM", "H200-141GB"),
    ),
    GpuSpec(
        "L4", 22.5, 300, 121, "GDDR6",
        product_names=("NVIDIA-L4",),
    ),
    GpuSpec(
        "L40S", 45.0, 864, 362, "GDDR6",
        product_names=("NVIDIA-L40S",),
    ),
    GpuSpec(
        "A10G", 22.5, 600, 70, "GDDR6",
        product_names=("NVIDIA-A10G",),
        note="AWS-specific A10 variant; bf16 rate approximate",
    ),
    GpuSpec(
        "T4", 15.0, 320, 65, "GDDR6",
        product_names=("Tesla-T4", "NVIDIA-T4"),
        aliases=("Tesla-T4",),
        note="no bf16: fp16 tensor rate",
    ),
)

#: Names that do not say which H100 memory size they mean (the CUDA device name of the 64 GB SXM part
#: is plain "NVIDIA H100"): with a memory size below :data:`_H100_64GB_BELOW_GIB` they resolve to
#: the 64 GB HBM2e part, otherwise to the 80 GB HBM3 one.
_GENERIC_H100 = {"h100", "nvidia-h100"}
_H100_64GB_BELOW_GIB = 70.0

# NB: GFD appends these to the product label; they do not change the silicon.
_SUFFIXES = re.compile(r"-(shared|mig-.*)$")


def _key(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip()).lower()


def _index() -> dict[str, GpuSpec]:
    index: dict[str, GpuSpec] = {}
    for spec in GPUS:
        for name in (spec.name, *spec.product_names, *spec.aliases):
            key = _key(name)
            for candidate in {key, key.removeprefix("nvidia-")}:
                if candidate in index and index[candidate] is not spec:
                    raise AssertionError(f"GPU name {name!r} is ambiguous in the table")
                index[candidate] = spec
    return index


_INDEX = _index()


def known_gpu_names() -> list[str]:
    """The product names GPU feature discovery publishes, then the short aliases."""
    products = [p for spec in GPUS for p in spec.product_names[:1]]
    return products + [spec.name for spec in GPUS]


def lookup_gpu(name: str, *, memory_gib: float | None = None) -> GpuSpec:
    """Find a GPU by product label or alias; ``memory_gib`` overrides its memory (e.g. a MIG slice).

    A bare ``H100`` / ``NVIDIA-H100`` with less than 70 GiB of memory is the 64 GB HBM2e part (its
    bandwidth is not the 80 GB HBM3 part's); an explicit 80 GB name keeps its bandwidth whatever
    the memory override says (a MIG slice or an MPS limit does not change the silicon).

    Raises :class:`~slm_operator.errors.UnknownGpuError` (a ``ValueError``) naming the known GPUs
    and the two ways out when nothing matches.
    Side-effect free.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownGpuError(f"GPU name must be a non-empty string, got {name!r}; {_help()}")
    key = _SUFFIXES.sub("", _key(name))
    if key in _GENERIC_H100 and memory_gib is not None and memory_gib < _H100_64GB_BELOW_GIB:
        key = "h100-64gb"
    spec = _INDEX.get(key) or _INDEX.get(key.removeprefix("nvidia-")) or _INDEX.get(key.removeprefix("tesla-"))
    if spec is None:
        raise UnknownGpuError(f"unknown GPU {name!r}; {_help()}")
    return spec.with_memory(memory_gib)


def _help() -> str:
    return (
        f"known GPUs: {', '.join(known_gpu_names())}. Set spec.gpu (or --gpu) to one of these; "
        "for another GPU give the closest known name and its memory with --gpu-memory-gib N, "
        "or measure on the real GPU instead of estimating"
    )
