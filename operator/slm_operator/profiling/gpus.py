"""GPU datasheet numbers the estimator needs, looked up by the names Kubernetes nodes publish.

NVIDIA GPU feature discovery labels a node with ``nvidia.com/gpu.product``: the CUDA device name
with spaces turned into dashes (``NVIDIA-H100-80GB-HBM3``, ``NVIDIA-A100-SXM4-80GB``,
``Tesla-T4``), plus ``-SHARED`` when time-slicing/MPS renames the resource, or ``-MIG-...`` for a
MIG slice. :func:`lookup_gpu` accepts those names and short aliases (``H100-SXM``, ``A100-80GB``,
``L4``), case-insensitively.

Numbers are vendor datasheet values: memory as the device exposes it (GiB), peak HBM/GDDR
bandwidth (GB/s, 10^9 bytes/s) and dense (no sparsity) bf16 tensor TFLOP/s (fp16 on the T4, which
has no bf16). Side-effect free; no I/O.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["GpuSpec", "UnknownGpuError", "lookup_gpu", "known_gpu_names", "GPUS"]


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """One GPU model's capacity, as far as LLM decoding cares."""

    name: str
    memory_gib: float
    hbm_bandwidth_gbs: float
    bf16_tflops: float
    #: Product names as GPU feature discovery publishes them (``nvidia.com/gpu.product``).
    product_names: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    #: Where a number is not a published datasheet value, this says so.
    note: str = ""

    @property
    def bandwidth_bytes_s(self) -> float:
        return self.hbm_bandwidth_gbs * 1e9

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


class UnknownGpuError(ValueError):
    """A GPU name not in the table; the message lists the known names and the two ways out."""


GPUS: tuple[GpuSpec, ...] = (
    GpuSpec(
        "A100-SXM4-40GB", 40.0, 1555, 312,
        product_names=("NVIDIA-A100-SXM4-40GB",),
        aliases=("A100-40GB", "A100-SXM-40GB", "A100"),
    ),
    GpuSpec(
        "A100-PCIE-40GB", 40.0, 1555, 312,
        product_names=("NVIDIA-A100-PCIE-40GB", "NVIDIA-A100-PCIe-40GB"),
        aliases=("A100-PCIE",),
    ),
    GpuSpec(
        "A100-SXM4-80GB", 80.0, 2039, 312,
        product_names=("NVIDIA-A100-SXM4-80GB",),
        aliases=("A100-80GB", "A100-SXM-80GB"),
    ),
    GpuSpec(
        "A100-PCIE-80GB", 80.0, 1935, 312,
        product_names=("NVIDIA-A100-80GB-PCIe", "NVIDIA-A100-PCIE-80GB"),
        aliases=("A100-80GB-PCIE",),
    ),
    GpuSpec(
        "H100-PCIE", 79.6, 2000, 756,
        product_names=("NVIDIA-H100-PCIe", "NVIDIA-H100-80GB-PCIe"),
        aliases=("H100-PCIE-80GB",),
    ),
    GpuSpec(
        "H100-SXM5-80GB", 79.6, 3350, 989,
        product_names=("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-SXM5-80GB"),
        aliases=("H100-SXM", "H100-80GB", "H100"),
    ),
    GpuSpec(
        "H100-SXM5-64GB", 63.43, 2680, 989,
        product_names=("NVIDIA-H100-64GB-HBM2e", "NVIDIA-H100-64GB"),
        aliases=("H100-64GB",),
        note=(
            "the 64 GB H100 of the reference measurements; its bandwidth is not in a public datasheet "
            "we could check: 2,680 GB/s assumes 4 of the 5 HBM stacks of the 80 GB SXM part"
        ),
    ),
    GpuSpec(
        "H100-NVL", 93.6, 3900, 835,
        product_names=("NVIDIA-H100-NVL",),
        aliases=("H100-NVL-94GB",),
    ),
    GpuSpec(
        "H200", 140.4, 4800, 989,
        product_names=("NVIDIA-H200", "NVIDIA-H200-141GB-HBM3e"),
        aliases=("H200-SXM", "H200-141GB"),
    ),
    GpuSpec(
        "L4", 22.5, 300, 121,
        product_names=("NVIDIA-L4",),
    ),
    GpuSpec(
        "L40S", 45.0, 864, 362,
        product_names=("NVIDIA-L40S",),
    ),
    GpuSpec(
        "A10G", 22.5, 600, 70,
        product_names=("NVIDIA-A10G",),
        note="AWS-specific A10 variant; bf16 rate approximate",
    ),
    GpuSpec(
        "T4", 15.0, 320, 65,
        product_names=("Tesla-T4", "NVIDIA-T4"),
        aliases=("Tesla-T4",),
        note="no bf16: fp16 tensor rate",
    ),
)

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

    Raises :class:`UnknownGpuError` (a ``ValueError``) naming the known GPUs when nothing matches.
    Side-effect free.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownGpuError(f"GPU name must be a non-empty string, got {name!r}; {_help()}")
    key = _SUFFIXES.sub("", _key(name))
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
