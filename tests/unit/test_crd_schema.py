"""Static checks of the SLMService CRD (crd/slmservices.yaml) and the samples written against it.

No cluster: these read the YAML. The API server's own checks (structural schema, CEL compilation
and cost, the messages users see) run in tests/integration/test_crd_validation.py.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from hack import sync_crds

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crd" / "slmservices.yaml"
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))



@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    return only


@pytest.fixture(scope="module")
def root_schema(version: dict[str, Any]) -> dict[str, Any]:
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def spec_schema(root_schema: dict[str, Any]) -> dict[str, Any]:
    return root_schema["properties"]["spec"]


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below ``schema`` (itself included) with its dotted path; ``[]`` for items."""
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")


def resolve(spec_schema: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    """The schema node of a spec path such as ``engine.env[].name``, or None if there is none."""
    node = spec_schema
    for part in dotted.replace("[]", "").split("."):
        while node.get("type") == "array":
            node = node["items"]
        node = (node.get("properties") or {}).get(part)
        if node is None:
            return None
    return node


def test_names_scope_and_version(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "slmservices.slm.pareto.dev"
    spec = crd["spec"]
    assert spec["group"] == "slm.pareto.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "SLMService", "listKind": "SLMServiceList", "plural": "slmservices",
        "singular": "slmservice", "shortNames": ["slms"], "categories": ["slm"],
    }
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    # kubectl scale, an HPA and KEDA drive spec.scale.gpus; the selector is written by the operator.
    assert version["subresources"] == {"status": {}, "scale": {
        "specReplicasPath": ".spec.scale.gpus", "statusReplicasPath": ".status.placement.gpus",
        "labelSelectorPath": ".status.selector"}}


def test_names_match_the_operator_constants(crd: dict[str, Any], version: dict[str, Any]) -> None:
    from slm_operator import constants

    assert crd["spec"]["group"] == constants.GROUP
    assert version["name"] == constants.API_VERSION
    assert crd["spec"]["names"]["kind"] == constants.KIND
    assert crd["spec"]["names"]["plural"] == constants.PLURAL


def test_every_field_has_a_description(root_schema: dict[str, Any]) -> None:
    # NB: metadata is the exception the API server imposes: it refuses anything but `type` there.
    missing = [path for path, node in walk(root_schema, "")
               if path != ".metadata" and not node.get("description", "").strip()]
    assert missing == []


def test_schema_is_structural(root_schema: dict[str, Any]) -> None:
    """The parts of the structural-schema rules that a mistake in hand-written YAML breaks."""
    problems = []
    for path, node in walk(root_schema, ""):
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        if "type" not in node and not int_or_string:
            problems.append(f"{path}: no type")
        if int_or_string and node.get("anyOf") != [{"type": "integer"}, {"type": "string"}]:
            problems.append(f"{path}: int-or-string needs anyOf [integer, string]")
        if not int_or_string and ({"anyOf", "oneOf", "allOf", "not"} & node.keys()):
            problems.append(f"{path}: junctors are not used outside int-or-string")
        if "$ref" in node or ("properties" in node and "additionalProperties" in node):
            problems.append(f"{path}: $ref, or properties with additionalProperties")
        if node.get("type") == "array" and "items" not in node:
            problems.append(f"{path}: array without items")
        if node.get("x-kubernetes-list-type") == "map":
            keys = node.get("x-kubernetes-list-map-keys") or []
            required = node["items"].get("required") or []
            if not keys or not set(keys) <= set(required):
                problems.append(f"{path}: list-type map keys {keys} must be required in items ({required})")
        for name in node.get("required") or ():
            if name not in (node.get("properties") or {}):
                problems.append(f"{path}: required {name!r} is not a property")
    assert problems == []


#: Object defaults that are not {}: scale.gpus cannot default on its own (it would sit beside every
#: targetTokensPerSecond), yet the scale subresource needs it stored for a service without spec.scale.
OBJECT_DEFAULTS = {".spec.scale": {"gpus": 1}}


def test_defaults_are_valid_values(root_schema: dict[str, Any]) -> None:
    for path, node in walk(root_schema, ""):
        if "default" not in node:
            continue
        value = node["default"]
        if "enum" in node:
            assert value in node["enum"], path
        if node.get("type") in ("integer", "number"):
            assert node.get("minimum", value) <= value <= node.get("maximum", value), path
        if node.get("type") == "object" and path in OBJECT_DEFAULTS:
            assert value == OBJECT_DEFAULTS[path], path
        elif node.get("type") == "object":
            assert value == {}, f"{path}: object defaults are {{}} so nested defaults fill them"


def test_every_number_in_spec_has_a_range(spec_schema: dict[str, Any]) -> None:
    """Numbers get minimum and maximum, or a CEL rule on the field itself that bounds them."""
    unbounded = [
        path for path, node in walk(spec_schema, "spec")
        if node.get("type") in ("integer", "number")
        and not ({"minimum", "maximum"} <= node.keys() or node.get("x-kubernetes-validations"))
    ]
    assert unbounded == []


def test_strings_and_lists_in_spec_are_bounded_for_cel_cost(spec_schema: dict[str, Any]) -> None:
    unbounded = []
    for path, node in walk(spec_schema, "spec"):
        if node.get("type") == "string" and "enum" not in node and "maxLength" not in node:
            unbounded.append(path)
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(path)
    assert unbounded == []


def all_rules(root_schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(path, rule) for path, node in walk(root_schema, "") for rule in node.get("x-kubernetes-validations") or ()]


def test_there_are_cel_rules(root_schema: dict[str, Any]) -> None:
    # Guards the next two tests against passing vacuously after a refactor of walk().
    assert len(all_rules(root_schema)) >= 15


def test_every_cel_rule_has_a_message(root_schema: dict[str, Any]) -> None:
    silent = [
        (path, rule["rule"]) for path, rule in all_rules(root_schema)
        if not (rule.get("message") or rule.get("messageExpression") or "").strip()
    ]
    assert silent == []


def test_every_cel_message_names_a_real_spec_field(root_schema: dict[str, Any], spec_schema: dict[str, Any]) -> None:
    """A message must point the user at a field; a renamed field must not leave a stale message."""
    dotted = re.compile(r"\b[a-zA-Z]+(?:\[\])?(?:\.[a-zA-Z]+(?:\[\])?)+\b")
    problems = []
    for path, rule in all_rules(root_schema):
        message = rule.get("message", "")
        # NB: domain names (nvidia.com/gpu.product) and "e.g" also look dotted; they are not fields.
        names = [n.removeprefix("spec.") for n in dotted.findall(message)
                 if n not in ("e.g", "i.e") and not re.search(r"(^|\.)(com|io|dev)(\.|$)", n)]
        # metadata.name is the one field outside the schema a rule may check (root-level CEL).
        names = [n for n in names if n != "metadata.name"] if "metadata.name" in names else names
        fields = [n for n in names if resolve(spec_schema, n) is not None] or (
            ["metadata.name"] if "self.metadata.name" in rule.get("rule", "") else [])
        if not fields:
            problems.append(f"{path}: {message!r} names no spec field")
        # A message may also point at status (e.g. status.endpoint); that has to exist as well.
        stale = [n for n in names if resolve(spec_schema, n) is None and resolve(root_schema, n) is None]
        if stale:
            problems.append(f"{path}: {message!r} names fields that do not exist: {stale}")
    assert problems == []


def test_engine_args_refuse_every_flag_the_operator_owns(spec_schema: dict[str, Any]) -> None:
    from slm_operator.spec import OPERATOR_OWNED_FLAGS

    rules = spec_schema["properties"]["engine"]["properties"]["args"]["x-kubernetes-validations"]
    # NB: a prefix test ('--flag'.startsWith(the argument's flag part)) refuses every abbreviation.
    guarded = {flag for flag in OPERATOR_OWNED_FLAGS for rule in rules
               if f"'{flag}'.startsWith(" in rule["rule"] and f"must not set {flag}:" in rule["message"]}
    assert guarded == set(OPERATOR_OWNED_FLAGS)


def test_printer_columns(version: dict[str, Any], root_schema: dict[str, Any]) -> None:
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")] == [
        "Model", "GPUs", "Replicas/GPU", "Batch", "Tok/s", "Ready", "Phase", "Age"]
    assert {name for name, c in columns.items() if c.get("priority") == 1} == {
        "Sharing", "Packing", "Source", "GPU", "Endpoint", "Message"}
    # Every column reads a field the schema declares, with the type the schema gives it.
    for name, column in columns.items():
        if name == "Age":
            assert column["jsonPath"] == ".metadata.creationTimestamp"
            continue
        node = root_schema
        for part in column["jsonPath"].lstrip(".").split("."):
            node = node["properties"][part]
        assert node["type"] == column["type"], name


