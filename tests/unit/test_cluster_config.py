"""The simulated-node config of hack/cluster.py: strict validation and the objects it implies.

Also the command's refusals that need no running cluster (bad config, missing binaries, a taken
port), checked through the real CLI with stand-in binaries that record being started; the
harness's ``wait_for`` (hack/localcluster/cluster.py) and the kind config.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.localcluster import config as nodeconfig
from hack.localcluster.cluster import REPO, cluster_script, wait_for
from hack.localcluster.config import ConfigError, parse_config
from slm_operator.constants import POOL_SHARINGS

DEFAULT_CONFIG = REPO / "hack" / "gpu-nodes.yaml"


def h100(**overrides: Any) -> dict[str, Any]:
    gpu = {"product": "NVIDIA-H100-80GB-HBM3", "memoryMiB": 81559, "count": 8, "sharing": "mps", "replicas": 4}
    gpu.update(overrides)
    return gpu


def one_node(**node: Any) -> dict[str, Any]:
    return {"nodes": [{"name": "n0", **node}]}


# ------------------------------------------------------------------------------------ validation


def test_default_config_is_valid_and_covers_every_sharing_mode() -> None:
    config = nodeconfig.load_config(path=DEFAULT_CONFIG)
    assert {n.gpu.sharing for n in config.nodes if n.gpu} == set(POOL_SHARINGS)


@pytest.mark.parametrize(
    ("document", "bad_key", "allowed"),
    [
        ({"nodes": [{"name": "n0"}], "node": []}, "node", "defaults, nodes"),
        ({"nodes": [{"name": "n0", "gpus": h100()}]}, "nodes[0].gpus", "name, gpu, labels"),
        (one_node(gpu=h100(sharingMode="mps")), "nodes[0].gpu.sharingMode",
         "product, memoryMiB, count, sharing, replicas"),
        ({"defaults": {"cpus": "8"}, "nodes": [{"name": "n0"}]}, "defaults.cpus",
         "cpu, memory, pods, ephemeralStorage"),
    ],
)
def test_unknown_key_is_named_with_the_allowed_keys(document: dict[str, Any], bad_key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(data=document, source="nodes.yaml")
    message = str(error.value)
    assert message.startswith(f"nodes.yaml: {bad_key}: unknown key")
    assert allowed in message


@pytest.mark.parametrize(
    ("document", "field", "hint"),
    [
        (one_node(gpu=h100(sharing="shared")), "nodes[0].gpu.sharing", "none, mps, time-slicing, dra"),
        (one_node(gpu=h100(sharing="none", replicas=2)), "nodes[0].gpu.replicas", "must be 1"),
        (one_node(gpu={k: v for k, v in h100().items() if k != "replicas"}), "nodes[0].gpu.replicas", "is required"),
        (one_node(gpu={k: v for k, v in h100().items() if k != "product"}), "nodes[0].gpu.product", "is required"),
        (one_node(gpu=h100(count=0)), "nodes[0].gpu.count", "positive integer"),
        (one_node(gpu=h100(count=True)), "nodes[0].gpu.count", "positive integer"),
        (one_node(gpu=h100(product="NVIDIA H100")), "nodes[0].gpu.product", "label-safe"),
        (one_node(memory="lots"), "nodes[0].memory", "Kubernetes quantity"),
        (one_node(labels={"nvidia.com/gpu.product": "X"}), "nodes[0].labels.nvidia.com/gpu.product",
         "derived from `gpu`"),
        (one_node(labels={"team": 7}), "nodes[0].labels.team", "quote numbers"),
        ({"nodes": [{"name": "Bad_Name"}]}, "nodes[0].name", "not a valid node name"),
        ({"nodes": [{"name": "a"}, {"name": "a"}]}, "nodes[1].name", "duplicate"),
        ({"nodes": []}, "nodes", "non-empty list"),
        ([], "top level", "must be a mapping"),
    ],
)
def test_invalid_values_name_the_field_and_the_fix(document: Any, field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(data=document, source="nodes.yaml")
    assert str(error.value).startswith(f"nodes.yaml: {field}: ")
    assert hint in str(error.value)


def test_unreadable_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        nodeconfig.load_config(path=tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("nodes: [\n")
    with pytest.raises(ConfigError, match=f"{broken}: not valid YAML"):
        nodeconfig.load_config(path=broken)


def test_node_resources_fall_back_to_defaults_then_builtins() -> None:
    config = parse_config(data={"defaults": {"cpu": 16}, "nodes": [{"name": "a"}, {"name": "b", "cpu": "500m"}]})
    a, b = config.nodes
    assert (a.cpu, b.cpu) == ("16", "500m")
    assert a.memory == b.memory and a.memory  # the built-in default, whatever it is, applies to both


# ---------------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("sharing", ["none", "mps", "time-slicing"])
def test_device_plugin_node_advertises_count_times_replicas(sharing: str) -> None:
    replicas = 1 if sharing == "none" else 3
    gpu = h100(sharing=sharing, count=2, replicas=replicas)
    node = parse_config(data=one_node(gpu=gpu)).nodes[0]

    manifest = nodeconfig.node_manifest(node=node, index=0)

    for field in ("capacity", "allocatable"):
        assert manifest["status"][field]["nvidia.com/gpu"] == str(gpu["count"] * replicas)
    labels = manifest["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == gpu["product"]
    assert labels["nvidia.com/gpu.memory"] == str(gpu["memoryMiB"])
    assert labels["nvidia.com/gpu.count"] == str(gpu["count"])
    assert labels["nvidia.com/gpu.replicas"] == str(replicas)
    assert labels["nvidia.com/gpu.sharing-strategy"] == sharing
    assert labels["nvidia.com/mps.capable"] == ("true" if sharing == "mps" else "false")
    assert labels["nvidia.com/gpu.present"] == "true"
    assert manifest["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"


def test_dra_node_has_no_gpu_capacity_and_a_resourceslice_per_node() -> None:
    gpu = h100(sharing="dra", count=3)
    del gpu["replicas"]
    config = parse_config(data={"nodes": [{"name": "d0", "gpu": gpu}, {"name": "d1", "gpu": gpu}, {"name": "cpu"}]})

    manifest = nodeconfig.node_manifest(node=config.nodes[0], index=0)
    assert "nvidia.com/gpu" not in manifest["status"]["capacity"]
    assert manifest["metadata"]["labels"]["nvidia.com/dra.present"] == "true"
    assert "nvidia.com/gpu.present" not in manifest["metadata"]["labels"]

    objects = nodeconfig.dra_manifests(config=config)
    classes = [o for o in objects if o["kind"] == "DeviceClass"]
    slices = [o for o in objects if o["kind"] == "ResourceSlice"]
    assert [c["metadata"]["name"] for c in classes] == ["gpu.nvidia.com"]
    assert sorted(s["spec"]["nodeName"] for s in slices) == ["d0", "d1"]
    for rs in slices:
        assert rs["spec"]["driver"] == "gpu.nvidia.com"
        assert rs["spec"]["pool"]["name"] == rs["spec"]["nodeName"]
        devices = rs["spec"]["devices"]
        assert [d["name"] for d in devices] == [f"gpu-{i}" for i in range(gpu["count"])]
        for device in devices:
            assert device["attributes"]["productName"] == {"string": gpu["product"]}
            assert device["attributes"]["type"] == {"string": "gpu"}
            assert device["capacity"]["memory"] == {"value": f"{gpu['memoryMiB']}Mi"}


def shared_gpu(**overrides: Any) -> dict[str, Any]:
    gpu = {"product": "NVIDIA-A100-SXM4-80GB", "memoryMiB": 81920, "count": 2, "sharing": "dra-shares"}
    gpu.update(overrides)
    return gpu


def test_dra_shares_devices_are_published_like_nvidias_consumable_shares() -> None:
    config = parse_config(data={"nodes": [{"name": "s0", "gpu": shared_gpu(shares=60)},
                                          {"name": "m0", "gpu": shared_gpu(capacities=["memory"])},
                                          {"name": "d0", "gpu": shared_gpu(sharing="dra")}]})
    assert "nvidia.com/gpu" not in nodeconfig.node_manifest(node=config.nodes[0], index=0)["status"]["capacity"]
    slices = {o["spec"]["nodeName"]: o["spec"]["devices"] for o in nodeconfig.dra_manifests(config=config)
              if o["kind"] == "ResourceSlice"}

    # --consumable-shares=60: memory free-form (default 0), 60 shares of which a claim takes 1 by default
    shared = slices["s0"][1]
    assert shared["name"] == "gpu-1" and shared["allowMultipleAllocations"] is True
    assert shared["capacity"] == {
        "memory": {"value": "81920Mi",
                   "requestPolicy": {"default": "0", "validRange": {"min": "0", "max": "81920Mi", "step": "1Mi"}}},
        "shares": {"value": "60",
                   "requestPolicy": {"default": "1", "validRange": {"min": "1", "max": "60", "step": "1"}}},
    }
    # --consumable-shares=memory: memory only, a claim that asks none takes the whole GPU
    assert slices["m0"][0]["capacity"] == {"memory": {"value": "81920Mi", "requestPolicy": {
        "default": "81920Mi", "validRange": {"min": "1Mi", "max": "81920Mi", "step": "1Mi"}}}}
    # whole devices stay as they were
    assert "allowMultipleAllocations" not in slices["d0"][0]
    assert slices["d0"][0]["capacity"] == {"memory": {"value": "81920Mi"}}


def test_dra_shares_default_share_count() -> None:
    config = parse_config(data=one_node(gpu=shared_gpu()))
    assert config.nodes[0].gpu is not None and config.nodes[0].gpu.shares == nodeconfig.DEFAULT_SHARES == 120


@pytest.mark.parametrize(
    ("gpu", "field", "hint"),
    [
        (shared_gpu(capacities=["shares"]), "nodes[0].gpu.capacities", "must be [memory]"),
        (shared_gpu(capacities=["memory", "compute"]), "nodes[0].gpu.capacities", "must be [memory]"),
        (shared_gpu(capacities="memory"), "nodes[0].gpu.capacities", "must be [memory]"),
        (shared_gpu(capacities=["memory"], shares=8), "nodes[0].gpu.shares", "needs `shares` in gpu.capacities"),
        (shared_gpu(shares=0), "nodes[0].gpu.shares", "positive integer"),
        (shared_gpu(replicas=4), "nodes[0].gpu.replicas", "must be 1"),
        (h100(shares=8), "nodes[0].gpu.shares", "only applies to sharing dra-shares"),
        (shared_gpu(sharing="dra", capacities=["memory"]), "nodes[0].gpu.capacities", "only applies"),
    ],
)
def test_dra_shares_keys_are_checked(gpu: dict[str, Any], field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(data=one_node(gpu=gpu), source="nodes.yaml")
    assert str(error.value).startswith(f"nodes.yaml: {field}: ") and hint in str(error.value)


def test_no_dra_objects_without_dra_nodes() -> None:
    assert nodeconfig.dra_manifests(config=parse_config(data=one_node(gpu=h100()))) == []


def test_nodes_get_distinct_internal_ips() -> None:
    config = parse_config(data={"nodes": [{"name": f"n{i}"} for i in range(300)]})
    addresses = [
        next(a["address"] for a in nodeconfig.node_manifest(node=n, index=i)["status"]["addresses"]
             if a["type"] == "InternalIP")
        for i, n in enumerate(config.nodes)
    ]
    assert len(set(addresses)) == len(addresses)


# ------------------------------------------------------------------- CLI refusals, nothing started


@pytest.fixture
def stand_in_bin(tmp_path: Path) -> Path:
    """A bin folder whose 'binaries' only record that they were started."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        script = folder / name
        script.write_text(f"#!/bin/sh\ntouch '{tmp_path}/started-{name}'\nexit 1\n")
        script.chmod(0o755)
    return folder


