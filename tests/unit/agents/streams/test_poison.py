"""The poison policy, dead letters, stall tracking, batch isolation, event validation and bounded
outputs — the pieces that keep one bad message from stopping an agent (unit level; the same
classes on the real broker are in test_poison_pipeline.py)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy.exc as sa_exc
from confluent_kafka import KafkaError, KafkaException

from agents.policy import limits
from agents.policy.limits import LimitError
from agents.streams import validation
from agents.streams.outputs import payload_bytes, update_bytes
from agents.streams.poison import (
    Health,
    Msg,
    Poison,
    RetryPolicy,
    apply_batch,
    classify,
    dead_letter,
)
from processors.registry import ProcessorError
from schemas import SchemaError
from schemas.records import DeadLetter, TaskRequest, TaskResult, UploadEvent, WebhookDelivery
from sinks.store.metadata import Asset

FAST = RetryPolicy(unknown_attempts=3, first_delay_s=0.001, max_delay_s=0.002)


def msg(value: bytes | None, key: bytes | None = b"a1", offset: int = 7) -> Msg:
    return Msg("darkroom.uploads", 2, offset, key, value)


# ------------------------------------------------------------------------------ the policy


@pytest.mark.parametrize("exc,kind", [
    (Poison("bad"), "poison"),
    (SchemaError("corrupt"), "poison"),
    (LimitError("too long"), "poison"),
    (ProcessorError("corrupt image", permanent=True), "poison"),
    (ProcessorError("storage timed out", permanent=False), "transient"),
    (sa_exc.OperationalError("select", {}, Exception("connection refused")), "transient"),
    (sa_exc.IntegrityError("insert", {}, Exception("constraint")), "transient"),
    (sa_exc.DataError("insert", {}, Exception("value too long")), "unknown"),
    (KafkaException(KafkaError(KafkaError._TRANSPORT)), "transient"),
    (KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), "poison"),
    (KafkaException(KafkaError(KafkaError.TOPIC_EXCEPTION)), "poison"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "transient"),
    (OSError(errno.ENAMETOOLONG, "File name too long"), "poison"),
    (KeyError("x"), "unknown"),
    (ValueError("odd"), "unknown"),
])
def test_classify_sorts_every_kind(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


# ---------------------------------------------------------------------------- dead letters


def test_dead_letter_embeds_a_small_original_with_its_position() -> None:
    dl = dead_letter(msg(b"\x00junk"), "malformed", embed_limit=1024)
    back = DeadLetter.from_bytes(dl.to_bytes())
    assert back.original == b"\x00junk" and back.original_kind == "embedded"
    assert (back.source_topic, back.source_partition, back.source_offset) == (
        "darkroom.uploads", 2, 7)
    assert back.original_size == 5 and back.original_sha256 == hashlib.sha256(b"\x00junk"
                                                                              ).hexdigest()
    assert back.asset_id == "a1" and back.error == "malformed"


def test_dead_letter_of_a_huge_value_describes_it_instead() -> None:
    big = b"x" * 2_000_000
    dl = dead_letter(msg(big), "malformed", embed_limit=256 * 1024)
    data = dl.to_bytes()
    assert len(data) < 2000
    back = DeadLetter.from_bytes(data)
    assert back.original == b"" and back.original_kind == "omitted"
    assert back.original_size == 2_000_000
    assert back.original_sha256 == hashlib.sha256(big).hexdigest()


def test_dead_letter_of_a_tombstone_and_of_odd_keys() -> None:
    dl = DeadLetter.from_bytes(dead_letter(msg(None, key=b"\xff\xfe"), "tombstone",
                                           embed_limit=10).to_bytes())
    assert dl.original_kind == "null" and dl.original_size == -1 and dl.original == b""
    assert dl.asset_id is None  # not UTF-8: no asset id is made up
    long_key = dead_letter(msg(b"v", key=b"k" * 5000), "e", embed_limit=10)
    assert long_key.original_key is None and long_key.asset_id is None
    assert len(dead_letter(msg(b"v"), "e" * 10_000, embed_limit=10).error) == 2000


# ---------------------------------------------------------------------------------- health


def test_a_lane_stalls_after_attempts_and_recovers() -> None:
    health = Health(stall_attempts=3, stall_seconds=3600)
    lane = health.lane("router")
    seen: list[bool] = []
    lane.on_change = lambda ln: seen.append(ln.stalled)
    lane.start(msg(b"v", offset=41))
    for _ in range(2):
        lane.failed(RuntimeError("db down"))
    assert health.stalled() == []
    lane.failed(RuntimeError("db down"))
    (stall,) = health.stalled()
    assert stall["topic"] == "darkroom.uploads" and stall["partition"] == 2
    assert stall["offset"] == 41 and stall["attempts"] == 3 and "db down" in stall["error"]
    lane.finish()
    assert health.stalled() == [] and seen == [True, False]


def test_a_lane_busy_too_long_is_stalled_without_failing() -> None:
    lane = Health().lane("task.x", busy_seconds=0.0)
    lane.start(msg(b"v"))
    assert lane.stalled
    lane.start(msg(b"v"))  # the same message again does not reset the clock
    assert lane.stalled


# ----------------------------------------------------------------------- batch isolation


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_poison_message_in_a_batch_is_isolated_and_the_rest_applied() -> None:
    applied: list[int] = []
    dead: list[tuple[int, str]] = []

    async def apply(msgs: Sequence[Msg]) -> None:
        if any(m.value == b"bad" for m in msgs):
            raise KeyError("boom")
        applied.extend(m.offset for m in msgs)

    async def send(m: Msg, reason: str, attempts: int) -> None:
        dead.append((m.offset, reason))

    batch = [msg(b"ok", offset=1), msg(b"bad", offset=2), msg(b"ok", offset=3)]
    lane = Health().lane("sink")
    run(apply_batch(lane, batch, apply, send, FAST))
    assert applied == [1, 3]
    assert dead == [(2, "failed 3 times: KeyError: 'boom'")]
    assert lane.at is None


def test_transient_trouble_is_retried_until_it_passes() -> None:
    calls = {"n": 0}

    async def apply(msgs: Sequence[Msg]) -> None:
        calls["n"] += 1
        if calls["n"] < 6:
            raise sa_exc.OperationalError("x", {}, Exception("database unreachable"))

    async def send(m: Msg, reason: str, attempts: int) -> None:
        raise AssertionError("a transient fault must never dead-letter")

    health = Health(stall_attempts=3)
    run(apply_batch(health.lane("router"), [msg(b"v")], apply, send, FAST))
    assert calls["n"] == 6 and health.stalled() == []


def test_poison_is_dead_lettered_at_once() -> None:
    calls = {"n": 0}
    dead: list[str] = []

    async def apply(msgs: Sequence[Msg]) -> None:
        calls["n"] += 1
        raise Poison("invalid upload event: mode must be one of async, sync")

    async def send(m: Msg, reason: str, attempts: int) -> None:
        dead.append(reason)

    run(apply_batch(Health().lane("router"), [msg(b"v")], apply, send, FAST))
    assert calls["n"] == 1 and dead == ["invalid upload event: mode must be one of async, sync"]


# ------------------------------------------------------------------------------ validation

PREFIX = "darkroom.replies."


def event(**kw: Any) -> UploadEvent:
    base: dict[str, Any] = {"asset_id": "a1", "uri": "file:///srv/in/a.jpg", "filename": "a.jpg"}
    return UploadEvent(**{**base, **kw})


def check(ev: UploadEvent, key: bytes | None = None) -> UploadEvent:
    return validation.upload_event(msg(ev.to_bytes(), key=key or ev.asset_id.encode()
                                       if ev.asset_id else b"x"), PREFIX)


def test_a_valid_event_passes() -> None:
    ev = check(event(mode="sync", reply_to=PREFIX + "api-1", tags=["a"], context={"k": "v"},
                     duration=1.5, notification_url="https://example.com/hook"))
    assert ev.asset_id == "a1"


@pytest.mark.parametrize("fields,reason", [
    ({"asset_id": ""}, "asset_id must be a non-empty string"),
    ({"asset_id": "a/b"}, "may only hold"),
    ({"asset_id": "x" * 129}, "the limit is 128"),
    ({"mode": "banana"}, "mode must be one of async, sync"),
    ({"mode": "SYNC"}, "mode must be one of"),
    ({"mode": ""}, "mode must be one of"),
    ({"duration": math.nan}, "duration must be a finite number"),
    ({"duration": math.inf}, "duration must be a finite number"),
    ({"reply_to": PREFIX + "bad topic/x"}, "not a valid Kafka topic name"),
    ({"reply_to": "elsewhere.topic"}, "reply_to must be a darkroom.replies.<instance> topic"),
    ({"uri": "file:///srv/a\x00.jpg"}, "uri contains control characters"),
    ({"uri": "file:///srv/a%00.jpg"}, "percent-encoded"),
    ({"uri": "file:///" + "a" * 6000}, "the limit is 2048"),
    ({"uri": "http://example.com/a.jpg"}, "file:// or s3://"),
    ({"folder": "/" + "f" * 964}, "bytes long; the limit is 512"),
    ({"folder": "/" + "s" * 300}, "longer than 128 bytes"),
    ({"folder": "/a/../b"}, "must not contain '..'"),
    ({"tags": [f"t{i}" for i in range(9900)]}, "9900 tags; the limit is 100"),
    ({"context": {"k": "v" * 2000}}, "the limit is 1024"),
    ({"width": 2**31 - 1, "height": 2**31 - 1}, "width must be between 1 and"),
    ({"notification_url": "http://%31%32%37.0.0.1/x"}, "not a valid DNS name"),
    ({"notification_url": "file:///etc/passwd"}, "http:// or https://"),
    ({"on_success": "x" * 70_000}, "the limit is 65536"),
    ({"postprocess": ["p"] * 51}, "the limit is 50"),
])
def test_invalid_events_are_poison_with_a_reason(fields: dict[str, Any], reason: str) -> None:
    ev = event(**fields)
    with pytest.raises(Poison) as err:
        check(ev)
    assert reason in err.value.reason
    assert err.value.reason.startswith("invalid upload event")


def test_keys_tombstones_and_garbage_are_poison() -> None:
    good = event().to_bytes()
    cases = [
        (msg(None), "malformed upload event: a tombstone"),
        (msg(b""), "malformed upload event: an empty value"),
        (msg(b"\xc3\x01" + b"\x00" * 8 + b"junk"), "malformed upload event"),
        (msg(good + b"\x00"), "bytes after the record"),
        (msg(good, key=None), "no key"),
        (msg(good, key=b"other"), "is not the asset id"),
        (msg(TaskResult(request_id="r", asset_id="a1", task="t", postprocess="t",
                        status="ok").to_bytes()), "found a TaskResult value"),
    ]
    for m, reason in cases:
        with pytest.raises(Poison, match=reason):
            validation.upload_event(m, PREFIX)


def test_invalid_utf8_and_union_branches_read_as_words() -> None:
    body = bytearray(event(asset_id="aa").to_bytes())
    at = body.index(b"aa")
    body[at:at + 2] = b"\xff\xfe"
    with pytest.raises(Poison, match="a string is not valid UTF-8"):
        validation.upload_event(msg(bytes(body), key=b"aa"), PREFIX)
    # notification_url (["null", "string"]) follows mode "async" (length 5 = zig-zag 0x0a):
    # its branch index, zig-zag 0, patched to 14 names a branch 7 that does not exist
    data = bytearray(event().to_bytes())
    at = data.index(b"\x0aasync") + 6
    assert data[at] == 0
    data[at] = 14
    with pytest.raises(Poison, match="union branch index is out of range"):
        validation.upload_event(msg(bytes(data)), PREFIX)


def test_requests_results_and_deliveries_are_validated() -> None:
    req = TaskRequest(request_id="r1", asset_id="a1", task="blurhash", postprocess="blurhash",
                      uri="file:///srv/a.jpg")
    assert validation.task_request(msg(req.to_bytes()), "blurhash").request_id == "r1"
    with pytest.raises(Poison, match="on the 'nsfw' task topic"):
        validation.task_request(msg(req.to_bytes()), "nsfw")
    bad_params = TaskRequest(**{**req.to_dict(), "params_json": "[1]"})
    with pytest.raises(Poison, match="params_json must be a JSON object"):
        validation.task_request(msg(bad_params.to_bytes()), "blurhash")
    res = TaskResult(request_id="r1", asset_id="a1", task="blurhash", postprocess="blurhash",
                     status="ok", data_json='{"x": NaN}')
    with pytest.raises(Poison, match="no NaN or Infinity"):
        validation.task_result(msg(res.to_bytes()))
    odd = TaskResult(**{**res.to_dict(), "data_json": "{}", "status": "weird"})
    with pytest.raises(Poison, match="status must be one of ok, error"):
        validation.task_result(msg(odd.to_bytes()))
    d = WebhookDelivery(delivery_id="d1", asset_id="a1", version=1, event="asset.completed",
                        url="https://example.com/h", payload=b"{}")
    assert validation.webhook_delivery(msg(d.to_bytes()), 1000).delivery_id == "d1"
    with pytest.raises(Poison, match="payload is larger than 1 bytes"):
        validation.webhook_delivery(msg(d.to_bytes()), 1)
    with pytest.raises(Poison, match="malformed webhook delivery: a tombstone"):
        validation.webhook_delivery(msg(None), 1000)


def test_limits_refuse_lone_surrogates_and_bad_hosts() -> None:
    with pytest.raises(LimitError, match="not valid UTF-8"):
        limits.context({"a": "\udc80"})
    with pytest.raises(LimitError, match="DNS name"):
        limits.url("http://exa_mple.com/")
    assert limits.url("http://[::1]:8080/x") == "http://[::1]:8080/x"
    assert limits.url("https://hooks.example.com/a?b=c")


# -------------------------------------------------------------------------- bounded outputs


def big_asset(results: int, size: int) -> Asset:
    res = {f"task{i}": {"task": f"task{i}", "status": "ok", "mode": "async",
                        "data": {"text": "x" * size}, "error": None, "verdicts": []}
           for i in range(results)}
    return Asset(asset_id="a1", status="complete", version=3, uri="file:///x", filename="x",
                 folder="/f", content_type="image/jpeg", size_bytes=1, mode="async",
                 notification_url=None, on_success=None, properties={}, tags=["t"],
                 context={}, metadata={"m": 1}, results=res, notices=[], refusals=[],
                 unknown_postprocesses=[], reply_to=None, finalized_version=None,
                 requested=[], uploaded_at=0, created_at=0, updated_at=0, completed_at=None)


def test_an_update_too_large_omits_the_largest_results_data() -> None:
    from schemas.records import AssetUpdate

    small = big_asset(2, 100)
    assert len(update_bytes(small, 900_000)) < 2000  # untouched
    asset = big_asset(5, 300_000)
    data = update_bytes(asset, 900_000)
    assert len(data) <= 900_000
    back = AssetUpdate.from_bytes(data)
    results = json.loads(back.results_json)
    omitted = [k for k, v in results.items() if v["data"].get("_omitted")]
    assert 2 <= len(omitted) < 5
    assert results[omitted[0]]["data"]["_see"] == "/v1/assets/a1"
    assert json.loads(back.metadata_json) == {"m": 1}


def test_a_webhook_payload_is_bounded_too() -> None:
    asset = big_asset(5, 300_000)
    payload = payload_bytes(asset.to_json(), "asset.completed", 3, 500_000)
    assert len(payload) <= 500_000
    doc = json.loads(payload)
    assert doc["asset_id"] == "a1" and doc["version"] == 3
    assert any(v["data"].get("_omitted") for v in doc["asset"]["results"].values())
