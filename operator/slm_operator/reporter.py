"""Write a :class:`~slm_operator.status.StatusUpdate` to an SLMService: a status patch and Events.

``status`` decides what the status should say (pure); this writes only what changed, so a
reconcile that changes nothing makes no API call, and posts an Event when the phase changes
(Warning for Failed and Degraded) or when a failure names its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

from slm_operator import kube
from slm_operator.status import StatusUpdate, desired_patch, now_iso

#: Phases whose Event is a Warning.
WARNING_PHASES = ("Failed", "Degraded")


class StatusWriter:
    """The status of one SLMService as last read or written, and the writes that move it on."""

    def __init__(self, *, body: Mapping[str, Any], name: str, namespace: str, current: Mapping[str, Any],
                 generation: int | None) -> None:
        # NB: a copy: kopf's body is a live view of the last event, and Events need the object's uid.
        self._body = kopf.Body(cast(kopf.RawBody, dict(body)))
        self.name, self.namespace, self.generation = name, namespace, generation
        self.current: dict[str, Any] = dict(current)

    def write(self, update: StatusUpdate) -> None:
        patch = desired_patch(current=self.current, update=update, generation=self.generation, now=now_iso())
        if patch and update.phase != self.current.get("phase"):
            # NB: a phase change is rare and posts an Event: decide it from a fresh read. This run may
            # have started from an event older than another run's write (a timer and a handler's
            # retry a moment apart), and would post that run's Event again.
            fresh = kube.get_service(name=self.name, namespace=self.namespace)
            if fresh is not None:
                self.current = dict(fresh.get("status") or {})
                patch = desired_patch(current=self.current, update=update, generation=self.generation,
                                      now=now_iso())
        if patch:
            old_phase = self.current.get("phase")
            kube.patch_service_status(name=self.name, namespace=self.namespace, status=patch)
            self.current |= patch
            if update.phase != old_phase:
                kopf.event(self._body, type="Warning" if update.phase in WARNING_PHASES else "Normal",
                           reason=update.phase, message=update.event_message())
        if update.warning:
            kopf.event(self._body, type="Warning", reason=update.warning,
                       message=update.warning_message or update.message or "")
