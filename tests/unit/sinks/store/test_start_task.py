"""``MetadataStore.start_task``: the refused-check and the started mark in one statement."""

from __future__ import annotations

import sqlalchemy as sa

from sinks.store.metadata import MetadataStore, asset_tasks
from tests.unit.sinks.store.test_store import result, upload


def started(store: MetadataStore, asset_id: str, postprocess: str) -> tuple[object, object]:
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(asset_tasks.c.started_at, asset_tasks.c.progress).where(
            asset_tasks.c.asset_id == asset_id,
            asset_tasks.c.postprocess == postprocess)).one()
    return row[0], row[1]


def test_marks_a_pending_request_once_and_keeps_its_first_start(store: MetadataStore) -> None:
    store.register_uploads([upload("s1")])
    assert started(store, "s1", "blurhash") == (None, None)
    assert store.start_task("s1", "blurhash", "s1-blurhash-k1") == "pending"
    first, progress = started(store, "s1", "blurhash")
    assert first is not None and progress == 0.0
    assert store.start_task("s1", "blurhash", "s1-blurhash-k1") == "pending"  # redelivered
    assert started(store, "s1", "blurhash")[0] == first
    # another request id (a stale request of an older upload) marks nothing
    assert store.start_task("s1", "ocr", "s1-ocr-old") == "pending"
    assert started(store, "s1", "ocr") == (None, None)


def test_answered_unknown_and_refused(store: MetadataStore) -> None:
    store.register_uploads([upload("s2")])
    store.merge_result(result("s2", "blurhash", data={"blurhash": "x"}))
    assert store.start_task("s2", "blurhash", "s2-blurhash-k1") == "pending"  # asset status
    assert store.start_task("nope", "blurhash", "r") is None
    refused = store.add_asset_verdict("s2", "refuse", "no")
    assert refused is not None and refused.status == "refused"
    assert store.start_task("s2", "ocr", "s2-ocr-k1") == "refused"
    assert started(store, "s2", "ocr") == (None, None)  # a refused asset's task is not marked


def test_many_marks_in_one_transaction_each_with_its_own_answer(store: MetadataStore) -> None:
    store.register_uploads([upload("m1"), upload("m2")])
    refused = store.add_asset_verdict("m2", "refuse", "no")
    assert refused is not None
    answers = store.start_tasks([("m1", "blurhash", "m1-blurhash-k1"),
                                 ("m2", "blurhash", "m2-blurhash-k1"),
                                 ("gone", "blurhash", "gone-blurhash-k1"),
                                 ("m1", "ocr", "m1-ocr-k1")])
    assert answers == ["pending", "refused", None, "pending"]
    assert started(store, "m1", "blurhash")[0] is not None
    assert started(store, "m1", "ocr")[0] is not None
    assert started(store, "m2", "blurhash") == (None, None)
    assert store.start_tasks([]) == []
