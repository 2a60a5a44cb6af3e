"""The metadata store on SQLite and on PostgreSQL (127.0.0.1:5432 when it answers)."""

from __future__ import annotations

from typing import Any

from sinks.store.metadata import (
    MetadataStore,
    PlannedTask,
    ResultRecord,
    UploadRecord,
    derive_status,
)


def upload(asset_id: str, key: str = "k1", tasks: tuple[str, ...] = ("blurhash", "ocr"),
           replay: bool = False) -> UploadRecord:
    return UploadRecord(
        asset_id=asset_id, upload_key=key, uri=f"file:///x/{asset_id}", filename="x.jpg",
        folder="/f", content_type="image/jpeg", size_bytes=10, mode="async",
        notification_url=None, on_success=None, properties={"width": 5, "height": 4},
        tags=["a"], context={"k": "v"}, uploaded_at=1,
        tasks=[PlannedTask(t, t, f"{asset_id}-{t}-{key}", "async") for t in tasks],
        replay=replay,
    )


def result(asset_id: str, task: str, key: str = "k1", status: str = "ok",
           data: dict[str, Any] | None = None, verdicts: list[dict[str, Any]] | None = None
           ) -> ResultRecord:
    return ResultRecord(
        asset_id=asset_id, postprocess=task, task=task, request_id=f"{asset_id}-{task}-{key}",
        status=status, data=data if status == "ok" else None,
        error=None if status == "ok" else "boom",
        error_kind=None if status == "ok" else "permanent",
        verdicts=verdicts or [], processor_version="1", attempts=1, duration_ms=1.0, finished_at=5,
    )


def test_lifecycle_and_idempotent_merge(store: MetadataStore) -> None:
    [dispatch] = store.register_uploads([upload("a1")])
    assert [t.task for t in dispatch] == ["blurhash", "ocr"]
    assert store.get_asset("a1").status == "pending"  # type: ignore[union-attr]
    first = store.merge_result(result("a1", "blurhash", data={"blurhash": "LKO2"}))
    assert first is not None and first.status == "pending"
    assert store.merge_result(result("a1", "blurhash", data={"blurhash": "LKO2"})) is None
    done = store.merge_result(result("a1", "ocr", data={"text": ""}))
    assert done is not None and done.status == "complete" and done.info["blurhash"] == "LKO2"
    snapshot = store.get_asset("a1").to_json()  # type: ignore[union-attr]
    # duplicates of everything: upload and results
    assert store.register_uploads([upload("a1")]) == [[]]
    assert store.merge_result(result("a1", "ocr", data={"text": ""})) is None
    assert store.get_asset("a1").to_json() == snapshot  # type: ignore[union-attr]


def test_stale_results_and_reupload(store: MetadataStore) -> None:
    store.register_uploads([upload("a2", key="k1")])
    [dispatch] = store.register_uploads([upload("a2", key="k2", tasks=("blurhash",))])
    assert [t.request_id for t in dispatch] == ["a2-blurhash-k2"]
    assert store.merge_result(result("a2", "blurhash", key="k1", data={})) is None  # stale
    asset = store.merge_result(result("a2", "blurhash", key="k2", data={}))
    assert asset is not None and asset.status == "complete" and set(asset.results) == {"blurhash"}


def test_status_derivation(store: MetadataStore) -> None:
    store.register_uploads([upload("a3"), upload("a4"), upload("a5")])
    store.merge_result(result("a3", "blurhash", status="error"))
    a3 = store.merge_result(result("a3", "ocr", status="error"))
    assert a3 is not None and a3.status == "failed"
    store.merge_result(result("a4", "blurhash", status="error"))
    a4 = store.merge_result(result("a4", "ocr", data={}))
    assert a4 is not None and a4.status == "partial"
    store.merge_result(result("a5", "blurhash", data={}))
    refuse = [{"action": "refuse", "message": "no faces", "rule": "faces < 1",
               "postprocess": "ocr"}]
    a5 = store.merge_result(result("a5", "ocr", data={}, verdicts=refuse))
    assert a5 is not None and a5.status == "refused" and a5.refusals == ["no faces"]


def test_no_tasks_means_complete_and_listing(store: MetadataStore) -> None:
    store.register_uploads([upload("b1", tasks=()), upload("b2")])
    assert store.get_asset("b1").status == "complete"  # type: ignore[union-attr]
    assert [a.asset_id for a in store.list_assets(status="pending")] == ["b2"]
    assert [a.asset_id for a in store.list_assets(folder="/f", limit=1)] == ["b1"]
    assert [a.asset_id for a in store.list_assets(folder="/f", after="b1")] == ["b2"]


def test_derive_status_empty() -> None:
    assert derive_status([]) == "complete"


