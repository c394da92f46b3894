"""Write a finished profile into a ConfigMap from inside the profiler Job.

NB: this is the ONE module of ``slm_operator.profiling`` that touches the Kubernetes client, and it
imports it lazily inside :func:`write_profile_configmap`, which only ``slm-profiler run
--write-configmap`` calls. The rest of the package (and the operator importing it) never loads
the client through here. The Job's service account needs ``create``/``patch`` on that ConfigMap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from slm_operator.constants import PROFILE_KEY, SWEEP_KEY

__all__ = ["write_profile_configmap", "parse_target"]


def parse_target(target: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` -> (namespace, name), with a clear error for anything else."""
    namespace, sep, name = target.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"--write-configmap wants NAMESPACE/NAME, got {target!r}")
    return namespace, name


def write_profile_configmap(
    *,
    target: str,
    profile: Mapping[str, object],
    sweep: Mapping[str, object] | None,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Create or replace the ConfigMap ``target`` with the profile (and sweep) as JSON."""
    namespace, name = parse_target(target)
    from kubernetes import client, config  # lazy: only the in-cluster Job path needs it

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    data = {PROFILE_KEY: json.dumps(dict(profile), indent=2, sort_keys=True)}
    if sweep is not None:
        data[SWEEP_KEY] = json.dumps(dict(sweep), sort_keys=True)
    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels or {})),
        data=data,
    )
    api = client.CoreV1Api()
    try:
        api.create_namespaced_config_map(namespace=namespace, body=body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        api.replace_namespaced_config_map(name=name, namespace=namespace, body=body)
