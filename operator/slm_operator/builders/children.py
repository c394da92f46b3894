"""Child manifests of an SLMService: one StatefulSet per GPU group, a Service, DRA claims, and
optionally a NetworkPolicy and a Gateway API Inference Extension InferencePool.

Why a StatefulSet per group: ``podManagementPolicy: OrderedReady`` starts the k replicas of a GPU
one after another (several vLLM servers starting at once on one GPU misread free memory — vLLM
issue #55827), a required pod affinity keeps them on one node, and scaling out or in adds or
removes whole groups without touching the pods of the others.

``dra-shares`` has no groups: one StatefulSet (one group index) of all replicas, each pod with its own
ResourceClaim from a ResourceClaimTemplate. Replicas of other services share its GPUs, so no
StatefulSet can order their starts; instead each vLLM waits for the operator's start permission
(``constants.ANNOTATION_START``, read through a downwardAPI volume), granted to one starting replica
per physical GPU at a time (``planning.start_gate``).

Pure ``build_*`` functions: they return dicts and import neither kopf nor a Kubernetes client.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from slm_operator.builders.dra import dra_product_selector
from slm_operator.constants import (
    ANNOTATION_CLAIM_MEMORY,
    ANNOTATION_CLAIM_SHARES,
    ANNOTATION_MECHANISM,
    ANNOTATION_NODE,
    ANNOTATION_PRODUCT,
    ANNOTATION_REPLACES,
    ANNOTATION_START,
    API_VERSION,
    DRA_CAPACITY_MEMORY,
    DRA_CAPACITY_SHARES,
    DRA_DEVICE_CLASS,
    DRA_DRIVER,
    GPU_RESOURCE,
    GROUP,
    INFERENCE_POOL_API_VERSION,
    INFERENCE_POOL_KIND,
    KIND,
    LABEL_COMPONENT,
    LABEL_GPU_PRODUCT,
    LABEL_GPU_SHARING,
    LABEL_GROUP,
    LABEL_MANAGED_BY,
    LABEL_PACKED,
    LABEL_SERVICE,
    MANAGED_BY,
    MODEL_SERVER_COMPONENT,
    SERVING_PORT,
    SHARED_PRODUCT_SUFFIX,
    START_GRANTED,
    engine_labels,
    group_name,
)
from slm_operator.planning.plan import Plan
from slm_operator.spec import API_KEY_ENV, HF_TOKEN_ENV, EndpointPickerRef, NetworkPolicySpec, SLMServiceSpec

PVC_SCHEME = "pvc://"
MODEL_MOUNT = "/models"
#: The user vLLM runs as unless the operator's configuration says otherwise (SLM_ENGINE_RUN_AS_USER).
ENGINE_RUN_AS_USER = 1000
#: A writable folder for everything vLLM and its libraries write: the images' HOME (``/root`` in
#: vllm/vllm-openai) is not writable by a non-root user. An emptyDir, so it goes with the pod.
CACHE_DIR = "/var/cache/slm"
#: Where vLLM, Hugging Face, torch and Triton write (caches, compiled kernels, downloaded weights,
#: usage stats), all under CACHE_DIR. A variable the user sets in ``engine.env`` wins.
CACHE_ENV: tuple[tuple[str, str], ...] = (
    ("HOME", CACHE_DIR),
    ("XDG_CACHE_HOME", f"{CACHE_DIR}/cache"),
    ("XDG_CONFIG_HOME", f"{CACHE_DIR}/config"),
    ("HF_HOME", f"{CACHE_DIR}/huggingface"),
    ("VLLM_CACHE_ROOT", f"{CACHE_DIR}/vllm"),
    ("TRITON_CACHE_DIR", f"{CACHE_DIR}/triton"),
    # NB: torch's default (/tmp/torchinductor_$USER) asks getpass for a user name, which a uid
    # without a passwd entry in the image does not have.
    ("TORCHINDUCTOR_CACHE_DIR", f"{CACHE_DIR}/torchinductor"),
)
#: ``dra-shares`` pods: where the downwardAPI volume puts the start permission (the pod's own
#: ``constants.ANNOTATION_START``; the kubelet refreshes the file when the annotation changes).
START_DIR = "/var/run/slm-start"
START_FILE = "permission"
#: The engine container's entry point under ``dra-shares``: wait for the permission, then exec vLLM
#: with the container's args (``$@``). NB: sh, not bash: every image has it.
START_GATE_SCRIPT = (
    f'until [ "$(cat {START_DIR}/{START_FILE} 2>/dev/null)" = "{START_GRANTED}" ]; do sleep 1; done; '
    'exec python3 -m vllm.entrypoints.openai.api_server "$@"'
)
#: NB: a ``dra-shares`` replica may wait for the replicas before it on its GPU (minutes each) before
#: vLLM even starts, so its startup probe allows an hour instead of 15 minutes.
SHARES_STARTUP_FAILURES = 360


@dataclasses.dataclass(frozen=True)
class EngineDefaults:
    """What the operator's configuration adds to every vLLM pod (``OperatorConfig.engine_*``):
    the user it runs as, and the requests used where ``spec.engine.resources`` leaves them unset
    (``None``: no request)."""

    run_as_user: int = ENGINE_RUN_AS_USER
    cpu_request: str | None = None
    memory_request: str | None = None
    ephemeral_storage_request: str | None = None


ENGINE_DEFAULTS = EngineDefaults()


def owner_reference(*, name: str, uid: str) -> dict[str, Any]:
    """Controller reference so deleting the SLMService cascades to every child."""
    return {"apiVersion": f"{GROUP}/{API_VERSION}", "kind": KIND, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def common_labels(*, name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "slm-model-server",
        "app.kubernetes.io/instance": name,
        LABEL_COMPONENT: MODEL_SERVER_COMPONENT,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_SERVICE: name,
    }


def claim_name(*, name: str, index: int, plan: Plan) -> str:
    """A claim's spec is immutable, so its name carries a digest of what it asks for: a new
    plan gets a new claim (a deliberate restart of that group) instead of a rejected update."""
    wanted: list[object] = [plan.gpu_product, plan.device_class_name, plan.active_thread_percentage,
                            plan.pinned_memory_limit_mib]
    if plan.whole_devices_only:
        wanted.append("whole")  # NB: only then, so the claims of clusters without shared GPUs keep their names
    digest = hashlib.sha256(json.dumps(wanted).encode()).hexdigest()[:8]
    return f"{name}-g{index}-gpu-{digest}"


def claim_template_name(*, name: str, plan: Plan) -> str:
    """The ResourceClaimTemplate of a ``dra-shares`` service: immutable, so, like a claim, named
    with a digest of what each claim asks (a new size is a new template and a rolling update)."""
    request = plan.share_request
    wanted = [plan.gpu_product, plan.device_class_name, request.memory_mib if request else None,
              request.shares if request else None]
    digest = hashlib.sha256(json.dumps(wanted).encode()).hexdigest()[:8]
    return f"{name}-share-{digest}"


def _metadata(*, name: str, namespace: str, owner: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(labels), "ownerReferences": [dict(owner)]}


def build_service(*, name: str, namespace: str, owner: Mapping[str, Any]) -> dict[str, Any]:
    """One ClusterIP Service over every replica of every GPU group."""
    labels = common_labels(name=name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name=name, namespace=namespace, owner=owner, labels=labels),
        "spec": {
            "type": "ClusterIP",
            "selector": engine_labels(service=name),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_network_policy(
    *, name: str, namespace: str, policy: NetworkPolicySpec, owner: Mapping[str, Any]
) -> dict[str, Any]:
    """Admit traffic to the service's replicas only on the serving port, and only from pods of its
    own namespace and the peers ``spec.networkPolicy.ingressFrom`` lists. Ingress only: what the
    replicas reach (a model hub) is not restricted here."""
    peers: list[dict[str, Any]] = [{"podSelector": {}}]  # every pod of this namespace
    peers += [copy.deepcopy(dict(peer)) for peer in policy.ingress_from]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name=name, namespace=namespace, owner=owner, labels=common_labels(name=name)),
        "spec": {
            "podSelector": {"matchLabels": engine_labels(service=name)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": SERVING_PORT}]}],
        },
    }


def endpoint_picker(*, name: str, asked: EndpointPickerRef, defaults: EndpointPickerRef) -> EndpointPickerRef:
    """The endpoint picker of SLMService ``name``'s InferencePool: what its spec asks, the operator's
    ``defaults`` for the rest, with ``{name}`` in the name replaced by the service's."""
    picker = asked.over(defaults)
    return dataclasses.replace(picker, name=(picker.name or "").replace("{name}", name))


