"""Schemas, framing and typed records agree with each other."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields

import pytest
from fastavro.schema import fingerprint

import schemas
from schemas.records import ALL_RECORDS, DeadLetter, TaskResult, UploadEvent


@pytest.mark.parametrize("record", ALL_RECORDS, ids=lambda r: r.SCHEMA)
def test_records_mirror_avsc(record: type) -> None:
    avsc = json.loads((schemas.SCHEMA_DIR / f"{record.SCHEMA}.avsc").read_text())
    assert [f["name"] for f in avsc["fields"]] == sorted(
        (f.name for f in fields(record)), key=[a["name"] for a in avsc["fields"]].index)
    for f in fields(record):
        spec = next(a for a in avsc["fields"] if a["name"] == f.name)
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        assert has_default == ("default" in spec), f"default of {record.SCHEMA}.{f.name}"


def test_fingerprint_matches_fastavro() -> None:
    for name in schemas.NAMES:
        s = schemas.load(name)
        assert s.header[2:].hex() == fingerprint(s.canonical, "CRC-64-AVRO")


def test_roundtrip_and_framing() -> None:
    ev = UploadEvent(asset_id="a", uri="file:///x", filename="x.jpg", width=3, tags=["t"],
                     context={"k": "v"}, uploaded_at=123)
    data = ev.to_bytes()
    assert data[:2] == b"\xc3\x01"
    assert schemas.schema_name_of(data) == "UploadEvent"
    assert UploadEvent.from_bytes(data) == ev
    res = TaskResult(request_id="r", asset_id="a", task="t", postprocess="t", status="ok",
                     data_json='{"x": 1}')
    assert TaskResult.from_bytes(res.to_bytes()).data == {"x": 1}


def test_wrong_or_garbled_values_are_clear_errors() -> None:
    ev = UploadEvent(asset_id="a", uri="u", filename="f").to_bytes()
    with pytest.raises(schemas.SchemaError, match=r"expected a TaskResult.*found a UploadEvent"):
        TaskResult.from_bytes(ev)
    with pytest.raises(schemas.SchemaError, match="no single-object header"):
        UploadEvent.from_bytes(b'{"json": 1}')
    with pytest.raises(schemas.SchemaError, match="corrupt UploadEvent"):
        UploadEvent.from_bytes(ev[:12])
    dl = DeadLetter(source_topic="t", error="e", original=b"\x00\x01")
    assert DeadLetter.from_bytes(dl.to_bytes()).original == b"\x00\x01"


def test_every_later_field_has_a_default() -> None:
    """Required fields are the original core; everything else must default (evolution)."""
    required = {
        "UploadEvent": {"asset_id", "uri", "filename"},
        "TaskRequest": {"request_id", "asset_id", "task", "postprocess", "uri"},
        "TaskResult": {"request_id", "asset_id", "task", "postprocess", "status"},
        "AssetUpdate": {"asset_id", "version", "status"},
        "DeadLetter": {"source_topic", "error", "original"},
        "WebhookDelivery": {"delivery_id", "asset_id", "version", "event", "url", "payload"},
        "AssetCommand": {"asset_id", "command"},
    }
    for name, req in required.items():
        avsc = json.loads((schemas.SCHEMA_DIR / f"{name}.avsc").read_text())
        assert {f["name"] for f in avsc["fields"] if "default" not in f} == req
