"""Avro contracts of Darkroom and their wire framing.

Values on every topic are Avro, framed by the Avro specification's *single-object encoding*:
``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's parsing
canonical form + the binary body. Any Kafka client in any language can read and write them with the
``.avsc`` files in this folder alone; nothing here is needed on the other side.
"""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent
MAGIC = b"\xc3\x01"
HEADER_LEN = 10
NAMES = ("UploadEvent", "TaskRequest", "TaskResult", "AssetUpdate", "DeadLetter",
         "WebhookDelivery", "AssetCommand")

class SchemaError(ValueError):
    """A message that is not a Darkroom single-object Avro value (bad magic, unknown schema...)."""


class Schema:
    """One parsed writer schema with its single-object header."""

    def __init__(self, name: str, raw: dict[str, Any]) -> None:
        self.name = name
        self.raw = raw
        self.parsed = parse_schema(raw)
        self.canonical = to_parsing_canonical_form(self.parsed)
        self.fingerprint = int.from_bytes(
            bytes.fromhex(fingerprint(self.canonical, "CRC-64-AVRO")), "little")
        self.header = MAGIC + self.fingerprint.to_bytes(8, "little")
        # Read timestamps as plain epoch-millisecond ints: same binary layout, no datetime objects.
        self.reader = parse_schema(_strip_logical(raw))
        #: every published writer schema of this name, resolved to ``reader`` when read
        self.writers: dict[int, Any] = {self.fingerprint: None}

    def add_writer(self, fp: int, raw: dict[str, Any]) -> None:
        if fp != self.fingerprint:
            self.writers[fp] = parse_schema(_strip_logical(raw))

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        schemaless_writer(buf, self.parsed, record)
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode a value written with the current schema or any published earlier version
        (Avro schema resolution to the current reader: fields added since get their defaults)."""
        writer = None
        if data[:HEADER_LEN] != self.header:
            fp = int.from_bytes(data[2:HEADER_LEN], "little") if data[:2] == MAGIC else None
            if fp is None or fp not in self.writers or len(data) < HEADER_LEN:
                found = describe_header(data)
                raise SchemaError(f"expected a {self.name} single-object value, found {found}")
            writer = self.writers[fp]
        body = io.BytesIO(data[HEADER_LEN:])
        try:
            if writer is None:
                rec = schemaless_reader(body, self.reader, None)
            else:
                rec = schemaless_reader(body, writer, self.reader)
        except Exception as exc:  # fastavro raises many kinds on truncated/garbled bodies
            raise SchemaError(f"corrupt {self.name} body: {_what_broke(exc)}") from exc
        if not isinstance(rec, dict):
            raise SchemaError(f"corrupt {self.name} body")
        trailing = len(data) - HEADER_LEN - body.tell()
        if trailing:
            raise SchemaError(f"corrupt {self.name} body: {trailing} bytes after the record")
        return rec


def _what_broke(exc: BaseException) -> str:
    """A reader's failure in words (raw exception texts mean nothing to whoever wrote it)."""
    if isinstance(exc, UnicodeDecodeError):
        return "a string is not valid UTF-8"
    if isinstance(exc, IndexError):
        return "a union branch index is out of range"
    if isinstance(exc, EOFError | StopIteration):
        return "the body is truncated"
    if isinstance(exc, MemoryError | OverflowError):
        return "a length prefix is impossibly large"
    if isinstance(exc, ValueError) and "negative" in str(exc).lower():
        return "a length prefix is negative"
    return f"unreadable ({type(exc).__name__}: {str(exc)[:200]})"


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


def describe_header(data: bytes) -> str:
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        return f"no single-object header (first bytes {data[:4].hex() or 'empty'})"
    fp = int.from_bytes(data[2:HEADER_LEN], "little")
    name = _by_fingerprint().get(fp)
    if name is None:
        return f"unknown schema fingerprint {fp:016x} (not in schemas/history)"
    current = load(name).fingerprint == fp
    return f"a {name} value" + ("" if current else f" (published version {fp:016x})")


@cache
def load(name: str) -> Schema:
    """The current schema of ``name``, able to read every published version of it."""
    from schemas.history import versions

    path = SCHEMA_DIR / f"{name}.avsc"
    schema = Schema(name, json.loads(path.read_text()))
    for fp, raw in versions(name).items():
        schema.add_writer(int(fp, 16), raw)
    return schema


@cache
def _by_fingerprint() -> dict[int, str]:
    return {fp: n for n in NAMES for fp in load(n).writers}


def encode(name: str, record: dict[str, Any]) -> bytes:
    return load(name).encode(record)


def decode(name: str, data: bytes) -> dict[str, Any]:
    return load(name).decode(data)


def schema_name_of(data: bytes) -> str | None:
    """Which Darkroom schema wrote this value (by fingerprint), or None."""
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        return None
    return _by_fingerprint().get(int.from_bytes(data[2:HEADER_LEN], "little"))
