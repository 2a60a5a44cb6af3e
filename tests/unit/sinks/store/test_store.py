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
