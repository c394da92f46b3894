"""The scale benchmark's pure parts: which settled services count as stuck, and when the restarted
operator first reconciled (read from its log)."""

from __future__ import annotations

import datetime
import pathlib

from bench.scale_measure import first_reconcile_seconds, stuck_services


def service(name: str, phase: str | None, reason: str | None = None, message: str = "") -> dict:
    conditions = [{"type": "Planned", "status": "False", "reason": reason}] if reason else []
    status = {"phase": phase, "conditions": conditions, "message": message} if phase else {}
    return {"metadata": {"namespace": "ns", "name": name}, "status": status}


def test_stuck_is_neither_serving_nor_waiting_for_gpus_with_a_message() -> None:
    services = [service("ready", "Ready"), service("partial", "Degraded"),
                service("waits", "Pending", "InsufficientSlots", "every slot is taken"),
                service("silent", "Pending", "InsufficientSlots"),
                service("secret", "Pending", "SecretNotFound", "create it"),
                service("starting", "Deploying", "Planned"), service("new", None)]
    assert stuck_services(services) == ["ns/new (none)", "ns/secret Pending SecretNotFound", "ns/silent Pending "
                                        "InsufficientSlots", "ns/starting Deploying Planned"]


def test_the_first_reconcile_after_a_restart_is_read_from_the_new_part_of_the_log(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "operator.log"
    log.write_text("2026-12-02 10:00:00,000 INFO kopf.objects: Handler 'reconcile' succeeded.\n")
    offset = log.stat().st_size
    started = datetime.datetime(2026, 12, 2, 10, 5, 0).timestamp()  # NB: local time, as the log writes it
    with log.open("a") as out:
        out.write("2026-12-02 10:05:01,000 INFO kopf.activities.startup: Activity 'configure' succeeded.\n"
                  "2026-12-02 10:05:03,500 INFO kopf.objects: Handler 'reconcile' succeeded.\n")
    assert first_reconcile_seconds(log_path=log, offset=offset, started_at=started) == 3.5
    assert first_reconcile_seconds(log_path=log, offset=log.stat().st_size, started_at=started) is None
