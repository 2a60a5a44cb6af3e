"""The one ingest function (API and CLI): checks, object, placeholder, event, roll-back."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from PIL import Image

from agents.composition import Runtime
from agents.ingest import (
    IngestUnavailable,
    InvalidUpload,
    UnprocessableUpload,
    UploadFields,
    UploadTooLarge,
    ingest,
)
from agents.settings import Settings
from schemas.records import UploadEvent


class FakeProducer:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[tuple[str, Any, bytes]] = []

    def send(self, topic: str, key: Any, value: bytes) -> bool:
        self.sent.append((topic, key, value))
        return True

    def flush_sync(self, timeout: float = 30.0) -> list[Any]:
        if self.fail:
            raise KafkaException("broker down")
        return []


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(Settings(data_dir=tmp_path / "data", max_upload_bytes=10_000,
                          max_image_pixels=1_000_000), "127.0.0.1:1")
    rt.__dict__["producer"] = FakeProducer()  # a service can be replaced before first use
    yield rt
    rt.close()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def jpeg(w: int = 40, h: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1))) + chunk(b"IEND", b""))


def objects(root: Runtime) -> list[Path]:
    return [p for p in root.settings.storage_dir.rglob("*") if p.is_file()]


def test_an_accepted_upload_is_stored_recorded_and_published(root: Runtime,
                                                             tmp_path: Path) -> None:
    src = write(tmp_path, "red.jpg", jpeg())
    done = ingest(root, src, "red.jpg", UploadFields(folder="users//42/", tags=["a"]),
                  reply_to="darkroom.replies.x")
    ev = done.event
    assert (ev.content_type, ev.width, ev.height, ev.format) == ("image/jpeg", 40, 30, "JPEG")
    assert ev.folder == "/users/42" and ev.reply_to == "darkroom.replies.x"
    assert len(objects(root)) == 1 and src.exists()  # the caller's file stays
    placeholder = root.store.get_asset(done.asset_id)
    assert placeholder is not None and placeholder.status == "pending"
    [(topic, key, value)] = root.producer.sent  # type: ignore[attr-defined]
    assert topic == "darkroom.uploads" and key == done.asset_id
    assert UploadEvent.from_bytes(value).uri == done.uri


@pytest.mark.parametrize(("data", "fields", "error", "detail"), [
    (b"", UploadFields(), InvalidUpload, "the uploaded file is empty"),
    (b"x" * 10_001, UploadFields(), UploadTooLarge, "upload larger than 10000 bytes"),
    (jpeg(), UploadFields(folder="/users/../etc"), InvalidUpload, "'..'"),
    (jpeg(), UploadFields(postprocess=["p"] * 51), InvalidUpload, "limit is 50"),
    (b"\xff\xd8\xff" + b"garbage" * 10, UploadFields(), UnprocessableUpload,
     "not a readable image"),
    (bomb_png(2000, 2000), UploadFields(), UnprocessableUpload, "decompression bomb guard"),
])
def test_refusals_are_typed_and_keep_nothing(root: Runtime, tmp_path: Path, data: bytes,
                                             fields: UploadFields, error: type[Exception],
                                             detail: str) -> None:
    with pytest.raises(error) as exc:
        ingest(root, write(tmp_path, "x.jpg", data), "x.jpg", fields)
    assert detail in str(exc.value)
    assert objects(root) == [] and root.producer.sent == []  # type: ignore[attr-defined]


def test_a_failed_publish_removes_object_and_placeholder(root: Runtime, tmp_path: Path) -> None:
    root.__dict__["producer"] = FakeProducer(fail=True)
    with pytest.raises(IngestUnavailable, match="could not be queued; nothing was kept"):
        ingest(root, write(tmp_path, "red.jpg", jpeg()), "red.jpg", UploadFields(),
               asset_id="rolled-back")
    assert objects(root) == []
    assert root.store.get_asset("rolled-back") is None


def test_the_name_is_a_fallback_only_when_the_bytes_say_nothing(root: Runtime,
                                                                tmp_path: Path) -> None:
    text = ingest(root, write(tmp_path, "notes.txt", b"hello"), "notes.txt", UploadFields(),
                  fallback_type="text/plain")
    assert text.event.content_type == "text/plain"
    named = ingest(root, write(tmp_path, "fake.png", jpeg()), "fake.png", UploadFields(),
                   fallback_type="image/png")
    assert named.event.content_type == "image/jpeg"  # the magic bytes win
    anon = ingest(root, write(tmp_path, "blob", b"\x00\x01"), None, UploadFields())
    assert anon.event.content_type == "application/octet-stream"
    assert anon.event.filename == "upload"


def test_checked_fields_are_normalised_and_checking_again_changes_nothing() -> None:
    f = UploadFields(folder="a//b/", postprocess=["x"], tags=["t"], context={"k": "v"})
    once = f.checked()
    assert once.folder == "/a/b" and once.checked() == once
    with pytest.raises(ValueError, match="notification_url"):
        UploadFields(notification_url="http://127.0.0.1/hook").checked()
