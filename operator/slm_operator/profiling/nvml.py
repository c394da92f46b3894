"""GPU samples through NVML (pynvml, from the nvidia-ml-py package) when a GPU is present.

Where there is no NVIDIA driver (a CPU machine, the simulated engine) :class:`NvmlSampler` says
so once in :attr:`unavailable_reason` and every call is a no-op, so a sweep goes on without GPU
numbers instead of failing.
"""

from __future__ import annotations

import dataclasses
import logging

__all__ = ["NvmlSampler", "NvmlSummary"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NvmlSummary:
    samples: int
    device_name: str | None
    memory_total_mib: float | None
    memory_used_mib_peak: float | None
    mean_power_w: float | None
    mean_utilization_perc: float | None


class NvmlSampler:
    """Samples device ``index``: memory used, power, utilisation. :meth:`reset` starts a window."""

    def __init__(self, *, index: int = 0) -> None:
        self.unavailable_reason: str | None = None
        self._nvml = None
        self._handle = None
        self._device_name: str | None = None
        self._rows: list[tuple[float, float | None, float | None]] = []
        self._total: float | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self._device_name = name.decode() if isinstance(name, bytes) else str(name)
            self._total = pynvml.nvmlDeviceGetMemoryInfo(self._handle).total / 2**20
            self._nvml = pynvml
        except Exception as exc:
            self.unavailable_reason = f"NVML unavailable ({type(exc).__name__}: {exc}); GPU memory/power not sampled"
            log.info("%s", self.unavailable_reason)

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def reset(self) -> None:
        self._rows = []

    def sample(self) -> None:
        if not self._nvml:
            return
        nvml = self._nvml
        try:
            used = nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
        except Exception:
            return
        power = util = None
        try:
            power = nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        except Exception:
            pass
        try:
            util = float(nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
        except Exception:
            pass
        self._rows.append((used, power, util))

    def summary(self) -> NvmlSummary:
        rows = self._rows
        powers = [p for _, p, _ in rows if p is not None]
        utils = [u for _, _, u in rows if u is not None]
        return NvmlSummary(
            samples=len(rows),
            device_name=self._device_name,
            memory_total_mib=self._total,
            memory_used_mib_peak=max((m for m, _, _ in rows), default=None),
            mean_power_w=sum(powers) / len(powers) if powers else None,
            mean_utilization_perc=sum(utils) / len(utils) if utils else None,
        )