def build_inference_pool(
    *, name: str, namespace: str, picker: EndpointPickerRef, owner: Mapping[str, Any]
) -> dict[str, Any]:
    """A Gateway API Inference Extension InferencePool (v1) over every replica of the service, on
    the serving port: a gateway routing to it asks the endpoint picker ``picker`` (a Service, see
    :func:`endpoint_picker`) which replica should take each request, by queue length and KV-cache
    use, instead of spreading connections at random. Named like the SLMService."""
    return {
        "apiVersion": INFERENCE_POOL_API_VERSION,
        "kind": INFERENCE_POOL_KIND,
        "metadata": _metadata(name=name, namespace=namespace, owner=owner, labels=common_labels(name=name)),
        "spec": {
            "selector": {"matchLabels": engine_labels(service=name)},
            "targetPorts": [{"number": SERVING_PORT}],
            "endpointPickerRef": {
                "kind": "Service",
                "name": picker.name,
                "port": {"number": picker.port},
                "failureMode": picker.failure_mode,
            },
        },
    }


def endpoint_url(*, name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local/v1"


def build_claim_template(
    *, name: str, namespace: str, plan: Plan, owner: Mapping[str, Any], index: int = 0
) -> dict[str, Any]:
    """``dra-shares``: the template every replica's own ResourceClaim is made from.

    Each claim asks a share of one GPU that allows multiple allocations: ``memory`` (the replica's
    budget, see ``planning.plan.share_request``) and, where the driver publishes it, ``shares``
    (1/k* of the GPU). No opaque config: NVIDIA's driver refuses MPS under consumable shares, and
    time-slices the GPU between the claims. The claims carry the service's labels, the group
    ``index`` of the StatefulSet and ``LABEL_PACKED``, so the operator's index can tell its
    replicas' claims apart.
    """
    assert plan.share_request is not None  # NB: only dra-shares plans are built here
    requests = {DRA_CAPACITY_MEMORY: f"{plan.share_request.memory_mib}Mi"}
    if plan.share_request.shares is not None:
        requests[DRA_CAPACITY_SHARES] = str(plan.share_request.shares)
    labels = common_labels(name=name) | {LABEL_GROUP: str(index), LABEL_PACKED: "true"}
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": _metadata(name=claim_template_name(name=name, plan=plan), namespace=namespace,
                              owner=owner, labels=labels),
        "spec": {
            "metadata": {"labels": labels},
            "spec": {"devices": {"requests": [{
                "name": "gpu",
                "exactly": {
                    "deviceClassName": plan.device_class_name or DRA_DEVICE_CLASS,
                    "selectors": [{"cel": {"expression": dra_product_selector(plan.gpu_product)}},
                                  {"cel": {"expression": "device.allowMultipleAllocations == true"}}],
                    "capacity": {"requests": requests},
                },
            }]}},
        },
    }


