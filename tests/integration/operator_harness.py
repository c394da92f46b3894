"""The integration tests' side of the operator harness (``hack/localcluster/operator.py``).

The operator runs beside the test cluster as the chart's ServiceAccount; here it gets the tests'
settings (a 3 s retry timer, a pinned default engine image), and the tests get helpers to read
SLMServices and wait for their phase.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator
from typing import Any

from hack.localcluster import operator as harness
from hack.localcluster.cluster import REPO, Cluster, StopWaiting, wait_for
from hack.localcluster.operator import OPERATOR_NAMESPACE, RELEASE, install_chart, serviceaccount_kubeconfig

__all__ = [
    "OPERATOR_NAMESPACE",
    "RELEASE",
    "ROOT",
    "OperatorProcess",
    "apply_yaml",
    "get_json",
    "install_chart",
    "operator_with",
    "serviceaccount_kubeconfig",
    "slms",
    "wait_phase",
]

ROOT = REPO


class OperatorProcess(harness.OperatorProcess):
    """The harness's operator with the tests' settings: retries every 3 s, a pinned default engine image."""

    DEFAULT_ENV = harness.OperatorProcess.DEFAULT_ENV | {
        "SLM_RETRY_SECONDS": "3",
        # NB: shorter measurement windows for the simulated profiles (the sweep's logic is the same).
        "SLM_PROFILER_EXTRA_ARGS": '["--warmup-s=0.5", "--duration-s=3"]',
        "SLM_DEFAULT_ENGINE_IMAGE": "vllm/vllm-openai:v0.11.0",
    }


def get_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    return cluster.get_json(*args)


def slms(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.get_json("slmservice", name, "-n", namespace)


def apply_yaml(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.apply(obj, namespace=namespace)


def wait_phase(cluster: Cluster, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 90,
               operator: harness.OperatorProcess | None = None) -> dict[str, Any]:
    """Wait until SLMService ``name`` reaches one of ``phases``; fail at once on an unexpected Failed."""
    def reached() -> dict[str, Any] | None:
        obj = slms(cluster, namespace, name)
        phase = (obj.get("status") or {}).get("phase")
        if phase == "Failed" and "Failed" not in phases:  # terminal until the spec changes: stop waiting
            raise StopWaiting(f"{name} Failed: {obj['status'].get('message')}")
        return obj if phase in phases else None
    try:
        return wait_for(reached, timeout=timeout, interval=0.5, message=f"{name} to reach {phases}")
    except AssertionError as exc:
        tail = operator.log_tail() if operator else ""
        raise AssertionError(f"{exc}\nstatus: {slms(cluster, namespace, name).get('status')}\n"
                             f"operator log:\n{tail}") from None


@contextlib.contextmanager
def operator_with(
    operator: OperatorProcess, *, work_dir: pathlib.Path, env: dict[str, str]
) -> Iterator[OperatorProcess]:
    """The session's ``operator`` stopped and one with ``env`` in its place while the block runs; the
    session's one started again after. NB: one operator at a time: two would both plan the same GPUs."""
    operator.stop()
    replaced = OperatorProcess(kubeconfig=operator.kubeconfig, work_dir=work_dir, extra_env=env)
    replaced.start()
    try:
        yield replaced
    finally:
        replaced.stop()
        operator.start()