def test_info_and_tags_come_from_what_the_store_is_given(tmp_path: Any) -> None:
    """The store names no task: info extractors are passed in (the composition root passes
    the registered tasks' declarations) and a result's tags are passed to the merge."""
    def measure(data: Any) -> dict[str, Any]:
        if data.get("broken"):
            raise KeyError("broken")
        return {"pixels": data["w"] * data["h"]}

    s = MetadataStore(f"sqlite:///{tmp_path / 'db.sqlite'}", info={"ocr": measure})
    s.register_uploads([upload("c1"), upload("c2")])
    # no extractor for blurhash here: its data is no info; and a key "add_tags" is no magic
    s.merge_result(result("c1", "blurhash", data={"blurhash": "LKO2", "add_tags": ["x"]}))
    done = s.merge_result(result("c1", "ocr", data={"w": 3, "h": 2}), add_tags=["cat", "a"])
    assert done is not None and done.info == {"width": 5, "height": 4, "pixels": 6}
    assert done.tags == ["a", "cat"]  # after the upload's own, each once
    # a task's info that cannot be read is missing, not a failure; error results add no tags
    s.merge_result(result("c2", "ocr", data={"broken": True}))
    c2 = s.merge_result(result("c2", "blurhash", status="error"), add_tags=["never"])
    assert c2 is not None and "pixels" not in c2.info and c2.tags == ["a"]
    s.close()


def test_an_ok_result_is_never_replaced_by_a_timeout_or_error(store: MetadataStore) -> None:
    store.register_uploads([upload("p1", tasks=("blurhash",))])
    done = store.merge_result(result("p1", "blurhash", data={"blurhash": "x"}))
    assert done is not None and done.status == "complete"
    late = ResultRecord(**{**result("p1", "blurhash", status="error").__dict__,
                           "error_kind": "timeout", "error": "no result after 3 dispatches"})
    assert store.merge_result(late) is None
    after = store.get_asset("p1")
    assert after is not None and after.version == done.version
    assert after.results["blurhash"]["status"] == "ok"


def test_every_version_goes_to_the_outbox_until_acknowledged(tmp_path: Any) -> None:
    s = MetadataStore(f"sqlite:///{tmp_path / 'o.db'}",
                      encode_update=lambda a: f"{a.asset_id}@{a.version}".encode())
    _, changed = s.register_uploads_and_updates([upload("o1", tasks=("blurhash",))])
    assert [(a.version, a.encoded) for a in changed] == [(1, b"o1@1")]
    merged = s.merge_result(result("o1", "blurhash", data={"blurhash": "x"}))
    assert merged is not None and merged.encoded == b"o1@2"
    stale = s.stale_updates(older_than_ms=10**15)
    assert [(r["version"], bytes(r["payload"])) for r in stale] == [(1, b"o1@1"), (2, b"o1@2")]
    s.ack_updates([("o1", 1), ("o1", 2)])
    assert s.stale_updates(older_than_ms=10**15) == []


def test_finalize_moves_the_version_only_when_something_changed(store: MetadataStore) -> None:
    store.register_uploads([upload("f1", tasks=("blurhash",))])
    merged = store.merge_result(result("f1", "blurhash", data={"blurhash": "x"}))
    assert merged is not None
    done = store.finalize("f1", merged.version, None, None, lambda a: [])
    assert done is not None and done[0].version == merged.version  # nothing observable changed
    again = store.finalize("f1", merged.version, None, None, lambda a: [])
    assert again is None  # once


def test_a_replayed_new_task_stays_out_of_a_finished_asset_until_its_result(
        store: MetadataStore) -> None:
    store.register_uploads([upload("r1", tasks=("blurhash",))])
    merged = store.merge_result(result("r1", "blurhash", data={"blurhash": "x"}))
    assert merged is not None and merged.status == "complete"
    store.register_uploads([upload("r1", tasks=("blurhash", "ocr"), replay=True)])
    before = store.get_asset("r1")
    assert before is not None and before.version == merged.version
    assert set(before.results) == {"blurhash"} and before.status == "complete"
    added = store.merge_result(result("r1", "ocr", data={"text": ""}))
    assert added is not None and added.version == merged.version + 1
    assert set(added.results) == {"blurhash", "ocr"}


def test_one_holder_of_a_lease_at_a_time(store: MetadataStore) -> None:
    assert store.acquire_lease("sweeper", "w1", 60_000)
    assert not store.acquire_lease("sweeper", "w2", 60_000)
    assert store.acquire_lease("sweeper", "w1", 60_000)  # renewed by its holder
    assert store.acquire_lease("other", "w2", 60_000)
    assert store.acquire_lease("short", "w1", -1)  # already expired: anyone takes it over
    assert store.acquire_lease("short", "w2", 60_000)