def build_resource_claim(
    *, name: str, namespace: str, index: int, plan: Plan, owner: Mapping[str, Any]
) -> dict[str, Any]:
    """One DRA claim per GPU group, shared by its k pods: all land on the same physical GPU.

    NVIDIA's DRA driver reads the opaque ``GpuConfig``: MPS with a thread share and a pinned
    memory limit per client, so the split need not be equal to what the device plugin offers.
    """
    labels = common_labels(name=name) | {LABEL_GROUP: str(index)}
    selectors = [{"cel": {"expression": dra_product_selector(plan.gpu_product)}}]
    if plan.whole_devices_only:
        selectors.append({"cel": {"expression": "!device.allowMultipleAllocations"}})
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": _metadata(name=claim_name(name=name, index=index, plan=plan), namespace=namespace,
                              owner=owner, labels=labels),
        "spec": {
            "devices": {
                "requests": [{
                    "name": "gpu",
                    "exactly": {
                        "deviceClassName": plan.device_class_name or DRA_DEVICE_CLASS,
                        "selectors": selectors,
                    },
                }],
                "config": [{
                    "requests": ["gpu"],
                    "opaque": {
                        "driver": DRA_DRIVER,
                        "parameters": {
                            "apiVersion": "resource.nvidia.com/v1beta1",
                            "kind": "GpuConfig",
                            "sharing": {
                                "strategy": "MPS",
                                "mpsConfig": {
                                    "defaultActiveThreadPercentage": plan.active_thread_percentage,
                                    "defaultPinnedDeviceMemoryLimit": f"{plan.pinned_memory_limit_mib}Mi",
                                },
                            },
                        },
                    },
                }],
            }
        },
    }


