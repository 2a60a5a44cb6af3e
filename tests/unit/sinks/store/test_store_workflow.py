"""The store's half of workflow logic (SQLite and PostgreSQL): a dependent waits as part of the
asset's pending set, is decided once its upstream's result is merged, and a duplicate or
replayed upstream decides it again idempotently."""

from __future__ import annotations

from sinks.store.metadata import MetadataStore, PlannedTask, ResultRecord, UploadRecord


def upload(asset_id: str, replay: bool = False, other: bool = False) -> UploadRecord:
    extra = [PlannedTask("thumb", "thumbnail", f"{asset_id}-thumb", "async")] if other else []
    return UploadRecord(
        asset_id=asset_id, upload_key="k", uri=f"file:///x/{asset_id}", filename="x.png",
        folder="/", content_type="image/png", size_bytes=10, mode="async",
        notification_url=None, on_success=None, properties={"width": 5, "height": 4},
        tags=[], context={}, uploaded_at=1, replay=replay,
        tasks=[PlannedTask("nsfw", "nsfw", f"{asset_id}-nsfw", "async"),
               PlannedTask("q", "quarantine", f"{asset_id}-q", "async", "{}", waiting=True),
               *extra],
    )


def result(asset_id: str, pp: str, task: str, data: dict[str, object]) -> ResultRecord:
    return ResultRecord(asset_id=asset_id, postprocess=pp, task=task,
                        request_id=f"{asset_id}-{pp}", status="ok", data=data, error=None,
                        error_kind=None, verdicts=[], processor_version="1", attempts=1,
                        duration_ms=1.0, finished_at=5)


def test_a_waiting_dependent_keeps_the_asset_pending_until_decided(
        store: MetadataStore) -> None:
    store.register_uploads([upload("w1")])
    merged = store.merge_result(result("w1", "nsfw", "nsfw", {"nsfw": 0.9}))
    assert merged is not None and merged.status == "pending"  # q still waits
    assert merged.results["q"]["status"] == "waiting"
    # a stale upstream request decides nothing
    assert store.decide_dependents("w1", "nsfw", "other", [("q", True, "", False)]) == (None, [])
    new, rows = store.decide_dependents("w1", "nsfw", "w1-nsfw", [("q", True, "", False)])
    assert new is not None and new.status == "pending" and new.results["q"]["status"] == "pending"
    assert [(r["postprocess"], r["request_id"]) for r in rows] == [("q", "w1-q")]
    # a duplicate upstream result: no new version, the request is handed out again (a send
    # lost after the commit is made good), a contrary decision changes nothing
    again, rows2 = store.decide_dependents("w1", "nsfw", "w1-nsfw", [("q", False, "no", False)])
    assert again is None and [r["request_id"] for r in rows2] == ["w1-q"]
    done = store.merge_result(result("w1", "q", "quarantine", {"action": "quarantine"}))
    assert done is not None and done.status == "complete"
    assert store.decide_dependents("w1", "nsfw", "w1-nsfw", [("q", True, "", False)]) == (None, [])


def test_a_skipped_dependent_is_neutral_and_a_replay_can_run_it(store: MetadataStore) -> None:
    store.register_uploads([upload("w2")])
    store.merge_result(result("w2", "nsfw", "nsfw", {"nsfw": 0.1}))
    new, rows = store.decide_dependents("w2", "nsfw", "w2-nsfw",
                                        [("q", False, "condition did not hold", False)])
    assert rows == [] and new is not None and new.status == "complete"  # not "partial"
    assert new.results["q"]["status"] == "skipped"
    assert new.results["q"]["error_kind"] == "condition"
    v = new.version
    # the same decision again: nothing moves
    same = store.decide_dependents("w2", "nsfw", "w2-nsfw", [("q", False, "x", False)])
    assert same == (None, [])
    # a replay of the upstream re-plans the dependent (its row is kept) ...
    [dispatch] = store.register_uploads([upload("w2", replay=True)])
    assert {t.postprocess: t.waiting for t in dispatch} == {"nsfw": False, "q": True}
    # ... and a result on which the condition now holds runs it
    store.merge_result(result("w2", "nsfw", "nsfw", {"nsfw": 0.95}))
    later, rows = store.decide_dependents("w2", "nsfw", "w2-nsfw", [("q", True, "", False)])
    assert later is not None and later.version > v and later.status == "pending"
    assert [r["postprocess"] for r in rows] == ["q"]


def test_a_refusal_closes_waiting_dependents(store: MetadataStore) -> None:
    store.register_uploads([upload("w3")])
    refused = store.add_asset_verdict("w3", "refuse", "no")
    assert refused is not None and refused.status == "refused"
    done = store.finalize("w3", refused.version, None, None, lambda a: [], skip_pending=True)
    assert done is not None
    assert {k: v["status"] for k, v in done[0].results.items()} == {"nsfw": "skipped",
                                                                     "q": "skipped"}
    assert store.decide_dependents("w3", "nsfw", "w3-nsfw", [("q", True, "", False)]) == (None, [])


def test_a_task_moving_the_original_waits_for_the_other_requests(store: MetadataStore) -> None:
    store.register_uploads([upload("w4", other=True)])
    store.merge_result(result("w4", "nsfw", "nsfw", {"nsfw": 0.9}))
    new, rows = store.decide_dependents("w4", "nsfw", "w4-nsfw", [("q", True, "", True)])
    assert rows == [] and new is not None and new.results["q"]["status"] == "deferred"
    assert new.status == "pending"
    assert store.release_deferred("w4") == (None, [])  # thumb still pending
    store.merge_result(result("w4", "thumb", "thumbnail", {"file": "t.webp"}))
    released, rows = store.release_deferred("w4")
    assert released is not None and released.results["q"]["status"] == "pending"
    assert [r["postprocess"] for r in rows] == ["q"]
    # a redelivered result hands the queued request out again, changing nothing
    assert store.release_deferred("w4", also=["q"]) == (None, rows)
