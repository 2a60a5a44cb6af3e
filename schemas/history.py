"""Every schema version ever published, and the rules a new version must follow.

A Kafka topic is a log: an ``UploadEvent`` written a year ago is replayed today, and during a
rolling upgrade old and new workers read each other's messages. So every version of every
contract that ever reached ``main`` stays here, in ``schemas/history/<Name>/<fingerprint>.avsc``
(the fingerprint as the single-object header spells it, ``%016x`` of the little-endian CRC-64-AVRO),
and :mod:`schemas` decodes a value written with *any* of them by resolving it to the current
reader schema (Avro schema resolution, done by fastavro).

A change is accepted only when it is **backward compatible** (the new schema reads data of every
published version) and **forward compatible** (every published version reads data of the new
schema), checked by :func:`problems` in CI (tests/unit/schemas/test_history.py). In practice:
add fields with defaults only; never remove a field that has no default, never rename (add an
``aliases`` entry instead), never change a type except by Avro's promotions (int → long → float
→ double, string ↔ bytes). A published file is never edited or removed: its name is its content's
fingerprint, and ``PUBLISHED`` lists every one.

``python -m schemas.history add`` records the current ``.avsc`` files (run it when a schema
changes); ``python -m schemas.history check`` prints every problem.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

HISTORY_DIR = Path(__file__).resolve().parent / "history"
MANIFEST = HISTORY_DIR / "PUBLISHED"

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
#: writer type -> reader types that can read it (Avro's promotions)
PROMOTIONS: dict[str, set[str]] = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}


def fingerprint_of(raw: Mapping[str, Any]) -> str:
    """``%016x`` of the little-endian CRC-64-AVRO fingerprint (as error messages print it)."""
    canonical = to_parsing_canonical_form(parse_schema(dict(raw)))
    return f"{int.from_bytes(bytes.fromhex(fingerprint(canonical, 'CRC-64-AVRO')), 'little'):016x}"


def versions(name: str) -> dict[str, dict[str, Any]]:
    """Every published version of ``name``: fingerprint -> raw schema."""
    folder = HISTORY_DIR / name
    if not folder.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.avsc"))}


def manifest() -> list[tuple[str, str]]:
    if not MANIFEST.exists():
        return []
    out = []
    for line in MANIFEST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, fp = line.split()
            out.append((name, fp))
    return out


# ------------------------------------------------------------------------ compatibility


def _type_name(t: Any) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, list):
        return "union"
    return str(t.get("type"))


def _strip(t: Any) -> Any:
    """Logical types read as their underlying type (a timestamp-millis is a long)."""
    if isinstance(t, dict) and t.get("type") in PRIMITIVES:
        return t["type"]
    return t


def problems(reader: Any, writer: Any, where: str) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty: it can)."""
    reader, writer = _strip(reader), _strip(writer)
    if isinstance(writer, list):
        # every branch the writer may have used must be readable
        return [p for branch in writer for p in _read_branch(reader, branch, where)]
    if isinstance(reader, list):
        if any(not problems(branch, writer, where) for branch in reader):
            return []
        return [f"{where}: no branch of the reader's union reads the writer's "
                f"{_type_name(writer)}"]
    rn, wn = _type_name(reader), _type_name(writer)
    if wn in PRIMITIVES or rn in PRIMITIVES:
        if rn == wn or rn in PROMOTIONS.get(wn, set()):
            return []
        return [f"{where}: a {wn} cannot be read as a {rn}"]
    if rn != wn:
        return [f"{where}: a {wn} cannot be read as a {rn}"]
    if rn == "record":
        return _record(reader, writer, where)
    if rn == "array":
        return problems(reader["items"], writer["items"], f"{where}[]")
    if rn == "map":
        return problems(reader["values"], writer["values"], f"{where}{{}}")
    if rn == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            return [f"{where}: the reader's enum lacks {sorted(missing)} and has no default"]
        return []
    if rn == "fixed" and reader.get("size") != writer.get("size"):
        return [f"{where}: fixed size {writer.get('size')} cannot be read as {reader.get('size')}"]
    return []


def _read_branch(reader: Any, branch: Any, where: str) -> list[str]:
    if isinstance(reader, list):
        if any(not problems(r, branch, where) for r in reader):
            return []
        return [f"{where}: the writer's {_type_name(branch)} branch has no reader branch"]
    return problems(reader, branch, where)


def _record(reader: Mapping[str, Any], writer: Mapping[str, Any], where: str) -> list[str]:
    out: list[str] = []
    written = {f["name"]: f for f in writer["fields"]}
    for field in reader["fields"]:
        names = [field["name"], *field.get("aliases", [])]
        source = next((written[n] for n in names if n in written), None)
        path = f"{where}.{field['name']}"
        if source is None:
            if "default" not in field:
                out.append(f"{path} has no default (data written without it cannot be read)")
            continue
        out += problems(field["type"], source["type"], path)
    return out


def check(name: str, current: Mapping[str, Any]) -> list[str]:
    """Backward and forward compatibility of ``current`` with every published ``name``."""
    out = []
    for fp, old in versions(name).items():
        out += [f"new {name} cannot read {fp}: {p}" for p in problems(current, old, name)]
        out += [f"{fp} readers cannot read the new {name}: {p}" for p in problems(old, current,
                                                                               name)]
    return out


def integrity() -> Iterator[str]:
    """Published files must be listed, unedited (name = fingerprint of the content) and present."""
    listed = set(manifest())
    for name, fp in sorted(listed):
        path = HISTORY_DIR / name / f"{fp}.avsc"
        if not path.exists():
            yield f"published {name} {fp} was removed ({path})"
        elif fingerprint_of(json.loads(path.read_text())) != fp:
            yield f"published {name} {fp} was edited: its content has another fingerprint"
    for folder in sorted(p for p in HISTORY_DIR.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.avsc")):
            if (folder.name, path.stem) not in listed:
                yield f"{path} is not listed in {MANIFEST.name}"


# ---------------------------------------------------------------------------------- commands


def add(names: Iterator[str] | None = None) -> list[str]:
    """Record the current ``.avsc`` of each schema as published (a no-op when it already is)."""
    from schemas import NAMES, SCHEMA_DIR

    added = []
    listed = set(manifest())
    for name in names or iter(NAMES):
        raw = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
        fp = fingerprint_of(raw)
        path = HISTORY_DIR / name / f"{fp}.avsc"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(raw, indent=2) + "\n")
        if (name, fp) not in listed:
            listed.add((name, fp))
            added.append(f"{name} {fp}")
    header = "# every published schema version: <Name> <fingerprint>; never edit or remove\n"
    MANIFEST.write_text(header + "".join(f"{n} {f}\n" for n, f in sorted(listed)))
    return added


def main(argv: list[str]) -> int:
    from schemas import NAMES, SCHEMA_DIR

    if argv[:1] == ["add"]:
        for line in add():
            print("published", line)
        return 0
    found = list(integrity())
    for name in NAMES:
        found += check(name, json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()))
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
