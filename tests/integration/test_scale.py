"""The SLMService scale subresource on the real control plane: kubectl scale (as an HPA or KEDA would)
drives spec.scale.gpus, the operator re-plans, and never writes the spec back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.operator_harness import apply_yaml, get_json, slms, wait_phase
from tests.integration.test_operator_lifecycle import children, ready_pods, static_service
from tests.kubetest import wait_for

pytestmark = pytest.mark.integration

#: What the CRD answers `kubectl scale` on a service sized by scale.targetTokensPerSecond.
BOTH_SET = ("scale.gpus and scale.targetTokensPerSecond are both set: a service sized by targetTokensPerSecond "
            "cannot also take a GPU count (from kubectl scale, an HPA or KEDA, or the default gpus 1 kept from an "
            "earlier version of the object). To scale it by count, remove scale.targetTokensPerSecond (and "
            "minGPUs, maxGPUs); to keep the target, remove scale.gpus (kubectl patch slms NAME --type=json -p "
            "'[{\"op\":\"remove\",\"path\":\"/spec/scale/gpus\"}]')")


def scale_of(cluster, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", "slms", name, "-n", namespace, "--subresource=scale",
                                      "-o", "json").stdout)


def test_kubectl_scale_changes_the_gpus_and_the_operator_replans(cluster, operator, namespace):
    apply_yaml(cluster, namespace, static_service("sc"))  # 2 replicas per GPU
    obj = wait_phase(cluster, namespace, "sc", ("Ready",), operator=operator)
    selector = "app.kubernetes.io/component=model-server,slm.pareto.dev/service=sc"
    assert obj["status"]["selector"] == selector
    scale = scale_of(cluster, namespace, "sc")
    assert (scale["kind"], scale["apiVersion"]) == ("Scale", "autoscaling/v1")
    assert (scale["spec"]["replicas"], scale["status"]["replicas"], scale["status"]["selector"]) == (1, 1, selector)

    cluster.kubectl("scale", "slms/sc", "-n", namespace, "--replicas", "3")
    assert slms(cluster, namespace, "sc")["spec"]["scale"] == {"gpus": 3}
    wait_for(lambda: slms(cluster, namespace, "sc")["status"]["placement"]["ready"] == "6/6", timeout=120,
             message="6/6 ready after kubectl scale --replicas 3")
    obj = slms(cluster, namespace, "sc")
    assert obj["status"]["placement"]["gpus"] == 3 and obj["status"]["placement"]["requestedGPUs"] == 3
    assert sorted(s["metadata"]["name"] for s in children(cluster, namespace, "statefulsets", "sc")) == [
        "sc-g0", "sc-g1", "sc-g2"]
    scale = scale_of(cluster, namespace, "sc")
    assert (scale["spec"]["replicas"], scale["status"]["replicas"], scale["status"]["selector"]) == (3, 3, selector)
    # The selector an HPA or KEDA reads takes exactly the service's replicas.
    pods = {p["metadata"]["name"] for p in ready_pods(cluster, namespace, "sc", 6)}
    assert {p["metadata"]["name"] for p in get_json(cluster, "pods", "-n", namespace, "-l", selector)["items"]} == pods

    # The operator wrote no spec: the generation is the scale's, and spec.scale.gpus is kubectl's alone.
    assert obj["metadata"]["generation"] == obj["status"]["observedGeneration"]
    managed = json.loads(cluster.kubectl("get", "slms", "sc", "-n", namespace, "--show-managed-fields",
                                         "-o", "json").stdout)["metadata"]["managedFields"]
    spec_writers = {m["manager"] for m in managed if "f:spec" in m.get("fieldsV1", {})}
    assert spec_writers and all(w.startswith("kubectl") for w in spec_writers), managed
    (gpus_owner,) = [m["manager"] for m in managed
                     if "f:gpus" in m.get("fieldsV1", {}).get("f:spec", {}).get("f:scale", {})]
    assert gpus_owner != "kubectl-client-side-apply", managed  # the scale's writer, not the manifest's

    cluster.kubectl("scale", "slms/sc", "-n", namespace, "--replicas", "0")
    wait_for(lambda: not children(cluster, namespace, "statefulsets", "sc"), timeout=60,
             message="every group removed at --replicas 0")
    wait_for(lambda: scale_of(cluster, namespace, "sc")["status"].get("replicas", 0) == 0, timeout=30,
             message="status replicas 0")


def test_a_service_without_spec_scale_reads_one_gpu(cluster, installed_chart, namespace):
    plain = static_service("one")
    del plain["spec"]["scale"]
    apply_yaml(cluster, namespace, plain)
    assert slms(cluster, namespace, "one")["spec"]["scale"] == {"gpus": 1}  # defaulted, so scale reads 1
    assert scale_of(cluster, namespace, "one")["spec"]["replicas"] == 1


def test_kubectl_scale_on_a_target_sized_service_says_what_to_do(cluster, installed_chart, namespace):
    sized = static_service("tgt")
    sized["spec"]["scale"] = {"targetTokensPerSecond": 30000, "maxGPUs": 4}
    apply_yaml(cluster, namespace, sized)
    result = cluster.kubectl("scale", "slms/tgt", "-n", namespace, "--replicas", "2", check=False)
    assert result.returncode != 0
    assert BOTH_SET in " ".join(result.stderr.split()), result.stderr
    assert slms(cluster, namespace, "tgt")["spec"]["scale"] == {"targetTokensPerSecond": 30000, "maxGPUs": 4}
    # Its scale subresource has no replica count: an HPA or KEDA pointed at it reports FailedGetScale.
    read = cluster.kubectl("get", "slms", "tgt", "-n", namespace, "--subresource=scale", check=False)
    assert read.returncode != 0 and 'the spec replicas field ".spec.scale.gpus" does not exist' in read.stderr
