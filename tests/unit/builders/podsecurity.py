"""What the ``restricted`` Pod Security Standard checks, for the builders' unit tests, and a pod's QoS class.

A reading of https://kubernetes.io/docs/concepts/security/pod-security-standards/ (``latest``),
enough to catch a builder that drops a field; tests/integration/test_pod_security.py asks the
API server's own PodSecurity admission.
"""

from __future__ import annotations

from typing import Any

#: The volume types ``restricted`` allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in ``pod`` (a PodSpec) ``restricted`` refuses; empty when it passes."""
    found: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    containers = [*pod.get("initContainers", ()), *pod.get("containers", ())]
    found += [f"volume {v['name']}" for v in pod.get("volumes", ()) if not set(v) - {"name"} <= RESTRICTED_VOLUMES]
    found += [flag for flag in HOST_NAMESPACES if pod.get(flag)]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation != false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or ()):
            found.append(f"{name}: capabilities.drop lacks ALL")
        if set(caps.get("add") or ()) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities.add {caps['add']}")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot unset")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile {seccomp}")
        found += [f"{name}: hostPort" for p in c.get("ports", ()) if p.get("hostPort")]
    if pod_sc.get("runAsUser") == 0:
        found.append("pod: runAsUser 0")
    return found


def qos_class(pod: dict[str, Any]) -> str:
    """The QoS class the kubelet gives ``pod``: only cpu and memory count (a GPU does not)."""
    containers = [*pod.get("initContainers", ()), *pod.get("containers", ())]
    resources = [c.get("resources") or {} for c in containers]
    asked = [{k: v for k, v in (r.get(part) or {}).items() if k in ("cpu", "memory")}
             for r in resources for part in ("requests", "limits")]
    if not any(asked):
        return "BestEffort"

    def guaranteed(r: dict[str, Any]) -> bool:
        limits, requests = r.get("limits") or {}, r.get("requests") or {}
        return all(k in limits and requests.get(k, limits[k]) == limits[k] for k in ("cpu", "memory"))

    return "Guaranteed" if all(guaranteed(r) for r in resources) else "Burstable"
