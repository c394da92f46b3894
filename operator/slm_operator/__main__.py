"""Run the operator: ``python -m slm_operator [--liveness URL] [--namespace NS]``.

kopf does the watching, retries and liveness endpoint; our handlers live in ``handlers``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slm-operator", description=__doc__)
    parser.add_argument("--liveness", default=os.environ.get("SLM_LIVENESS_ENDPOINT"),
                        help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--namespace", action="append", default=None,
                        help="serve SLMServices of this namespace only (repeatable); default: all, or the "
                             "comma-separated $SLM_WATCH_NAMESPACE. GPU use is always read cluster-wide.")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import kopf  # NB: imported here so `--help` works without a cluster or kopf's start-up cost

    from slm_operator.config import ConfigError

    if args.namespace:
        os.environ["SLM_WATCH_NAMESPACE"] = ",".join(args.namespace)
    try:
        from slm_operator import handlers  # noqa: F401  (registers the handlers; reads the config)
    except ConfigError as exc:
        print(f"slm-operator: {exc}", file=sys.stderr)
        return 2
    # NB: always cluster-wide: the GPU inventory needs every namespace's GPU pods and claims.
    kopf.run(clusterwide=True, liveness_endpoint=args.liveness, standalone=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
