"""Every commented sample in manifests/samples/ works as a user would run it: apply, wait, read."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from tests.integration.operator_harness import ROOT, get_json, wait_phase

pytestmark = pytest.mark.integration
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.stem for s in SAMPLES])
def test_sample_becomes_ready_with_owned_pods_on_its_gpu_product(cluster, operator, namespace, sample: pathlib.Path):
    obj = yaml.safe_load(sample.read_text())
    name = obj["metadata"]["name"]
    ref = (obj["spec"].get("engine") or {}).get("hfTokenSecretRef")
    if ref:  # the sample documents that the Secret must exist first; do what its comment says
        cluster.kubectl("create", "secret", "generic", ref["name"], "-n", namespace,
                        f"--from-literal={ref.get('key', 'HF_TOKEN')}=hf_dummy")
    cluster.kubectl("apply", "-n", namespace, "-f", str(sample))
    status = wait_phase(cluster, namespace, name, ("Ready",), timeout=240, operator=operator)["status"]

    product = obj["spec"]["gpu"]["product"]
    pods = get_json(cluster, "pods", "-n", namespace, "-l", f"slm.pareto.dev/service={name}")["items"]
    assert len(pods) == status["placement"]["totalReplicas"] > 0
    for pod in pods:
        node = get_json(cluster, "node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == product
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet"
    lines = cluster.kubectl("get", "slms", name, "-n", namespace, "-o", "wide").stdout.splitlines()
    assert "<none>" not in lines[1], f"a printer column is empty:\n{lines[0]}\n{lines[1]}"
    described = cluster.kubectl("describe", "slms", name, "-n", namespace).stdout
    assert "Explanation" in described and "Planned" in described
