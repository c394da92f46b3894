"""One starting vLLM replica per physical GPU at a time, across services (``dra-shares``).

Several vLLM servers starting at once on one GPU misread its free memory (vLLM #55827). A GPU
group's StatefulSet orders its own replicas (``OrderedReady``); ``dra-shares`` replicas of
different services meet on one GPU, and no StatefulSet sees them all. So each ``dra-shares`` pod
waits, before exec'ing vLLM, for the start permission (``constants.ANNOTATION_START``, read through
a downwardAPI volume), and the operator grants it with :func:`grants`: on a GPU where a granted pod
is not Ready yet, nobody else; otherwise the oldest waiting pod whose claim is allocated there.

The GPU is the device of the pod's allocated claim (``driver/pool/device`` of the allocation
result), so it is known once the scheduler allocated the claim, before the pod starts.

Side-effect free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class StartingPod:
    """A ``dra-shares`` pod as the start gate sees it."""

    namespace: str
    name: str
    #: ``metadata.creationTimestamp`` (RFC 3339 sorts as text): who waited longest.
    created: str
    #: Device keys (``planning.shares.device_key``) of its allocated claims; empty until allocated.
    devices: tuple[str, ...]
    granted: bool
    ready: bool
    deleting: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def starting(self) -> bool:
        """Granted and not Ready yet: vLLM is (or may be) loading on its GPU."""
        return self.granted and not self.ready and not self.deleting


def grants(pods: Iterable[StartingPod]) -> list[tuple[StartingPod, str]]:
    """The pods to grant now, each with the GPU it starts on.

    At most one starting pod per GPU at any time, counting those granted before; a pod with
    several devices waits until all are free of starters. Oldest first, then by name.
    """
    pods = list(pods)
    busy = {device for pod in pods if pod.starting for device in pod.devices}
    chosen: list[tuple[StartingPod, str]] = []
    waiting = sorted((p for p in pods if not p.granted and not p.deleting and p.devices),
                     key=lambda p: (p.created, p.namespace, p.name))
    for pod in waiting:
        if busy.isdisjoint(pod.devices):
            busy.update(pod.devices)
            chosen.append((pod, pod.devices[0]))
    return chosen
