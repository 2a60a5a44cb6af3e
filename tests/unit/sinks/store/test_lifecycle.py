"""Delete and patch in the store (SQLite and PostgreSQL): tombstones, no resurrection, one
version per observable change, replayed commands change nothing."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from agents.policy import limits
from agents.streams.lifecycle import patch_changes
from sinks.store.lifecycle import (
    delete_asset,
    mark_applied,
    patch_asset,
    record_deliveries,
    tombstone,
)
from sinks.store.metadata import MetadataStore
from tests.unit.sinks.store.test_store import result, upload


def plan(asset: Any) -> list[dict[str, Any]]:
    return [{"delivery_id": f"d-{asset.asset_id}", "event": "asset.deleted",
             "url": "https://example.com/h", "payload": b"{}"}]


def rows(store: MetadataStore, asset_id: str) -> dict[str, int]:
    out = {}
    with store.engine.connect() as conn:
        for table in sa.inspect(store.engine).get_table_names():
            cols = {c["name"] for c in sa.inspect(store.engine).get_columns(table)}
            if "asset_id" in cols:
                n = conn.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE asset_id = :a"),
                                 {"a": asset_id}).scalar_one()
                if n:
                    out[table] = int(n)
    return out


def test_delete_leaves_a_tombstone_only(store: MetadataStore) -> None:
    store.register_uploads([upload("d1")])
    store.merge_result(result("d1", "blurhash", data={"blurhash": "x"}))
    done = delete_asset(store, "d1", "delete:1", plan)
    assert done is not None
    gone, fresh = done
    assert gone.status == "deleted" and gone.version == 3 and gone.tags == [] and not gone.uri
    assert [d["event"] for d in fresh] == ["asset.deleted"]
    assert store.get_asset("d1") is None
    assert rows(store, "d1") == {"deleted_assets": 1, "deliveries": 1}
    assert tombstone(store, "d1")["version"] == 3  # type: ignore[index]
    # a second delete, a late result, a replayed upload event: nothing comes back
    assert delete_asset(store, "d1", "delete:2", plan) is None
    assert store.merge_result(result("d1", "ocr", data={"text": ""})) is None
    assert store.register_uploads([upload("d1")]) == [[]]
    assert store.get_asset("d1") is None
    # a new upload of the same id, made after the deletion, is a new asset
    later = upload("d1", key="k2")
    later.uploaded_at = 10**13
    [dispatch] = store.register_uploads([later])
    again = store.get_asset("d1")
    assert dispatch and again is not None
    assert again.version == 4, "its versions go on from the deletion's"


def test_patch_moves_the_version_once_per_change(store: MetadataStore) -> None:
    store.register_uploads([upload("p1")])
    v0 = store.get_asset("p1").version  # type: ignore[union-attr]
    new, exists = patch_asset(store, "p1", "c1", {"tags": ["z"]})
    assert exists and new is not None and new.version == v0 + 1 and new.tags == ["z"]
    assert new.context == {"k": "v"}  # absent: unchanged
    assert patch_asset(store, "p1", "c1", {"tags": ["other"]}) == (None, True)  # replay
    assert patch_asset(store, "p1", "c2", {"tags": ["z"]}) == (None, True)  # no change
    assert patch_asset(store, "p1", "c3", {"context": {"k": "v"}}) == (None, True)
    new, _ = patch_asset(store, "p1", "c4", {"metadata": {"a": 1}, "context": {}})
    assert new is not None and new.version == v0 + 2 and new.metadata == {"a": 1}
    assert new.context == {}
    assert patch_asset(store, "nope", "c5", {"tags": []}) == (None, False)
    assert delete_asset(store, "p1", "d", plan) is not None
    assert rows(store, "p1") == {"deleted_assets": 1, "deliveries": 1}  # applied_commands gone


def test_deliveries_and_commands_are_recorded_once(store: MetadataStore) -> None:
    store.register_uploads([upload("w1")])
    planned = [{"delivery_id": "e1", "event": "eager.completed", "url": "https://e/x",
                "payload": b"{}"}]
    assert len(record_deliveries(store, "w1", 1, planned)) == 1
    assert record_deliveries(store, "w1", 1, planned) == []
    assert mark_applied(store, "r1", "w1", "reprocess") is True
    assert mark_applied(store, "r1", "w1", "reprocess") is False


@pytest.mark.parametrize("body, problem", [
    ({"tags": "a"}, "tags must be a list"),
    ({"x": 1}, "unknown patch fields: x"),
    ({"context": {"k": 1}}, "must be a string"),
    ({"metadata": {"k": {"a": 1}}}, "must be a string, a number"),
    ({"metadata": {"k": float("nan")}}, "finite"),
    ({"metadata": {f"k{i}": "v" for i in range(101)}}, "the limit is 100"),
    ({"metadata": {"k": "v" * 1025}}, "1024"),
    ({"tags": ["t"] * 101}, "the limit is 100"),
])
def test_patch_bodies_are_checked_with_the_upload_limits(body: dict[str, Any],
                                                         problem: str) -> None:
    with pytest.raises(limits.LimitError, match=problem):
        patch_changes(body)


def test_patch_changes_normalise() -> None:
    assert patch_changes({"tags": ["a", "a", "b"], "metadata": {"n": 1.5, "ok": True,
                                                                 "l": ["x"]}}) == {
        "tags": ["a", "b"], "metadata": {"n": 1.5, "ok": True, "l": ["x"]}}
    assert patch_changes({"tags": None}) == {}
