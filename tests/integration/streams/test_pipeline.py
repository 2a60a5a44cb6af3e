"""End to end on a real broker: uploads -> router -> processors -> sink -> store / assets topic."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from agents.kafka.producer import OutputProducer
from schemas.records import AssetUpdate, DeadLetter, UploadEvent, now_ms
from sinks.objects.local import LocalStorage

pytestmark = pytest.mark.integration


def photo(path: Path, size: tuple[int, int] = (640, 480), seed: int = 0) -> Path:
    img = Image.new("RGB", size, (30 + seed * 40 % 200, 120, 200))
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.rectangle([w // 4, h // 4, w // 2, h // 2], fill=(220, 40, 40))
    draw.ellipse([w // 2, h // 3, w - 20, h - 20], fill=(250, 220, 30))
    img.save(path, quality=90)
    return path


def upload(worker, path: Path, **kw) -> UploadEvent:  # type: ignore[no-untyped-def]
    ev = UploadEvent(asset_id=kw.pop("asset_id", uuid.uuid4().hex[:16]),
                     uri=LocalStorage.uri_for(path), filename=path.name,
                     folder=kw.pop("folder", "/tests"), content_type="image/jpeg",
                     uploaded_at=now_ms(), **kw)
    send(worker, ev.asset_id, ev.to_bytes())
    return ev


def send(worker, key: str, value: bytes) -> None:  # type: ignore[no-untyped-def]
    p = OutputProducer(worker.bootstrap)
    p.send("darkroom.uploads", key, value)
    p.flush_sync()


def test_uploads_are_processed_and_merged(worker, read_topic) -> None:  # type: ignore[no-untyped-def]
    a = upload(worker, photo(worker.inbox / "a.jpg", seed=1))
    b = upload(worker, photo(worker.inbox / "b.jpg", (120, 90), seed=2))
    assets = worker.wait_assets([a.asset_id, b.asset_id])
    big = assets[a.asset_id]
    assert big.status == "complete", big.results
    assert set(big.results) == {"blurhash", "dominant-colors", "thumbnail", "validate-image"}
    assert big.properties["width"] == 640 and big.properties["format"] == "JPEG"
    assert len(big.info["blurhash"]) > 6
    colors = big.results["dominant-colors"]["data"]["colors"]
    assert abs(sum(c["share"] for c in colors) - 1.0) < 0.02
    assert big.results["validate-image"]["data"]["width"] == 640
    small = assets[b.asset_id]
    # the default config notices images narrower than 200 px (validate-image, sync)
    assert small.notices and "200" in small.notices[0]
    # AssetUpdates on the public topic, last one complete
    reader = read_topic("darkroom.assets")
    msgs = reader.read_until(lambda ms: any(
        m.key() == a.asset_id.encode() and AssetUpdate.from_bytes(m.value()).status == "complete"
        for m in ms))
    final = [AssetUpdate.from_bytes(m.value()) for m in msgs if m.key() == a.asset_id.encode()]
    assert [u.version for u in final] == sorted(u.version for u in final)
    assert json.loads(final[-1].results_json)["blurhash"]["status"] == "ok"


def test_duplicate_upload_event_changes_nothing(worker, read_topic) -> None:  # type: ignore[no-untyped-def]
    ev = upload(worker, photo(worker.inbox / "dup.jpg", seed=3))
    first = worker.wait_assets([ev.asset_id])[ev.asset_id]
    before = first.to_json()
    send(worker, ev.asset_id, ev.to_bytes())  # the very same event again
    send(worker, ev.asset_id, ev.to_bytes())
    # a later upload proves the router got past the duplicates
    marker = upload(worker, photo(worker.inbox / "marker.jpg", seed=4))
    worker.wait_assets([marker.asset_id])
    after = worker.store().get_asset(ev.asset_id).to_json()
    assert after == before
    updates = read_topic("darkroom.assets").read_until(
        lambda ms: any(m.key() == marker.asset_id.encode() for m in ms))
    versions = [AssetUpdate.from_bytes(m.value()).version for m in updates
                if m.key() == ev.asset_id.encode()]
    assert len(versions) == len(set(versions)), "a duplicate emitted a second AssetUpdate"


def test_corrupt_jpeg_gives_error_result_and_dead_letter(worker, read_topic) -> None:  # type: ignore[no-untyped-def]
    good = photo(worker.inbox / "good-src.jpg", seed=5).read_bytes()
    corrupt = worker.inbox / "corrupt.jpg"
    corrupt.write_bytes(good[: len(good) // 2] + b"\x00garbage" * 50)
    bad = upload(worker, corrupt)
    nxt = upload(worker, photo(worker.inbox / "next.jpg", seed=6))
    assets = worker.wait_assets([bad.asset_id, nxt.asset_id])
    assert assets[nxt.asset_id].status == "complete"
    broken = assets[bad.asset_id]
    assert broken.status in ("failed", "partial")
    errs = {k: r for k, r in broken.results.items() if r["status"] == "error"}
    assert "blurhash" in errs and "corrupt" in errs["blurhash"]["error"].lower()
    dlq = read_topic("darkroom.dlq.blurhash").read_until(
        lambda ms: any(m.key() == bad.asset_id.encode() for m in ms))
    letter = next(DeadLetter.from_bytes(m.value()) for m in dlq if m.key() == bad.asset_id.encode())
    assert letter.task == "blurhash" and letter.original  # the original request, for requeue
    assert "corrupt" in letter.error.lower()


def test_malformed_event_is_dead_lettered_and_agent_survives(worker, read_topic) -> None:  # type: ignore[no-untyped-def]
    send(worker, "junk-1", b"\xc3\x01not avro at all")
    send(worker, "junk-2", b'{"json": "is not our contract"}')
    ok = upload(worker, photo(worker.inbox / "after-junk.jpg", seed=7))
    assert worker.wait_assets([ok.asset_id])[ok.asset_id].status == "complete"
    dlq = read_topic("darkroom.dlq.uploads").read_until(
        lambda ms: {b"junk-1", b"junk-2"} <= {m.key() for m in ms})
    # (other tests write to this topic too: look at ours)
    letters = [DeadLetter.from_bytes(m.value()) for m in dlq
               if m.key() in (b"junk-1", b"junk-2")]
    assert any(dl.original == b'{"json": "is not our contract"}' for dl in letters)
    assert letters and all("malformed" in dl.error for dl in letters), [
        dl.error for dl in letters]


def test_manual_postprocess_and_unknown_names(worker) -> None:  # type: ignore[no-untyped-def]
    ev = upload(worker, photo(worker.inbox / "manual.jpg", seed=8),
                postprocess=["no-such-task"])
    asset = worker.wait_assets([ev.asset_id])[ev.asset_id]
    assert asset.unknown_postprocesses == ["no-such-task"]


def test_object_outside_allowed_roots_is_an_error_not_a_read(worker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    outside = photo(tmp_path / "outside.jpg", seed=9)
    ev = upload(worker, outside)
    asset = worker.wait_assets([ev.asset_id])[ev.asset_id]
    assert asset.status == "failed"
    assert all("outside the allowed" in r["error"] for r in asset.results.values()
               if r["status"] == "error")


def test_non_media_upload_gets_no_image_tasks(worker) -> None:  # type: ignore[no-untyped-def]
    notes = worker.inbox / "notes.txt"
    notes.write_text("not an image")
    ev = UploadEvent(asset_id=uuid.uuid4().hex[:16], uri=LocalStorage.uri_for(notes),
                     filename="notes.txt", content_type="text/plain", uploaded_at=now_ms())
    send(worker, ev.asset_id, ev.to_bytes())
    asset = worker.wait_assets([ev.asset_id])[ev.asset_id]
    assert asset.status == "complete" and asset.results == {}
    assert asset.properties["file_size"] == len("not an image")


def test_an_event_naming_unknown_post_processes_gets_a_notice(worker) -> None:  # type: ignore[no-untyped-def]
    ev = upload(worker, photo(worker.inbox / "unknown-names.jpg", seed=5),
                postprocess=["tagg", "blurhash"])
    asset = worker.wait_assets([ev.asset_id])[ev.asset_id]
    assert asset.status == "complete" and asset.unknown_postprocesses == ["tagg"]
    assert any(n.startswith("unknown post-process name: tagg; known: ") for n in asset.notices)
