"""An upload's cheap async requests travel as one: how the router folds them, what a bundle
may hold (any producer can write one), and the members a consumer gets back."""

from __future__ import annotations

import json

import pytest

from agents.streams import validation
from agents.streams.bundles import bundle
from agents.streams.poison import Msg, Poison
from agents.streams.validation import MAX_BUNDLE
from processors.registry import load_all
from schemas.records import TaskRequest

PROCS = load_all()


def req(task: str, pp: str | None = None, mode: str = "async") -> TaskRequest:
    return TaskRequest(request_id=f"r-{pp or task}", asset_id="a1", task=task,
                       postprocess=pp or task, uri="file:///srv/a.jpg", mode=mode,
                       width=640, height=480, format="JPEG", params_json='{"k": 1}')


def msg(r: TaskRequest) -> Msg:
    return Msg(f"darkroom.tasks.{r.task}", 0, 3, r.asset_id.encode(), r.to_bytes())


def test_the_default_image_tasks_are_cheap_and_models_are_not() -> None:
    assert {n for n, p in PROCS.items() if p.cheap} >= {"validate-image", "blurhash",
                                                        "dominant-colors"}
    assert not PROCS["nsfw"].cheap and not PROCS["transcode-video"].cheap


def test_cheap_async_requests_ride_with_the_first_and_keep_their_identity() -> None:
    sent = bundle([req("nsfw"), req("validate-image"), req("blurhash"),
                   req("dominant-colors", "colors")], PROCS)
    assert [r.task for r in sent] == ["nsfw", "validate-image"]
    assert sent[0].bundle_json == "[]"
    carrier = validation.task_request(msg(sent[1]), "validate-image")
    members = carrier.members()
    assert [(m.task, m.postprocess, m.request_id) for m in members] == [
        ("blurhash", "blurhash", "r-blurhash"), ("dominant-colors", "colors", "r-colors")]
    assert all(m.uri == carrier.uri and m.width == 640 and m.bundle_json == "[]"
               for m in members)


def test_sync_requests_ride_only_with_sync_ones_and_a_lone_one_alone() -> None:
    sent = bundle([req("validate-image", mode="sync"), req("blurhash"),
                   req("dominant-colors", mode="sync"), req("nsfw", mode="sync")], PROCS)
    assert [(r.task, r.mode) for r in sent] == [("validate-image", "sync"),
                                                ("blurhash", "async"), ("nsfw", "sync")]
    assert [m.task for m in sent[0].members()] == ["dominant-colors"]
    assert sent[1].bundle_json == "[]" and sent[2].bundle_json == "[]"


def test_where_nobody_waits_all_cheap_ones_ride_behind_an_async_one() -> None:
    requests = [req("validate-image", mode="sync"), req("nsfw", mode="sync"), req("blurhash"),
                req("dominant-colors", mode="sync")]
    sent = bundle(requests, PROCS, waiting=False)
    assert [(r.task, r.mode) for r in sent] == [("blurhash", "async"), ("nsfw", "sync")]
    assert [m.task for m in sent[0].members()] == ["validate-image", "dominant-colors"]
    assert all(m.mode == "async" for m in sent[0].members())  # the carrier's priority
    # only sync ones: behind the first of them
    sent = bundle([req("validate-image", mode="sync"), req("blurhash", mode="sync")], PROCS,
                  waiting=False)
    assert [(r.task, [m.task for m in r.members()]) for r in sent] == [
        ("validate-image", ["blurhash"])]
    # a waiting upload keeps the modes apart (the default)
    assert len(bundle(requests, PROCS)) == 3


def test_a_long_list_starts_another_carrier() -> None:
    many = [req("blurhash", f"b{i}") for i in range(MAX_BUNDLE + 3)]
    sent = bundle(many, PROCS)
    assert len(sent) == 2
    assert len(json.loads(sent[0].bundle_json)) == MAX_BUNDLE
    assert len(json.loads(sent[1].bundle_json)) == 1


def with_bundle(raw: str) -> Msg:
    r = req("blurhash")
    r.bundle_json = raw
    return msg(r)


@pytest.mark.parametrize("raw,reason", [
    ("{", "bundle_json"),
    ('{"a": 1}', "JSON list of at most"),
    (json.dumps([{"request_id": "x"}] * (MAX_BUNDLE + 1)), "JSON list of at most"),
    ('[{"request_id": "x", "task": "ocr", "postprocess": "ocr"}]', "exactly request_id"),
    ('[{"request_id": "x", "task": "ocr", "postprocess": "ocr", "params_json": "{}", '
     '"uri": "file:///etc/passwd"}]', "exactly request_id"),
    ('[{"request_id": 1, "task": "ocr", "postprocess": "ocr", "params_json": "{}"}]',
     "as strings"),
    ('[{"request_id": "x", "task": "ocr", "postprocess": "blurhash", "params_json": "{}"}]',
     "twice in one bundle"),
    ('[{"request_id": "", "task": "ocr", "postprocess": "ocr", "params_json": "{}"}]',
     "request_id must be"),
    ('[{"request_id": "x", "task": "ocr", "postprocess": "ocr", "params_json": "[1]"}]',
     "params_json must be a JSON object"),
    ('[{"request_id": "x", "task": "../../x", "postprocess": "ocr", "params_json": "{}"}]',
     "not a task name"),
])
def test_a_hostile_bundle_is_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(Poison, match=reason):
        validation.task_request(with_bundle(raw), "blurhash")


def test_a_request_without_a_bundle_has_no_members() -> None:
    assert validation.task_request(msg(req("blurhash")), "blurhash").members() == []
