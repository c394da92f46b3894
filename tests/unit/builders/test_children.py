"""Child manifests: what the scheduler and vLLM will see."""

from slm_operator.builders.children import (
    build_group_statefulset,
    build_resource_claim,
    build_service,
    owner_reference,
)
from slm_operator.constants import LABEL_GROUP, LABEL_SERVICE
from slm_operator.planning.inventory import build_inventory
from slm_operator.planning.plan import make_plan
from tests.unit.factories import H100, dra_slice, node, profile, spec

OWNER = owner_reference(name="opt", uid="u-1")


def _plan(nodes, slices=(), **spec_overrides):
    return make_plan(spec=spec(**spec_overrides), profile=profile(),
                     inventory=build_inventory(nodes=nodes, resource_slices=slices))


def test_device_plugin_group_starts_replicas_in_order_on_one_node():
    s = spec(engine={"args": ["--enforce-eager"], "hfTokenSecretRef": {"name": "hf"}})
    plan = _plan([node("t", sharing="time-slicing", replicas=4)])
    sts = build_group_statefulset(name="opt", namespace="ns", index=1, spec=s, plan=plan, image="vllm:x", owner=OWNER)
    assert sts["metadata"]["name"] == "opt-g1" and sts["metadata"]["ownerReferences"] == [OWNER]
    assert sts["spec"]["podManagementPolicy"] == "OrderedReady"
    assert sts["spec"]["replicas"] == plan.replicas_per_gpu
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert container["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert container["args"][0] == "--model=facebook/opt-1.3b"
    assert f"--max-num-seqs={plan.batch_size}" in container["args"] and container["args"][-1] == "--enforce-eager"
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}} in container["env"]
    term = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["labelSelector"]["matchLabels"] == {LABEL_SERVICE: "opt", LABEL_GROUP: "1"}
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert sts["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    node_terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {"key": "nvidia.com/gpu.sharing-strategy", "operator": "In", "values": ["time-slicing"]} in (
        node_terms["nodeSelectorTerms"][0]["matchExpressions"])


def test_dra_group_shares_one_claim_with_mps_limits():
    plan = _plan([node("d", sharing="dra")], [dra_slice("d")], gpu={"product": H100, "sharing": "dra"})
    claim = build_resource_claim(name="opt", namespace="ns", index=0, plan=plan, owner=OWNER)
    sts = build_group_statefulset(name="opt", namespace="ns", index=0, spec=spec(), plan=plan, image="i", owner=OWNER)
    pod = sts["spec"]["template"]["spec"]
    assert pod["resourceClaims"] == [{"name": "gpu", "resourceClaimName": claim["metadata"]["name"]}]
    assert pod["containers"][0]["resources"]["claims"] == [{"name": "gpu"}]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
    mps = claim["spec"]["devices"]["config"][0]["opaque"]["parameters"]["sharing"]["mpsConfig"]
    assert mps["defaultActiveThreadPercentage"] == 100 // plan.replicas_per_gpu
    assert mps["defaultPinnedDeviceMemoryLimit"] == f"{plan.pinned_memory_limit_mib}Mi"
    assert H100 in claim["spec"]["devices"]["requests"][0]["exactly"]["selectors"][0]["cel"]["expression"]


def test_pvc_models_are_mounted_read_only():
    plan = _plan([node("t", sharing="time-slicing", replicas=4)])
    sts = build_group_statefulset(name="m", namespace="ns", index=0, spec=spec(model="pvc://weights/opt-1.3b"),
                                  plan=plan, image="i", owner=OWNER)
    pod = sts["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][0] == "--model=/models/weights/opt-1.3b"
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod["volumes"]


def test_service_selects_every_group():
    svc = build_service(name="opt", namespace="ns", owner=OWNER)
    assert svc["spec"]["selector"][LABEL_SERVICE] == "opt" and LABEL_GROUP not in svc["spec"]["selector"]
