"""Every published schema version stays readable; a change that breaks compatibility, or an edited
or removed published version, fails here with a message naming the field."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

import schemas
from schemas import history
from schemas.records import ALL_RECORDS

CURRENT = {n: json.loads((schemas.SCHEMA_DIR / f"{n}.avsc").read_text()) for n in schemas.NAMES}


def test_published_versions_are_intact() -> None:
    assert list(history.integrity()) == []
    assert len(history.manifest()) >= len(schemas.NAMES)


@pytest.mark.parametrize("name", schemas.NAMES)
def test_the_current_schema_is_published_and_compatible(name: str) -> None:
    fp = history.fingerprint_of(CURRENT[name])
    assert (name, fp) in history.manifest(), (
        f"{name}.avsc changed: check it (python -m schemas.history check) and publish it "
        "(python -m schemas.history add)")
    assert history.check(name, CURRENT[name]) == []


def sample(raw: dict[str, Any]) -> dict[str, Any]:
    """A record of ``raw`` with every field set: defaults, else a value of its type."""
    values = {"string": "s", "bytes": b"b", "int": 1, "long": 2, "double": 1.5, "float": 0.5,
              "boolean": True}
    out: dict[str, Any] = {}
    for f in raw["fields"]:
        t = f["type"]
        if "default" in f:
            out[f["name"]] = f["default"]
        elif isinstance(t, dict) and t.get("logicalType"):
            out[f["name"]] = 123
        else:
            out[f["name"]] = values[t if isinstance(t, str) else t["type"]]
    return out


def framed(raw: dict[str, Any], fp: str, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(raw), record)
    return b"\xc3\x01" + int(fp, 16).to_bytes(8, "little") + buf.getvalue()


@pytest.mark.parametrize("record", ALL_RECORDS, ids=lambda r: r.SCHEMA)
def test_values_of_every_published_version_decode_today(record: Any) -> None:
    found = history.versions(record.SCHEMA)
    assert found, "no published version"
    for fp, raw in found.items():
        value = record.from_bytes(framed(raw, fp, sample(raw)))
        current_names = {f["name"] for f in CURRENT[record.SCHEMA]["fields"]}
        assert set(value.to_dict()) == current_names  # fields added since have their defaults


def with_field(name: str, field: dict[str, Any]) -> dict[str, Any]:
    raw = json.loads(json.dumps(CURRENT[name]))
    raw["fields"].append(field)
    return raw


def test_a_field_without_a_default_is_refused_by_name() -> None:
    bad = with_field("UploadEvent", {"name": "tenant", "type": "string"})
    found = history.check("UploadEvent", bad)
    assert found and all("UploadEvent.tenant has no default" in p for p in found)
    assert history.check("UploadEvent", with_field(
        "UploadEvent", {"name": "tenant", "type": ["null", "string"], "default": None})) == []


def test_type_changes_follow_avro_promotions() -> None:
    widened = json.loads(json.dumps(CURRENT["DeadLetter"]))
    for f in widened["fields"]:
        if f["name"] == "attempts":
            f["type"] = "long"
    found = history.check("DeadLetter", widened)
    # an int widened to long: new readers read old data; old readers cannot read a long
    assert found and all("readers cannot read the new DeadLetter" in p for p in found)
    assert any("DeadLetter.attempts: a long cannot be read as a int" in p for p in found)
    renamed = json.loads(json.dumps(CURRENT["TaskRequest"]))
    for f in renamed["fields"]:
        if f["name"] == "uri":
            f["name"], f["aliases"] = "object_uri", ["uri"]
    backward = [p for p in history.check("TaskRequest", renamed) if p.startswith("new ")]
    assert backward == []  # the alias lets the new reader find the old field


def test_an_edited_or_removed_published_version_is_caught(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "history"
    shutil.copytree(history.HISTORY_DIR, copy)
    monkeypatch.setattr(history, "HISTORY_DIR", copy)
    monkeypatch.setattr(history, "MANIFEST", copy / "PUBLISHED")
    name, fp = history.manifest()[0]
    path = copy / name / f"{fp}.avsc"
    raw = json.loads(path.read_text())
    raw["fields"] = raw["fields"][:-1]
    path.write_text(json.dumps(raw))
    assert any("was edited" in p for p in history.integrity())
    path.unlink()
    assert any("was removed" in p for p in history.integrity())


def test_unknown_fingerprints_say_so() -> None:
    with pytest.raises(schemas.SchemaError, match="unknown schema fingerprint 00000000000000ff"):
        schemas.decode("UploadEvent", b"\xc3\x01" + (255).to_bytes(8, "little") + b"\x00")
