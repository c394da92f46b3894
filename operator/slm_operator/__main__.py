"""Run the operator: ``python -m slm_operator [--liveness URL] [--namespace NS]``.

kopf does the watching, retries and liveness endpoint; our handlers live in ``handlers``. With
leader election on (``SLM_LEADER_ELECTION=true``, the chart's default), a replica first waits for
the Lease (``leader``), answering its liveness probe meanwhile, and runs kopf only while it holds
it: it exits (status 1) when it cannot renew, and releases the Lease when it stops cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import http.server
import logging
import os
import signal
import socket
import sys
import threading
import urllib.parse
from collections.abc import Iterator

#: After losing the Lease, kopf gets this long to stop before the process exits anyway: it must
#: stop acting before another replica may take over (lease duration - renew deadline).
LOST_GRACE_FRACTION = 0.5


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
    # NB: `kill -USR1 <pid>` writes every thread's stack to stderr (the log): what a stuck
    # operator waits for, without stopping it or installing a debugger in its image.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    import kopf  # NB: imported here so `--help` works without a cluster or kopf's start-up cost

    from slm_operator.config import ConfigError, OperatorConfig

    if args.namespace:
        os.environ["SLM_WATCH_NAMESPACE"] = ",".join(args.namespace)
    try:
        config = OperatorConfig.from_env()
        from slm_operator import handlers  # noqa: F401  (registers the handlers; reads the config)
    except ConfigError as exc:
        print(f"slm-operator: {exc}", file=sys.stderr)
        return 2
    if not config.leader_election:
        # NB: always cluster-wide: the GPU inventory needs every namespace's GPU pods and claims.
        kopf.run(clusterwide=True, liveness_endpoint=args.liveness, standalone=True)
        return 0

    from slm_operator.leader import LeaderElector, Timings

    identity = os.environ.get("SLM_POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    elector = LeaderElector(name=config.lease_name, namespace=config.leader_election_namespace, identity=identity,
                            timings=Timings.for_duration(config.lease_duration_seconds))
    never = threading.Event()
    with _standby_liveness(args.liveness):
        elector.acquire(stop=never)
    stop, lost = threading.Event(), threading.Event()

    def on_lost() -> None:
        lost.set()
        stop.set()  # kopf stops gracefully; if it takes too long, exit without it
        grace = (elector.timings.duration_s - elector.timings.renew_deadline_s) * LOST_GRACE_FRACTION
        threading.Timer(grace, lambda: os._exit(1)).start()

    done = threading.Event()

    # NB: released in a kopf cleanup activity, not after kopf.run returns: a stop by signal can
    # end the process (kopf's own deadline, the pod's grace period) before that.
    @kopf.on.cleanup(id="release-leader-lease")
    def release_lease(**_: object) -> None:
        done.set()
        if not lost.is_set():
            try:
                elector.release()
            except Exception as exc:  # NB: the Lease then expires on its own; a standby waits for that
                logging.getLogger(__name__).warning("leader election: releasing the Lease failed: %r", exc)

    threading.Thread(target=elector.keep, kwargs={"stop": done, "on_lost": on_lost}, daemon=True,
                     name="leader-election").start()
    kopf.run(clusterwide=True, liveness_endpoint=args.liveness, standalone=True, stop_flag=stop)
    return 1 if lost.is_set() else 0


@contextlib.contextmanager
def _standby_liveness(url: str | None) -> Iterator[None]:
    """While waiting for the Lease, answer the liveness probe kopf answers once it runs (a standby is alive)."""
    if not url:
        yield
        return
    parsed = urllib.parse.urlsplit(url)

    class Alive(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"standby: waiting for the leader Lease\n")

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer((parsed.hostname or "0.0.0.0", parsed.port or 80), Alive)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="standby-liveness")
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


if __name__ == "__main__":
    sys.exit(main())
