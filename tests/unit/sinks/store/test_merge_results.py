"""``MetadataStore.merge_results``: several results of one asset, one transaction, one version."""

from __future__ import annotations

import pytest

from sinks.store.metadata import MetadataStore
from tests.unit.sinks.store.test_store import result, upload


def test_two_results_make_one_version_and_the_asset_final(store: MetadataStore) -> None:
    store.register_uploads([upload("g1")])
    before = store.get_asset("g1")
    assert before is not None
    asset, merged = store.merge_results("g1", [
        (result("g1", "blurhash", data={"blurhash": "x"}), ["smooth"]),
        (result("g1", "ocr", data={"text": "hi"}), ["texty", "smooth"])])
    assert merged == [True, True]
    assert asset is not None and asset.version == before.version + 1
    assert asset.status == "complete" and asset.final
    assert asset.results["blurhash"]["data"] == {"blurhash": "x"}
    assert asset.results["ocr"]["data"] == {"text": "hi"}
    assert asset.tags == ["a", "smooth", "texty"]  # each task's tags once, in order
    stored = store.get_asset("g1")
    assert stored is not None and stored.version == asset.version


def test_duplicates_and_stale_ones_change_nothing(store: MetadataStore) -> None:
    store.register_uploads([upload("g2")])
    first, _ = store.merge_results("g2", [(result("g2", "blurhash", data={"b": 1}), [])])
    assert first is not None
    again, merged = store.merge_results("g2", [
        (result("g2", "blurhash", data={"b": 1}), []),            # a duplicate
        (result("g2", "ocr", key="old", data={"t": 1}), [])])      # another upload's request
    assert again is None and merged == [False, False]
    mixed, merged = store.merge_results("g2", [
        (result("g2", "blurhash", data={"b": 1}), []),
        (result("g2", "ocr", data={"t": 2}), [])])
    assert merged == [False, True]
    assert mixed is not None and mixed.version == first.version + 1


def test_an_error_never_replaces_the_same_requests_good_result(store: MetadataStore) -> None:
    store.register_uploads([upload("g3")])
    asset, merged = store.merge_results("g3", [
        (result("g3", "blurhash", data={"b": 1}), []),
        (result("g3", "blurhash", status="error"), [])])
    assert merged == [True, False]
    assert asset is not None and asset.results["blurhash"]["status"] == "ok"


def test_unknown_asset_and_foreign_results(store: MetadataStore) -> None:
    assert store.merge_results("nope", [(result("nope", "blurhash", data={}), [])]) == (
        None, [False])
    store.register_uploads([upload("g4")])
    with pytest.raises(ValueError, match="among"):
        store.merge_results("g4", [(result("g5", "blurhash", data={}), [])])


def _planned(asset_id: str) -> list[dict[str, object]]:
    return [{"delivery_id": f"d-{asset_id}", "event": "asset.completed",
             "url": "https://hooks.example/x", "payload": b"{}"}]


def test_the_merge_that_finishes_an_asset_completes_it_in_its_transaction(
        store: MetadataStore) -> None:
    store.register_uploads([upload("c1")])
    seen = []

    def plan(new: object) -> list[dict[str, object]]:
        seen.append(new)
        return _planned("c1")

    first, _, done = store.merge_and_complete(
        "c1", [(result("c1", "blurhash", data={"b": 1}), [])], plan)
    assert first is not None and not first.final
    assert done is None and seen == []  # not final yet: nothing to complete
    asset, merged, done = store.merge_and_complete(
        "c1", [(result("c1", "ocr", data={"t": 1}), [])], plan)
    assert merged == [True] and asset is not None and asset.final
    # the plan saw the new state, finalized at its version; the mark and the delivery committed
    assert [getattr(s, "finalized_version", None) for s in seen] == [asset.version]
    assert asset.finalized_version == asset.version
    assert done is not None and [d["delivery_id"] for d in done] == ["d-c1"]
    stored = store.get_asset("c1")
    assert stored is not None and stored.finalized_version == asset.version
    assert [d["delivery_id"] for d in store.deliveries_of("c1")] == ["d-c1"]
    # finalize finds it done: the completion ran once
    assert store.finalize("c1", asset.version, None, None, lambda a: _planned("c1")) is None


def test_a_completion_left_to_finalize_is_not_marked(store: MetadataStore) -> None:
    store.register_uploads([upload("c2")])
    asset, _, done = store.merge_and_complete("c2", [
        (result("c2", "blurhash", data={"b": 1}), []),
        (result("c2", "ocr", data={"t": 1}), [])], lambda new: None)
    assert asset is not None and asset.final and done is None
    assert asset.finalized_version is None
    stored = store.get_asset("c2")
    assert stored is not None and stored.finalized_version is None
    assert store.deliveries_of("c2") == []
    finished = store.finalize("c2", asset.version, None, None, lambda a: _planned("c2"))
    assert finished is not None and finished[0].finalized_version == asset.version