def test_status_is_described_not_free_form(root_schema: dict[str, Any]) -> None:
    status = root_schema["properties"]["status"]
    assert not status.get("x-kubernetes-preserve-unknown-fields")
    assert set(status["properties"]) == {
        "phase", "conditions", "observedGeneration", "profile", "placement", "endpoint", "message", "selector"}
    assert status["properties"]["phase"]["enum"] == [
        "Pending", "Profiling", "Planning", "Deploying", "Ready", "Degraded", "Failed"]


def test_status_profile_holds_every_key_the_operator_writes(root_schema: dict[str, Any]) -> None:
    """The API server silently prunes unknown status keys, so a key the writer adds must be declared."""
    from slm_operator.profiling.types import Profile
    from slm_operator.status import profile_summary

    profile = Profile(
        source="measured", gpu_product="NVIDIA-H100-80GB-HBM3", batch_size=64,
        tokens_per_second_per_replica=1000.0, tokens_per_second_per_gpu=4000.0, replicas_to_saturate=4,
        memory_per_replica_gib=6.0, inter_token_latency_ms=20.0, measured_at="2025-01-01T00:00:00Z",
        profile_ref="slm-system/profile-x", engine="vllm", explanation="because",
    )
    declared = set(root_schema["properties"]["status"]["properties"]["profile"]["properties"])
    assert set(profile_summary(profile)) <= declared


