"""Every name the operator shares with the cluster, in one place: the bottom layer.

API group and kinds, our labels and annotations, the labels and resource names NVIDIA's GPU
feature discovery, device plugin and DRA driver publish, ConfigMap keys, the sharing modes and
mechanisms. Everything else (the package, ``hack/``, ``bench/``, the tests' helpers) imports them
from here; nothing here imports anything of ours.

NB: tests that check what a user sees (a label on a pod, a CRD field) keep writing the literal
string: they check this module as much as the code that uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, get_args

# --- Our API ------------------------------------------------------------------------------------

#: API group of our custom resources and the prefix of every label/annotation we own.
GROUP: Final = "slm.pareto.dev"
#: Served (and storage) version of the SLMService CRD.
API_VERSION: Final = "v1alpha1"
KIND: Final = "SLMService"
PLURAL: Final = "slmservices"
#: Field manager of our server-side applies, and the value of ``app.kubernetes.io/managed-by``.
OPERATOR_NAME: Final = "slm-operator"

# --- Our labels and annotations -----------------------------------------------------------------

LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = OPERATOR_NAME
#: ``app.kubernetes.io/managed-by=slm-operator``: every object the operator or its profiler made.
MANAGED_BY_SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
#: The SLMService (name, same namespace) a child belongs to.
LABEL_SERVICE: Final = f"{GROUP}/service"
#: The index of a GPU group (``0``, ``1``, ...) inside its service.
LABEL_GROUP: Final = f"{GROUP}/group"
#: ``app.kubernetes.io/component`` of every vLLM pod (and of the Service in front of them).
MODEL_SERVER_COMPONENT: Final = "model-server"
#: On a group's StatefulSet and pods: the mechanism it was planned with (``mps``, ``dra``, ...).
ANNOTATION_MECHANISM: Final = f"{GROUP}/sharing"
#: On a group's StatefulSet: the GPU product (node label spelling) it was planned for.
ANNOTATION_PRODUCT: Final = f"{GROUP}/gpu-product"
#: On a device-plugin group's StatefulSet: the node the planner put it on (its pods are pinned there).
ANNOTATION_NODE: Final = f"{GROUP}/node"
#: On a group's StatefulSet made to replace others (a move, see ``planning.moves``): the indexes of
#: the groups it replaces (``0,1``); they are deleted once it is Ready.
ANNOTATION_REPLACES: Final = f"{GROUP}/replaces"
#: On the pods of ``dra-shares`` replicas (several services per GPU): ``true``. Their vLLM waits for
#: the start permission, and the scheduler is asked to fill nodes already holding such pods.
LABEL_PACKED: Final = f"{GROUP}/packed"
#: On a ``dra-shares`` pod: set to ``START_GRANTED`` by the operator when it may start vLLM (one
#: starting replica per physical GPU at a time); the pod reads it through a downwardAPI volume.
ANNOTATION_START: Final = f"{GROUP}/start"
START_GRANTED: Final = "granted"
#: On a ``dra-shares`` pod: the GPU it was granted its start on (``<driver>/<pool>/<device>``).
ANNOTATION_START_DEVICE: Final = f"{GROUP}/start-device"
#: On a ``dra-shares`` pod: when the start permission was granted (RFC 3339, microseconds).
ANNOTATION_START_AT: Final = f"{GROUP}/start-granted-at"
#: On a device-plugin GPU node, set by a platform engineer: the NVIDIA device plugin's allocation
#: policy for shared replicas on that node (``distributed`` or ``packed``). NB: the plugin publishes
#: no such label; unset, the operator assumes its SLM_DEVICE_PLUGIN_ALLOCATION_POLICY.
LABEL_ALLOCATION_POLICY: Final = f"{GROUP}/gpu-allocation-policy"
#: On a ``dra-shares`` StatefulSet: what each replica's claim consumes (memory MiB; shares, absent
#: when the claim asks none), so capacity promised to replicas not yet allocated is not planned twice.
ANNOTATION_CLAIM_MEMORY: Final = f"{GROUP}/claim-memory-mib"
ANNOTATION_CLAIM_SHARES: Final = f"{GROUP}/claim-shares"

# --- Gateway API Inference Extension (spec.routing.inferencePool) ------------------------------

INFERENCE_POOL_API_VERSION: Final = "inference.networking.k8s.io/v1"
INFERENCE_POOL_KIND: Final = "InferencePool"
#: The CRD that must be installed for ``spec.routing.inferencePool`` (named in the condition).
INFERENCE_POOL_CRD: Final = "inferencepools.inference.networking.k8s.io"
#: How to install it, as the Routed condition tells a user whose cluster lacks it.
INFERENCE_POOL_CRD_INSTALL: Final = (
    "kubectl apply -f https://github.com/kubernetes-sigs/gateway-api-inference-extension/releases/download/"
    "v1.5.0/v1-manifests.yaml (or your inference gateway's install guide)")
#: What the endpoint picker does when it cannot answer (the API's enum; FailClose is its default).
FailureMode = Literal["FailOpen", "FailClose"]
FAILURE_MODES: Final[tuple[FailureMode, ...]] = ("FailOpen", "FailClose")
#: Where a service's requests can go (``status`` condition ``Routed``): the Service only (no
#: ``spec.routing.inferencePool``), an InferencePool too, or the Service only because the cluster
#: lacks the InferencePool CRD.
Routing = Literal["service", "inference-pool", "crd-missing"]

# --- NVIDIA's names -----------------------------------------------------------------------------

#: The device plugin's extended resource; with ``renameByDefault`` shared GPUs use the second.
GPU_RESOURCE: Final = "nvidia.com/gpu"
SHARED_GPU_RESOURCE: Final = "nvidia.com/gpu.shared"
DEVICE_PLUGIN_RESOURCES: Final = (GPU_RESOURCE, SHARED_GPU_RESOURCE)
#: GPU feature discovery's node labels.
LABEL_GPU_PRODUCT: Final = "nvidia.com/gpu.product"
LABEL_GPU_MEMORY_MIB: Final = "nvidia.com/gpu.memory"
LABEL_GPU_COUNT: Final = "nvidia.com/gpu.count"
LABEL_GPU_PRESENT: Final = "nvidia.com/gpu.present"
#: The device plugin's sharing labels: slots per GPU, and ``mps`` or ``time-slicing``.
LABEL_GPU_REPLICAS: Final = "nvidia.com/gpu.replicas"
LABEL_GPU_SHARING: Final = "nvidia.com/gpu.sharing-strategy"
#: Feature discovery appends this to the product of shared nodes (unless ``renameByDefault``).
SHARED_PRODUCT_SUFFIX: Final = "-SHARED"
#: NVIDIA's DRA driver, and the DeviceClass it installs.
DRA_DRIVER: Final = "gpu.nvidia.com"
DRA_DEVICE_CLASS: Final = "gpu.nvidia.com"
#: Capacities of a GPU that NVIDIA's DRA driver publishes with ``allowMultipleAllocations: true``
#: under ``--consumable-shares`` (feature gate ConsumableShares): ``memory`` always (bytes, request
#: policy step 1Mi), ``shares`` only with an integer N (``--consumable-shares=N``: N shares per GPU,
#: default/min 1 per claim). With ``memory`` or ``unlimited`` the device has no ``shares`` capacity.
DRA_CAPACITY_MEMORY: Final = "memory"
DRA_CAPACITY_SHARES: Final = "shares"

# --- Sharing ------------------------------------------------------------------------------------

#: What a user asks for in ``spec.gpu.sharing`` (and the operator's default).
Sharing = Literal["auto", "dra-shares", "mps", "time-slicing", "dra", "exclusive"]
#: How a plan shares a GPU: ``auto`` resolved to one of these. ``dra-shares``: every replica its own
#: ResourceClaim consuming a share of a DRA device that allows multiple allocations, so replicas of
#: several services share one GPU; ``dra``: one claim per GPU group of one service.
Mechanism = Literal["dra-shares", "dra", "mps", "time-slicing", "exclusive"]
#: How a node's GPUs are shared, as the device plugin's strategy label (``none``) or DRA says
#: (``dra``: whole devices; ``dra-shares``: devices with ``allowMultipleAllocations``).
PoolSharing = Literal["none", "mps", "time-slicing", "dra", "dra-shares"]

SHARING_MODES: Final[tuple[Sharing, ...]] = get_args(Sharing)
MECHANISMS: Final[tuple[Mechanism, ...]] = get_args(Mechanism)
POOL_SHARINGS: Final[tuple[PoolSharing, ...]] = get_args(PoolSharing)
#: The mechanisms that put several replicas on one GPU.
SHARED_MECHANISMS: Final[tuple[Mechanism, ...]] = ("dra-shares", "dra", "mps", "time-slicing")
#: The node pools each mechanism draws from (``exclusive`` takes whole GPUs of unshared nodes).
POOL_OF_MECHANISM: Final[Mapping[str, PoolSharing]] = {
    "dra-shares": "dra-shares", "dra": "dra", "mps": "mps", "time-slicing": "time-slicing", "exclusive": "none",
}

#: How the NVIDIA device plugin picks the GPUs behind the shared slots (MPS or time-slicing
#: replicas) it hands a container: ``distributed`` (its default) spreads them over the node's GPUs,
#: ``packed`` (its PR #1621) fills as few GPUs as it can, best effort. The scheduler sees neither:
#: to it a node's slots are one pool.
AllocationPolicy = Literal["distributed", "packed"]
ALLOCATION_POLICIES: Final[tuple[AllocationPolicy, ...]] = get_args(AllocationPolicy)
DEFAULT_ALLOCATION_POLICY: Final[AllocationPolicy] = "distributed"
#: What a plan can promise about the physical GPU behind its replicas (``status.placement.
#: packingGuarantee``): ``one-gpu``: each unit the plan counts (a ``dra`` group's claim, a
#: ``dra-shares`` replica's claim, an ``exclusive`` replica) is on one physical GPU, allocated by
#: the scheduler; ``node-slot-pool``: a device-plugin group's k replicas are k slots of one node's
#: pool, on whichever of its GPUs the plugin's allocation policy picks.
PackingGuarantee = Literal["one-gpu", "node-slot-pool"]
#: The mechanisms whose replicas are device-plugin slots (``nvidia.com/gpu`` with sharing).
DEVICE_PLUGIN_SHARED_MECHANISMS: Final[tuple[Mechanism, ...]] = ("mps", "time-slicing")

# --- Memory -------------------------------------------------------------------------------------

#: Share of a GPU's memory replicas may budget for; the rest is CUDA contexts, the MPS server,
#: allocator fragmentation and the activations vLLM profiles at start.
USABLE_MEMORY_FRACTION: Final = 0.92
GIB: Final = 1024**3

# --- Profiles -----------------------------------------------------------------------------------

#: Keys of a profile result ConfigMap (written by the profiler Job or the local runner).
PROFILE_KEY: Final = "profile.json"
REQUEST_KEY: Final = "request.json"
SWEEP_KEY: Final = "sweep.json"
#: Key of a result ConfigMap whose profiler Job could not run: why (``reason``, ``message``). While
#: it is there, services of that cache key are planned from the estimate; deleting it measures again.
FALLBACK_KEY: Final = "fallback.json"
#: The GPU a profiler Job asked for, in words (``ProfilerGpu.describe``), for its progress message.
ANNOTATION_PROFILER_GPU: Final = f"{GROUP}/profiler-gpu"
#: On a profiler Job that claims a whole consumable (``dra-shares``) device: the capacity its claim
#: requests, as JSON (``{"memory": "81920Mi", "shares": "120"}``): all of it, so the GPU is its alone.
ANNOTATION_PROFILER_CAPACITY: Final = f"{GROUP}/profiler-capacity"
#: Result ConfigMaps are named ``slm-profile-<cache key>``.
PROFILE_CONFIGMAP_PREFIX: Final = "slm-profile-"
#: The container port every vLLM replica serves on.
SERVING_PORT: Final = 8000


def group_name(*, service: str, index: int) -> str:
    """The StatefulSet of GPU group ``index`` of SLMService ``service``."""
    return f"{service}-g{index}"


def engine_labels(*, service: str) -> dict[str, str]:
    """The labels that select every vLLM pod of SLMService ``service``: its Service, NetworkPolicy
    and InferencePool select by them, and ``status.selector`` (the scale subresource's) spells them."""
    return {LABEL_SERVICE: service, LABEL_COMPONENT: MODEL_SERVER_COMPONENT}


def label_selector(labels: Mapping[str, str]) -> str:
    """``labels`` as a label selector string (``k=v,k2=v2``, sorted)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