def cluster_cli(*args: str) -> subprocess.CompletedProcess:
    return cluster_script(*args, check=False, timeout=60)


def started(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("started-*"))


def test_cli_rejects_an_unknown_key_before_starting_anything(stand_in_bin: Path, tmp_path: Path) -> None:
    config = tmp_path / "nodes.yaml"
    config.write_text(yaml.safe_dump(one_node(gpu=h100(), gpuCount=8)))

    result = cluster_cli("up", "--bin", str(stand_in_bin), "--config", str(config), "--run-dir", str(tmp_path / "run"))

    assert result.returncode == 2
    assert "unknown key 'gpuCount'" in result.stderr and "allowed keys here: name, gpu" in result.stderr
    assert started(tmp_path) == []


def test_cli_names_missing_binaries_and_make_binaries(stand_in_bin: Path, tmp_path: Path) -> None:
    (stand_in_bin / "kwok").unlink()
    (stand_in_bin / "etcd").unlink()

    result = cluster_cli("up", "--bin", str(stand_in_bin), "--run-dir", str(tmp_path / "run"))

    assert result.returncode == 2
    assert "missing binaries" in result.stderr and "etcd, kwok" in result.stderr
    assert "make binaries" in result.stderr
    assert started(tmp_path) == []


def test_cli_reports_a_taken_api_port(stand_in_bin: Path, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        result = cluster_cli("up", "--bin", str(stand_in_bin), "--api-port", str(port),
                             "--run-dir", str(tmp_path / "run"))

    assert result.returncode == 2
    assert f"port 127.0.0.1:{port} (for kube-apiserver) is already in use" in result.stderr
    assert started(tmp_path) == []


def test_cli_down_and_status_without_a_cluster(tmp_path: Path) -> None:
    down = cluster_cli("down", "--run-dir", str(tmp_path / "run"))
    assert down.returncode == 0 and "not running" in down.stdout
    status = cluster_cli("status", "--run-dir", str(tmp_path / "run"))
    assert status.returncode == 3 and "not running" in status.stdout


# ------------------------------------------------------------------------------------ wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    values = iter([0, None, [], "ready"])
    assert wait_for(lambda: next(values), timeout=5, interval=0) == "ready"


def test_wait_for_times_out_with_the_message_and_the_last_value() -> None:
    with pytest.raises(AssertionError) as error:
        wait_for(lambda: 0, timeout=0.1, interval=0.01, message="the thing")
    assert "the thing" in str(error.value) and "last value: 0" in str(error.value)


def test_wait_for_keeps_polling_through_exceptions_and_reports_the_last() -> None:
    calls = []

    def missing() -> None:
        calls.append(1)
        raise KeyError(f"absent {len(calls)}")

    with pytest.raises(AssertionError) as error:
        wait_for(missing, timeout=0.1, interval=0.01, message="the object")
    assert len(calls) > 1
    assert f"last exception: KeyError: 'absent {len(calls)}'" in str(error.value)


def test_kind_config_keeps_kinds_preflight_skip_and_runs_on_cgroup_v1():
    from hack.localcluster.kind import kind_config, ptp_conflist

    config = kind_config(nodes=2)
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker"]
    assert config["networking"] == {"apiServerAddress": "127.0.0.1", "disableDefaultCNI": True}
    patches = {p["kind"]: p for p in map(yaml.safe_load, config["kubeadmConfigPatches"])}
    assert patches["KubeletConfiguration"]["failCgroupV1"] is False
    assert patches["KubeletConfiguration"]["cgroupDriver"] == "cgroupfs"
    # NB: kind's merge patches replace lists: dropping "preflight" would run kubeadm's preflight.
    assert patches["InitConfiguration"]["skipPhases"] == ["preflight", "addon/coredns"]
    cni = ptp_conflist(pod_cidr="10.244.1.0/24")
    assert cni["plugins"][0]["type"] == "ptp"
    assert cni["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]


def test_the_scale_benchmark_generates_consumable_gpu_nodes() -> None:
    from bench.scale_workload import node_config

    shares = parse_config(data=node_config(nodes=3, gpus_per_node=8, sharing="dra-shares", shares=60))
    assert [(n.gpu.sharing, n.gpu.shares, n.gpu.count) for n in shares.nodes if n.gpu] == [("dra-shares", 60, 8)] * 3
    memory_only = parse_config(data=node_config(nodes=1, gpus_per_node=2, sharing="dra-shares",
                                                capacities=("memory",)))
    (device, _) = next(o for o in nodeconfig.dra_manifests(config=memory_only) if o["kind"] == "ResourceSlice")[
        "spec"]["devices"]
    assert device["allowMultipleAllocations"] is True and set(device["capacity"]) == {"memory"}
    mixed = parse_config(data=node_config(nodes=20, gpus_per_node=8))
    assert "dra-shares" not in {n.gpu.sharing for n in mixed.nodes if n.gpu}, "the default mix is unchanged"
    with pytest.raises(ValueError, match="use one of"):
        node_config(nodes=1, gpus_per_node=1, sharing="mig")
