#!/usr/bin/env python3
"""Local Kubernetes control plane with simulated GPU nodes (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and KWOK as plain processes on 127.0.0.1).

    hack/cluster.py up --bin DIR [--config hack/gpu-nodes.yaml] [--run-dir DIR] [--api-port N]
    hack/cluster.py status [--run-dir DIR]
    hack/cluster.py down [--run-dir DIR]
    hack/cluster.py kind-up --bin DIR [--name N] [--run-dir DIR] [--image I] [--load IMG]...  # needs Docker
    hack/cluster.py kind-down --bin DIR [--name N] [--run-dir DIR]

The run dir defaults to $SLM_RUN_DIR, else .run/cluster (.run/kind for kind). See docs/local-cluster.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# NB: run as a script, so make `hack.localcluster` importable the same way the tests import it.
sys.path.insert(0, str(REPO))

from hack.localcluster import config as nodeconfig  # noqa: E402
from hack.localcluster import controlplane, kind, pki, processes  # noqa: E402

DEFAULT_CONFIG = REPO / "hack" / "gpu-nodes.yaml"
KIND_CONFIG = REPO / "hack" / "kind-gpu-nodes.yaml"


def _default_run_dir() -> str:
    return os.environ.get("SLM_RUN_DIR") or str(REPO / ".run" / "cluster")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/cluster.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the control plane and the simulated GPU nodes")
    up.add_argument("--bin", required=True,
                    help="folder with etcd, kube-apiserver, ... kwok (hack/build-binaries.sh prints it)")
    up.add_argument("--config", default=str(DEFAULT_CONFIG), help="simulated node config (default: %(default)s)")
    up.add_argument("--api-port", type=int, default=0, help="kube-apiserver port (default: a free one)")
    up.add_argument("--timeout", type=float, default=120.0,
                    help="seconds to wait for each step (default: %(default)s)")
    commands.add_parser("status", help="show the processes and nodes of the run dir's cluster (exit 0/1/3)")
    commands.add_parser("down", help="stop the run dir's cluster (idempotent)")
    helps = {"kind-up": "create a kind cluster with a fake GPU node (needs Docker)",
             "kind-down": "delete that kind cluster"}
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--bin", required=True, help="folder with the kind and kubectl binaries")
        sub.add_argument("--name", default="slm-gpu", help="kind cluster name (default: %(default)s)")
        if name == "kind-up":
            sub.add_argument("--config", default=str(KIND_CONFIG),
                             help="node config: one kind node per device-plugin GPU node (default: %(default)s)")
            sub.add_argument("--image", default=None,
                             help="kind node image (default: build it, hack/kind-node/build.sh)")
            sub.add_argument("--load", action="append", default=[], metavar="IMAGE",
                             help="a local Docker image to load into the node (repeatable)")
    for name, sub in commands.choices.items():
        where = ".run/kind" if name.startswith("kind") else "$SLM_RUN_DIR or .run/cluster"
        sub.add_argument("--run-dir", default=None, help=f"state, logs and kubeconfig (default: {where})")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            return controlplane.up(
                bin_dir=args.bin,
                config_path=args.config,
                run_dir=args.run_dir or _default_run_dir(),
                api_port=args.api_port,
                timeout=args.timeout,
                say=_say,
            )
        if args.command == "status":
            return controlplane.status(run_dir=args.run_dir or _default_run_dir(), say=_say)
        if args.command == "down":
            return controlplane.down(run_dir=args.run_dir or _default_run_dir(), say=_say)
        # NB: not $SLM_RUN_DIR, which names the local control plane's dir; the kubeconfigs would clash.
        run_dir = args.run_dir or str(REPO / ".run" / "kind")
        if args.command == "kind-up":
            return kind.kind_up(bin_dir=args.bin, run_dir=run_dir, name=args.name, config_path=args.config,
                                image=args.image, load=args.load, say=_say)
        return kind.kind_down(bin_dir=args.bin, run_dir=run_dir, name=args.name, say=_say)
    except (nodeconfig.ConfigError, controlplane.ClusterError, processes.PortInUse, pki.PkiError, kind.KindError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
