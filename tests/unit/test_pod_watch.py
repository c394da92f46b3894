"""The own list+watch behind the inventory (kube.ListWatch, kube.WatchedKind), against scripted API answers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from slm_operator import kube
from slm_operator.gpu_index import Entries, PodSlots, Watched, claim_of, group_of


def pod(uid: str, *, node: str = "a", gpus: int = 1, rv: str = "1") -> dict[str, Any]:
    return {"metadata": {"uid": uid, "namespace": "ns", "name": uid, "resourceVersion": rv},
            "spec": {"nodeName": node, "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
            "status": {"phase": "Running"}}


def page(items: list[dict[str, Any]], *, rv: str, token: str | None = None) -> dict[str, Any]:
    return {"items": items, "metadata": {"resourceVersion": rv} | ({"continue": token} if token else {})}


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


class Script:
    """The API as the watch sees it: list pages by continue token, then one scripted answer per
    watch request (a list of events, or an exception raised at once or after the events)."""

    def __init__(self, *, lists: list[dict[str | None, Any]], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.list_calls: list[str | None] = []
        self.watch_calls: list[str] = []
        self.sleeps: list[float] = []
        self.watcher: kube.ListWatch | None = None

    def list_page(self, token: str | None) -> Mapping[str, Any]:
        self.list_calls.append(token)
        answer = self.lists[0][token]
        if isinstance(answer, Exception):
            self.lists.pop(0)
            raise answer
        if not answer["metadata"].get("continue"):
            self.lists.pop(0)  # this listing is done; the next one answers the next relist
        return answer

    def watch(self, resource_version: str) -> Iterator[Mapping[str, Any]]:
        self.watch_calls.append(resource_version)
        if not self.watches:
            assert self.watcher is not None
            self.watcher.stop()
            return
        answer = self.watches.pop(0)
        if isinstance(answer, Exception):
            raise answer
        for item in answer:
            if isinstance(item, Exception):
                raise item
            yield item

    def run(self, store: Watched, *, quick_end_s: float = 0.0,
            on_event: Callable[[str, Mapping[str, Any]], None] | None = None) -> kube.ListWatch:
        self.watcher = kube.ListWatch(store=store, name="test", list_page=self.list_page, watch=self.watch,
                                      on_event=on_event, sleep=self.sleeps.append, backoff=(1.0, 4.0),
                                      quick_end_s=quick_end_s)
        self.watcher.run()
        return self.watcher


def test_lists_in_pages_then_follows_events_and_resumes_from_the_last_bookmark() -> None:
    script = Script(
        lists=[{None: page([pod("a1", node="a", gpus=2)], rv="10", token="t1"),
                "t1": page([pod("b1", node="b")], rv="10")}],
        watches=[[event("ADDED", pod("b2", node="b", rv="11")),
                  event("MODIFIED", pod("a1", node="a", gpus=2, rv="12")),
                  event("DELETED", pod("b1", node="b", rv="13")),
                  event("BOOKMARK", {"metadata": {"resourceVersion": "20"}})],
                 [event("ADDED", pod("c1", node="c", rv="21"))]])
    slots = PodSlots()
    watcher = script.run(slots)
    assert script.list_calls == [None, "t1"]
    assert script.watch_calls == ["10", "20", "21"], "each watch resumes where the last one ended"
    assert slots.used_slots() == {("a", "nvidia.com/gpu"): 2, ("b", "nvidia.com/gpu"): 1, ("c", "nvidia.com/gpu"): 1}
    assert script.sleeps == [] and watcher.relists == 1


def test_410_gone_in_the_stream_lists_again_and_the_listing_replaces_the_counts() -> None:
    script = Script(
        lists=[{None: page([pod("old", node="a", gpus=4)], rv="5")},
               {None: page([pod("new", node="b")], rv="50")}],
        watches=[[event("ADDED", pod("x", node="a", rv="6")),
                  event("ERROR", {"kind": "Status", "code": 410, "message": "too old resource version"})],
                 []])
    slots = PodSlots()
    watcher = script.run(slots)
    assert script.watch_calls == ["5", "50", "50"]
    assert slots.used_slots() == {("b", "nvidia.com/gpu"): 1}, "pods gone while the watch lagged are forgotten"
    assert watcher.relists == 2 and script.sleeps == [], "a watch too far behind lists again at once"


def test_410_when_opening_the_watch_lists_again() -> None:
    script = Script(lists=[{None: page([], rv="5")}, {None: page([pod("p")], rv="9")}],
                    watches=[kube.ResourceVersionGone("Expired")])
    slots = PodSlots()
    script.run(slots)
    assert script.watch_calls == ["5", "9"] and slots.used_slots() == {("a", "nvidia.com/gpu"): 1}


def test_failures_back_off_exponentially_and_resume_without_listing_again() -> None:
    script = Script(
        lists=[{None: page([pod("p")], rv="5")}],
        watches=[OSError("connection refused"), OSError("connection refused"),
                 [event("ADDED", pod("q", rv="6")), ConnectionResetError("dropped")],
                 OSError("connection refused"), OSError("connection refused"), OSError("connection refused"),
                 [event("DELETED", pod("p", rv="7"))]])
    slots = PodSlots()
    watcher = script.run(slots)
    assert script.list_calls == [None] and watcher.relists == 1
    assert script.watch_calls == ["5", "5", "5", "6", "6", "6", "6", "7"], "resumed from the last event seen"
    nominal = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]  # doubling, capped at 4
    assert len(script.sleeps) == len(nominal)
    for slept, expected in zip(script.sleeps, nominal, strict=True):
        assert expected * 0.8 <= slept <= expected * 1.2
    assert slots.used_slots() == {("a", "nvidia.com/gpu"): 1}


def test_watches_that_end_at_once_without_an_event_back_off_instead_of_spinning() -> None:
    # A server or proxy that closes every watch at once: each empty, instant end waits like a failure;
    # a watch that brings an event resets the backoff.
    script = Script(lists=[{None: page([pod("p")], rv="5")}],
                    watches=[[], [], [], [event("ADDED", pod("q", rv="6"))], []])
    slots = PodSlots()
    script.run(slots, quick_end_s=60.0)
    assert script.watch_calls == ["5", "5", "5", "5", "6", "6"]
    nominal = [1.0, 2.0, 4.0, 1.0]
    assert len(script.sleeps) == len(nominal)
    for slept, expected in zip(script.sleeps, nominal, strict=True):
        assert expected * 0.8 <= slept <= expected * 1.2
    assert slots.used_slots() == {("a", "nvidia.com/gpu"): 2}


def test_a_listing_that_expires_halfway_waits_lists_again_and_keeps_the_last_counts_meanwhile() -> None:
    script = Script(
        lists=[{None: page([pod("first", node="a")], rv="5")},
               {None: page([pod("x", node="b")], rv="8", token="t"), "t": kube.ResourceVersionGone("Expired")},
               {None: page([pod("y", node="c")], rv="9")}],
        watches=[[event("ERROR", {"code": 410, "message": "too old"})]])
    slots = PodSlots()
    seen: list[dict[tuple[str, str], int]] = []
    original = slots.replace

    def replace(pods: Any) -> None:
        seen.append(slots.used_slots())
        original(pods)

    slots.replace = replace  # type: ignore[method-assign]
    watcher = script.run(slots)
    assert script.list_calls == [None, None, "t", None]
    assert len(script.sleeps) == 1, "an expired listing waits before the next"
    assert seen[2] == {("a", "nvidia.com/gpu"): 1}, "the failed listing changed nothing"
    assert slots.used_slots() == {("c", "nvidia.com/gpu"): 1} and watcher.relists == 2


def test_an_error_event_other_than_410_backs_off_and_resumes() -> None:
    script = Script(lists=[{None: page([], rv="5")}],
                    watches=[[event("ERROR", {"code": 500, "message": "internal"})], []])
    script.run(PodSlots())
    assert script.watch_calls == ["5", "5", "5"] and len(script.sleeps) == 1


class FakeResponse:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.released = False

    def stream(self, amt: int, decode_content: bool) -> Iterator[bytes]:
        yield from self.chunks

    def release_conn(self) -> None:
        self.released = True


def test_the_watch_request_asks_for_the_selected_objects_with_bookmarks_and_splits_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = b"".join(json.dumps(e).encode() + b"\n" for e in (
        event("ADDED", pod("a")), event("BOOKMARK", {"metadata": {"resourceVersion": "9"}})))
    response = FakeResponse([lines[:7], lines[7:40], lines[40:]])  # chunks cut through the lines
    asked: dict[str, Any] = {}

    class Api:
        def __init__(self, _: Any) -> None:
            pass

        def list_pod_for_all_namespaces(self, **kwargs: Any) -> FakeResponse:
            asked.update(kwargs)
            return response

    monkeypatch.setattr(kube, "api_client", lambda: None)
    kind = kube.WatchedKind(name="pods", api=Api, method="list_pod_for_all_namespaces",
                            field_selector=kube.POD_SLOT_PODS.field_selector)
    events = list(kind.watch("5"))
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"] and events[0]["object"] == pod("a")
    assert response.released
    assert asked["watch"] and asked["allow_watch_bookmarks"] and asked["resource_version"] == "5"
    assert asked["field_selector"] == "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
    assert asked["timeout_seconds"] < asked["_request_timeout"][1], "the client waits longer than the server"
    assert "label_selector" not in asked, "an empty selector is not sent"


def test_a_list_page_asks_for_the_selection_in_pages_and_a_410_means_list_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[dict[str, Any]] = []

    class Answer:
        data = json.dumps(page([], rv="7")).encode()

    class Api:
        def __init__(self, _: Any) -> None:
            pass

        def list_stateful_set_for_all_namespaces(self, **kwargs: Any) -> Answer:
            asked.append(kwargs)
            if kwargs.get("_continue") == "expired":
                raise kube.ApiException(status=410, reason="Gone")
            return Answer()

    monkeypatch.setattr(kube, "api_client", lambda: None)
    kind = kube.WatchedKind(name="statefulsets", api=Api, method="list_stateful_set_for_all_namespaces",
                            label_selector=kube.GROUP_STATEFULSETS.label_selector)
    assert kind.list_page(None) == page([], rv="7")
    assert asked[0]["label_selector"] == "app.kubernetes.io/managed-by=slm-operator"
    assert asked[0]["limit"] == kube.LIST_PAGE and "_continue" not in asked[0] and "field_selector" not in asked[0]
    with pytest.raises(kube.ResourceVersionGone):
        kind.list_page("expired")


def sts(name: str, *, rv: str = "1", index: str = "0") -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "slm-operator", "slm.pareto.dev/service": "opt",
              "slm.pareto.dev/group": index}
    return {"metadata": {"uid": name, "namespace": "ns", "name": name, "resourceVersion": rv, "labels": labels},
            "spec": {"replicas": 2}}


def test_the_same_watch_keeps_group_statefulsets_as_index_entries() -> None:
    unlabelled = sts("hand-made") | {"metadata": {"uid": "hand-made", "namespace": "ns", "name": "hand-made"}}
    script = Script(lists=[{None: page([sts("opt-g0"), sts("opt-g2", index="2"), unlabelled], rv="3")}],
                    watches=[[event("ADDED", sts("opt-g1", rv="4", index="1")),
                              event("DELETED", sts("opt-g0", rv="5"))]])
    groups = Entries(group_of)
    assert not groups.synced and not groups.wait_synced(0.0)
    script.run(groups)
    assert sorted(g.key for g in groups.values()) == ["ns/opt-g1", "ns/opt-g2"], "no service label: no group"
    assert len(groups) == 2
    assert groups.synced and [g.replicas for g in groups.values()] == [2, 2]


def claim(uid: str, *, allocated: bool = True, packed: bool = False, rv: str = "1") -> dict[str, Any]:
    labels = {"slm.pareto.dev/packed": "true"} if packed else {}
    status = {"allocation": {"devices": {"results": [{"driver": "gpu.nvidia.com", "pool": "a", "device": "gpu-0"}]}}}
    return {"metadata": {"uid": uid, "namespace": "ns", "name": uid, "resourceVersion": rv, "labels": labels},
            "status": status if allocated else {}}


def test_claims_are_kept_once_allocated_and_the_reaction_sees_each_event_and_listing_after_the_store() -> None:
    claims = Entries(claim_of)
    reactions: list[tuple[str, str, list[str]]] = []

    def react(kind: str, obj: Mapping[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        reactions.append((kind, name, sorted(c["name"] for c in claims.values())))
        if name == "boom":
            raise RuntimeError("the reaction failed")

    script = Script(lists=[{None: page([claim("c0"), claim("pending", allocated=False)], rv="3")}],
                    watches=[[event("MODIFIED", claim("pending", packed=True, rv="4")),
                              event("ADDED", claim("boom", rv="5")),
                              event("BOOKMARK", {"metadata": {"resourceVersion": "8"}}),
                              event("DELETED", claim("c0", rv="9"))]])
    watcher = script.run(claims, on_event=react)
    assert reactions == [("LISTED", "", ["ns/c0"]),
                         ("MODIFIED", "pending", ["ns/c0", "ns/pending"]),
                         ("ADDED", "boom", ["ns/boom", "ns/c0", "ns/pending"]),
                         ("DELETED", "c0", ["ns/boom", "ns/pending"])], "once per listing, not for a bookmark"
    assert script.sleeps == [] and watcher.resource_version == "9", "a failed reaction is no watch failure"
