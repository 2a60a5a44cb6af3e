"""Moderation in the store: the status derived from the upload's request, the rules' verdicts and
the reviewers' decisions; decisions recorded once; the queue oldest first by folder."""

from __future__ import annotations

import dataclasses

import pytest

from sinks.store import moderation
from sinks.store.metadata import MetadataStore
from tests.unit.sinks.store.test_store import result, upload

HOLD = [{"action": "moderate", "message": "nsfw is 0.9"}]


def decision(status: str, cid: str, by: str = "alice") -> dict[str, object]:
    return moderation.entry(status, by, 1234, "n", cid)


def test_manual_moderation_waits_and_a_decision_is_recorded_once(store: MetadataStore) -> None:
    store.register_uploads([dataclasses.replace(upload("m1", tasks=("blurhash",)),
                                                moderation="manual")])
    done = store.merge_result(result("m1", "blurhash", data={"blurhash": "L"}))
    assert done is not None and done.status == "complete"
    assert done.moderation_status == "pending"
    assert [a.asset_id for a in store.moderation_queue()] == ["m1"]
    first = store.decide_moderation("m1", decision("approved", "c1"))
    assert first is not None
    asset, _ = first
    assert asset.moderation_status == "approved" and asset.version == done.version + 1
    assert asset.moderation is not None and asset.moderation["decided_by"] == "alice"
    assert store.decide_moderation("m1", decision("approved", "c1")) is None  # a replay
    assert store.get_asset("m1").version == asset.version  # type: ignore[union-attr]
    assert store.moderation_queue() == []
    assert [a.asset_id for a in store.moderation_queue("approved")] == ["m1"]


def test_a_moderate_verdict_holds_and_other_assets_are_not_moderated(
        store: MetadataStore) -> None:
    store.register_uploads([upload("m2", tasks=("nsfw",)), upload("m3", tasks=("nsfw",))])
    held = store.merge_result(result("m2", "nsfw", data={"nsfw": 0.9}, verdicts=HOLD))
    clean = store.merge_result(result("m3", "nsfw", data={"nsfw": 0.1}))
    assert held is not None and clean is not None
    assert held.moderation_status == "pending" and held.notices == []
    assert held.moderation is not None and held.moderation["reasons"] == ["nsfw is 0.9"]
    assert clean.moderation_status is None and clean.to_json()["moderation"] is None


def test_a_deciding_post_process_approves_what_it_passes(store: MetadataStore) -> None:
    store.register_uploads([dataclasses.replace(upload("m4", tasks=("nsfw",)),
                                                moderation="nsfw")])
    assert store.get_asset("m4").moderation_status == "pending"  # type: ignore[union-attr]
    done = store.merge_result(result("m4", "nsfw", data={"nsfw": 0.1}))
    assert done is not None and done.moderation_status == "approved"
    assert done.moderation is not None and done.moderation["decided_by"] == "postprocess:nsfw"


def test_queue_by_folder_oldest_first_in_pages(store: MetadataStore) -> None:
    ups = [dataclasses.replace(upload(f"q{i}", tasks=()), moderation="manual",
                               folder="/a/b" if i % 2 else "/c") for i in range(5)]
    for u in ups:
        store.register_uploads([u])
    assert [a.asset_id for a in store.moderation_queue(folder="/a")] == ["q1", "q3"]
    page = store.moderation_queue(limit=2)
    assert [a.asset_id for a in page] == ["q0", "q1"]
    rest = store.moderation_queue(after=(page[-1].created_at, page[-1].asset_id))
    assert [a.asset_id for a in rest] == ["q2", "q3", "q4"]


@pytest.mark.parametrize(("current", "decision_", "ok"), [
    ("pending", "approved", True), ("pending", "rejected", True), (None, "rejected", True),
    ("approved", "rejected", True), ("approved", "approved", False),
    ("rejected", "approved", False), ("pending", "maybe", False),
])
def test_transitions(current: str | None, decision_: str, ok: bool) -> None:
    assert (moderation.transition_problem(current, decision_) is None) is ok
