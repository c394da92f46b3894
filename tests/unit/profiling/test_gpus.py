"""GPU table lookups by GPU-feature-discovery product names and aliases."""

import pytest

from slm_operator.errors import UnknownGpuError
from slm_operator.profiling.gpus import GPUS, MEMORY_EFFICIENCY, known_gpu_names, lookup_gpu


@pytest.mark.parametrize(
    "label, name",
    [
        ("NVIDIA-H100-80GB-HBM3", "H100-SXM5-80GB"),
        ("NVIDIA-A100-SXM4-80GB", "A100-SXM4-80GB"),
        ("NVIDIA-A100-SXM4-40GB", "A100-SXM4-40GB"),
        ("NVIDIA-A100-80GB-PCIe", "A100-PCIE-80GB"),
        ("NVIDIA-H100-PCIe", "H100-PCIE"),
        ("NVIDIA-H100-NVL", "H100-NVL"),
        ("NVIDIA-H200", "H200"),
        ("NVIDIA-L4", "L4"),
        ("NVIDIA-L40S", "L40S"),
        ("NVIDIA-A10G", "A10G"),
        ("Tesla-T4", "T4"),
    ],
)
def test_gfd_product_labels_resolve(label, name):
    assert lookup_gpu(label).name == name


@pytest.mark.parametrize(
    "alias, name",
    [("H100-SXM", "H100-SXM5-80GB"), ("a100-80gb", "A100-SXM4-80GB"), ("l4", "L4"), ("nvidia l4", "L4")],
)
def test_aliases_are_case_insensitive(alias, name):
    assert lookup_gpu(alias).name == name


def test_sharing_and_mig_suffixes_do_not_change_the_gpu():
    assert lookup_gpu("NVIDIA-A100-SXM4-40GB-SHARED").name == "A100-SXM4-40GB"
    assert lookup_gpu("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb").name == "A100-SXM4-40GB"


def test_memory_override_keeps_the_rest():
    base = lookup_gpu("NVIDIA-L4")
    small = lookup_gpu("NVIDIA-L4", memory_gib=10)
    assert small.memory_gib == 10 and small.hbm_bandwidth_gbs == base.hbm_bandwidth_gbs
    with pytest.raises(ValueError, match="> 0"):
        lookup_gpu("NVIDIA-L4", memory_gib=0)


def test_unknown_gpu_lists_names_and_the_fix():
    with pytest.raises(UnknownGpuError) as err:
        lookup_gpu("NVIDIA-GeForce-RTX-9999")
    message = str(err.value)
    assert "NVIDIA-H100-80GB-HBM3" in message and "--gpu-memory-gib" in message and "spec.gpu" in message
    assert isinstance(err.value, ValueError)


def test_table_is_physically_sane():
    for spec in GPUS:
        assert 10 < spec.memory_gib < 200
        # bytes/s per FLOP: every listed part is far more compute- than bandwidth-rich
        assert spec.flops / spec.bandwidth_bytes_s > 50
    assert len(known_gpu_names()) >= 2 * len(GPUS) - 1


def test_effective_bandwidth_is_one_efficiency_per_memory_technology():
    for spec in GPUS:
        assert spec.memory_type in MEMORY_EFFICIENCY
        efficiency = MEMORY_EFFICIENCY[spec.memory_type]
        assert spec.effective_bandwidth_bytes_s == pytest.approx(efficiency * spec.bandwidth_bytes_s)
        assert 0.5 < spec.memory_efficiency <= 1
    assert lookup_gpu("H100-SXM").memory_type == "HBM3" and lookup_gpu("A100-80GB").memory_type == "HBM2e"
    assert lookup_gpu("NVIDIA-L4").memory_type == "GDDR6" and lookup_gpu("H200").memory_type == "HBM3e"


def test_the_64gb_h100_is_an_hbm2e_part_with_a_documented_bandwidth():
    spec = lookup_gpu("H100-64GB")
    assert spec.memory_type == "HBM2e" and spec.memory_gib == pytest.approx(63.43)
    # Not the old guess (4 of 5 HBM3 stacks, 2,680 GB/s): the HBM2e H100 rate, 1.63 TB/s effective.
    assert spec.hbm_bandwidth_gbs == 2039 and spec.effective_bandwidth_bytes_s == pytest.approx(1.6312e12)
    assert "HBM2e" in spec.note and "2,680" in spec.note


@pytest.mark.parametrize(
    "name, memory, expected",
    [
        ("NVIDIA-H100", 63.43, "H100-SXM5-64GB"),  # the CUDA name of the 64 GB part is plain "NVIDIA H100"
        ("H100", 64, "H100-SXM5-64GB"),
        ("NVIDIA-H100", None, "H100-SXM5-80GB"),
        ("NVIDIA-H100", 79.6, "H100-SXM5-80GB"),
        # An explicit 80 GB name keeps its silicon whatever the memory override (MIG slice, MPS limit).
        ("NVIDIA-H100-80GB-HBM3", 40, "H100-SXM5-80GB"),
    ],
)
def test_a_bare_h100_name_with_64_gib_is_the_64gb_part(name, memory, expected):
    spec = lookup_gpu(name, memory_gib=memory)
    assert spec.name == expected
    if memory is not None:
        assert spec.memory_gib == memory