def build_group_statefulset(
    *,
    name: str,
    namespace: str,
    index: int,
    spec: SLMServiceSpec,
    plan: Plan,
    image: str,
    owner: Mapping[str, Any],
    engine_defaults: EngineDefaults = ENGINE_DEFAULTS,
    replaces: Sequence[int] = (),
    node: str | None = None,
) -> dict[str, Any]:
    """The k replicas of GPU group ``index``, started one after another and kept on one node.
    ``replaces``: the indexes of the groups it is made to replace (``planning.moves``); ``node``:
    the node the planner put the group on (``Plan.group_nodes``), its pods are pinned there.

    The pods pass the ``restricted`` Pod Security Standard: a non-root user
    (``engine_defaults.run_as_user``), no privilege escalation, no capabilities, the runtime's
    seccomp profile, and no ServiceAccount token (vLLM never calls the API).
    """
    group_labels = common_labels(name=name) | {LABEL_GROUP: str(index)}
    pod_labels = group_labels | ({LABEL_PACKED: "true"} if plan.shares_mode else {})
    model_arg, volumes, mounts = _model_source(spec.model)
    container = _vllm_container(spec=spec, plan=plan, image=image, model_arg=model_arg, mounts=mounts,
                                defaults=engine_defaults)
    uid = engine_defaults.run_as_user
    pod_spec: dict[str, Any] = {}
    annotations = {ANNOTATION_MECHANISM: plan.mechanism, ANNOTATION_PRODUCT: plan.gpu_product}
    if replaces:
        annotations[ANNOTATION_REPLACES] = ",".join(str(i) for i in sorted(replaces))
    if node:
        annotations[ANNOTATION_NODE] = node
    if plan.shares_mode:
        assert plan.share_request is not None  # NB: every dra-shares plan has one
        container["resources"]["claims"] = [{"name": "gpu"}]
        pod_spec["resourceClaims"] = [{"name": "gpu",
                                       "resourceClaimTemplateName": claim_template_name(name=name, plan=plan)}]
        container["command"] = ["sh", "-c", START_GATE_SCRIPT, "vllm"]
        container["volumeMounts"].append({"name": "start", "mountPath": START_DIR, "readOnly": True})
        container["startupProbe"]["failureThreshold"] = SHARES_STARTUP_FAILURES
        volumes = [*volumes, {"name": "start", "downwardAPI": {"items": [{
            "path": START_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_START}']"}}]}}]
        annotations[ANNOTATION_CLAIM_MEMORY] = str(plan.share_request.memory_mib)
        if plan.share_request.shares is not None:
            annotations[ANNOTATION_CLAIM_SHARES] = str(plan.share_request.shares)
    elif plan.mechanism == "dra":
        container["resources"]["claims"] = [{"name": "gpu"}]
        claim = claim_name(name=name, index=index, plan=plan)
        pod_spec["resourceClaims"] = [{"name": "gpu", "resourceClaimName": claim}]
    else:
        container["resources"].setdefault("limits", {})[plan.resource_name or GPU_RESOURCE] = 1
    pod_spec |= {
        "containers": [container],
        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
                    {"name": "cache", "emptyDir": {}}, *volumes],
        "affinity": _affinity(name=name, index=index, plan=plan, node=node),
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 30,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            # NB: a large model volume is not walked and re-owned at every start, only when its
            # root's group is not fsGroup yet.
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(name=group_name(service=name, index=index), namespace=namespace,
                              owner=owner, labels=group_labels)
        | {"annotations": annotations},
        "spec": {
            "replicas": plan.total_replicas if plan.shares_mode else plan.replicas_per_gpu,
            "serviceName": name,
            # NB: dra-shares replicas are ordered per GPU by the start permission, across services;
            # OrderedReady would also serialise the service's replicas on different GPUs.
            "podManagementPolicy": "Parallel" if plan.shares_mode else "OrderedReady",
            "selector": {"matchLabels": {LABEL_SERVICE: name, LABEL_GROUP: str(index)}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(SERVING_PORT),
                        "prometheus.io/path": "/metrics",
                        ANNOTATION_MECHANISM: plan.mechanism,
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def _vllm_container(
    *, spec: SLMServiceSpec, plan: Plan, image: str, model_arg: str, mounts: list[dict[str, Any]],
    defaults: EngineDefaults,
) -> dict[str, Any]:
    """The vLLM server: the plan's flags (``Plan.vllm_args``), then the user's ``engine.args``."""
    args = [f"--model={model_arg}", f"--port={SERVING_PORT}", f"--served-model-name={spec.served_model_name}"]
    if spec.revision:
        args.append(f"--revision={spec.revision}")
    args += plan.vllm_args() + list(spec.engine.args)

    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    cpu = spec.engine.cpu or defaults.cpu_request
    memory = spec.engine.memory or defaults.memory_request
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = limits["memory"] = memory
    if defaults.ephemeral_storage_request:
        requests["ephemeral-storage"] = defaults.ephemeral_storage_request
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}

    container: dict[str, Any] = {
        "name": "vllm",
        "image": image,
        # NB: the module, not the `vllm serve` CLI: the CLI fails under vLLM's CPU build (it asks
        # for the "vllm" distribution's version), and the profiler measures the same entry point.
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": args,
        "ports": [{"name": "http", "containerPort": SERVING_PORT, "protocol": "TCP"}],
        "resources": resources,
        # NB: loading weights and capturing CUDA graphs takes minutes; the startup probe allows it
        # so the liveness of a slow start isn't confused with a dead server.
        "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10,
                         "timeoutSeconds": 5, "failureThreshold": 90},
        # NB: at batch B* the server's event loop can be slow to answer /health; a 1 s timeout
        # would let liveness kill a busy, healthy replica.
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5, "timeoutSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 15,
                          "timeoutSeconds": 10, "failureThreshold": 6},
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}, {"name": "cache", "mountPath": CACHE_DIR},
                         *mounts],
        "env": _vllm_env(spec),
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    return container


def _vllm_env(spec: SLMServiceSpec) -> list[dict[str, Any]]:
    """The cache folders (unless ``engine.env`` sets them), the user's ``engine.env``, then the
    Secret references. NB: in this order so a user's value can say ``$(HOME)``: Kubernetes expands
    only the variables listed before it."""
    user = {k for k, _ in spec.engine.env}
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in CACHE_ENV if k not in user]
    env += [{"name": k, "value": v} for k, v in spec.engine.env]
    refs = ((HF_TOKEN_ENV, spec.engine.hf_token_secret_ref), (API_KEY_ENV, spec.engine.api_key_secret_ref))
    for variable, ref in refs:
        if ref is not None:
            env.append({"name": variable, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def _affinity(*, name: str, index: int, plan: Plan, node: str | None = None) -> dict[str, Any]:
    """Nodes of the plan's product and sharing kind (``node``: that node only, by name); the group's
    pods together on one node."""
    # GPU feature discovery may label shared nodes "<product>-SHARED"; both are this product.
    node_terms = [{"key": LABEL_GPU_PRODUCT, "operator": "In",
                   "values": [plan.gpu_product, f"{plan.gpu_product}{SHARED_PRODUCT_SUFFIX}"]}]
    # NB: a device-plugin slot looks the same on an MPS, a time-sliced and an exclusive node; only
    # the strategy label tells them apart, and landing on the wrong kind breaks the memory budget.
    if plan.mechanism in ("mps", "time-slicing"):
        node_terms.append({"key": LABEL_GPU_SHARING, "operator": "In", "values": [plan.mechanism]})
    elif plan.mechanism == "exclusive":
        node_terms.append({"key": LABEL_GPU_SHARING, "operator": "NotIn", "values": ["mps", "time-slicing"]})
    term: dict[str, Any] = {"matchExpressions": node_terms}
    if node:
        # NB: by name (a field), not by the hostname label, which need not equal the node's name.
        term["matchFields"] = [{"key": "metadata.name", "operator": "In", "values": [node]}]
    node_affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
    if plan.shares_mode:
        # Replicas spread over GPUs as their claims fit; fill nodes already holding shared replicas
        # (of any service) before opening new ones, then those of this service.
        return {"nodeAffinity": node_affinity, "podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {LABEL_PACKED: "true"}},
                                                    "namespaceSelector": {},
                                                    "topologyKey": "kubernetes.io/hostname"}},
                {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {LABEL_SERVICE: name}},
                                                   "topologyKey": "kubernetes.io/hostname"}},
            ]}}
    return {
        "nodeAffinity": node_affinity,
        # The replicas of one group must share a node (and, with DRA, one GPU).
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {LABEL_SERVICE: name, LABEL_GROUP: str(index)}},
                "topologyKey": "kubernetes.io/hostname",
            }],
            # Fill nodes already serving this model before spreading to new ones.
            "preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 50,
                "podAffinityTerm": {"labelSelector": {"matchLabels": {LABEL_SERVICE: name}},
                                    "topologyKey": "kubernetes.io/hostname"},
            }],
        },
    }


def _model_source(model: str) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """``pvc://claim/path`` mounts the claim read-only; anything else is passed to vLLM as is."""
    if not model.startswith(PVC_SCHEME):
        return model, [], []
    claim, _, path = model[len(PVC_SCHEME):].partition("/")
    volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    mount = {"name": "model", "mountPath": f"{MODEL_MOUNT}/{claim}", "readOnly": True}
    return f"{MODEL_MOUNT}/{claim}/{path}".rstrip("/"), [volume], [mount]