@pytest.mark.parametrize("sharing", ["mps", "time-slicing", "dra", "exclusive"])
@pytest.mark.parametrize("policy", ["packed", None])
def test_status_placement_holds_every_key_the_operator_writes(
    root_schema: dict[str, Any], sharing: str, policy: str | None
) -> None:
    """Placement keys (packingGuarantee, allocationPolicy, slotsPerGPU, ...) are declared, with their enums."""
    from slm_operator.planning.inventory import build_inventory
    from slm_operator.planning.plan import make_plan
    from slm_operator.status import serving
    from tests.unit.factories import H100, dra_slice, node, profile, spec

    gpu_node = node("n", sharing=sharing, replicas=1 if sharing in ("dra", "exclusive") else 4)
    if policy:
        gpu_node["metadata"]["labels"]["slm.pareto.dev/gpu-allocation-policy"] = policy
    inventory = build_inventory(nodes=[gpu_node], resource_slices=[dra_slice("n")] if sharing == "dra" else ())
    plan = make_plan(spec=spec(gpu={"product": H100, "sharing": sharing}), profile=profile(), inventory=inventory)
    placement = serving(name="opt", plan=plan, groups=[], endpoint="e").fields["placement"]
    schema = root_schema["properties"]["status"]["properties"]["placement"]
    assert check_against_schema(placement, schema, "placement") == []
    assert ("allocationPolicy" in placement) == (sharing in ("mps", "time-slicing"))


def check_against_schema(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Unknown keys (which the API server would silently drop), wrong enum values and missing required keys."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    problems = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        problems += [f"{path}.{key}: unknown field" for key in value if key not in props]
        problems += [f"{path}.{key}: required" for key in schema.get("required") or () if key not in value]
        for key, child in value.items():
            if key in props:
                problems += check_against_schema(child, props[key], f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            problems += check_against_schema(item, schema["items"], f"{path}[{i}]")
    elif "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} not in {schema['enum']}")
    return problems


def test_the_five_samples_exist() -> None:
    assert {p.name for p in SAMPLES} >= {
        "opt-125m-static.yaml", "qwen2.5-0.5b-estimate.yaml", "opt-1.3b-auto.yaml",
        "llama-3.2-1b-dra.yaml", "exclusive-l4.yaml",
    }


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_uses_only_declared_fields(sample: pathlib.Path, spec_schema: dict[str, Any]) -> None:
    text = sample.read_text()
    assert text.lstrip().startswith("#"), "samples open with a comment saying what they show"
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "slm.pareto.dev/v1alpha1" and doc["kind"] == "SLMService"
    assert check_against_schema(doc["spec"], spec_schema, "spec") == []


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_is_accepted_by_the_operators_parser(sample: pathlib.Path) -> None:
    from slm_operator.spec import parse_spec

    parsed = parse_spec(yaml.safe_load(sample.read_text())["spec"])
    assert parsed.model


def test_check_against_schema_catches_a_typo(spec_schema: dict[str, Any]) -> None:
    problems = check_against_schema({"model": "m", "scale": {"gpu": 1}, "gpu": {"sharing": "mig"}}, spec_schema, "spec")
    assert problems == ["spec.scale.gpu: unknown field",
                        "spec.gpu.sharing: 'mig' not in "
                        "['auto', 'dra-shares', 'mps', 'time-slicing', 'dra', 'exclusive']"]


def test_crd_copies_are_in_sync() -> None:
    assert sync_crds.drifted_copies() == [], "run `make crds` (python hack/sync_crds.py)"


def test_copies_say_they_are_generated() -> None:
    for copy in sync_crds.COPIES:
        head = (ROOT / copy).read_text().splitlines()[0]
        assert "GENERATED" in head and "crd/slmservices.yaml" in head


def test_sync_check_reports_an_edited_copy(tmp_path: pathlib.Path) -> None:
    for rel in (sync_crds.SOURCE, *sync_crds.COPIES):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    assert sync_crds.drifted_copies(root=tmp_path) == []
    edited = sync_crds.COPIES[1]
    (tmp_path / edited).write_text((tmp_path / edited).read_text().replace("maxLength: 512", "maxLength: 513", 1))
    assert sync_crds.drifted_copies(root=tmp_path) == [edited]
    (tmp_path / sync_crds.COPIES[0]).unlink()
    assert sync_crds.drifted_copies(root=tmp_path) == list(sync_crds.COPIES)
