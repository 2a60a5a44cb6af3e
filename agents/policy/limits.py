"""The limits every edge enforces: the HTTP API (400 with the limit) and every Kafka topic (a dead
letter with the reason) apply the same rules, so nothing Darkroom accepts can grow into a message
the broker refuses.

Why these numbers: an upload event must stay far below the broker's 1 MB message limit even with
every field at its maximum (64 KiB script + 16 KiB context + 100 x 256 B tags + URIs ≈ 110 KiB),
and the asset update it becomes carries the folder, tags and context again next to the results.
Object keys must fit S3's 1024-byte limit and local file systems' 255-byte names.

Every check raises :class:`LimitError` (a ``ValueError``) whose message names the field and the
limit; callers turn it into a 400 or a dead letter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

MAX_ASSET_ID: Final = 128
ASSET_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
MAX_URI: Final = 2048
MAX_FILENAME_BYTES: Final = 255
MAX_FOLDER_BYTES: Final = 512
MAX_FOLDER_SEGMENT_BYTES: Final = 128
MAX_FOLDER_DEPTH: Final = 32
MAX_TAGS: Final = 100
MAX_TAG: Final = 256
MAX_CONTEXT_ENTRIES: Final = 100
MAX_CONTEXT_KEY: Final = 128
MAX_CONTEXT_VALUE: Final = 1024
MAX_CONTEXT_BYTES: Final = 16 * 1024
MAX_CONTEXT_JSON_DEPTH: Final = 2  # an object of strings: {"k": "v"}
MAX_POSTPROCESS: Final = 50
MAX_NAME: Final = 100
MAX_ON_SUCCESS_BYTES: Final = 64 * 1024
MAX_URL: Final = 2048
MAX_CONTENT_TYPE: Final = 255
MAX_FORMAT: Final = 32
MAX_TOPIC: Final = 249  # Kafka's own limit
TOPIC_RE: Final = re.compile(r"[A-Za-z0-9._-]+")
MAX_DIMENSION: Final = 1 << 20  # a hint larger than a million pixels per side is garbage

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


class LimitError(ValueError):
    """A value outside the documented limits (the message names the field and the limit)."""


def utf8_text(value: str, field: str) -> str:
    """Refuse strings that cannot be written as UTF-8 (lone surrogates, e.g. from ``\\udc80``
    escapes in JSON): Avro strings are UTF-8, and a mangled copy would be stored otherwise."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LimitError(f"{field} is not valid UTF-8 text: {exc.reason} at {exc.start}") from exc
    return value


def bounded_text(value: str, field: str, max_chars: int, *, controls: bool = False) -> str:
    utf8_text(value, field)
    if len(value) > max_chars:
        raise LimitError(f"{field} is {len(value)} characters long; the limit is {max_chars}")
    if not controls and _CONTROL.search(value):
        raise LimitError(f"{field} contains control characters")
    return value


def asset_id(value: str, field: str = "asset_id") -> str:
    """Non-empty, at most 128 characters of ``A-Z a-z 0-9 . _ : -``, starting alphanumeric."""
    if not isinstance(value, str) or not value:
        raise LimitError(f"{field} must be a non-empty string")
    if len(value) > MAX_ASSET_ID:
        raise LimitError(f"{field} is {len(value)} characters long; the limit is {MAX_ASSET_ID}")
    if not ASSET_ID_RE.fullmatch(value):
        raise LimitError(f"{field} {value[:40]!r} may only hold letters, digits and . _ : - "
                         "(and must start with a letter or digit)")
    return value


def uri(value: str, field: str = "uri") -> str:
    """A file:// or s3:// URI of at most 2048 characters, with no control characters, also once
    percent-decoded (``%00`` must not reach a file system call)."""
    from urllib.parse import unquote

    bounded_text(value, field, MAX_URI)
    if not (value.startswith("file://") or value.startswith("s3://")):
        raise LimitError(f"{field} must be a file:// or s3:// URI")
    if _CONTROL.search(unquote(value)):
        raise LimitError(f"{field} contains (percent-encoded) control characters")
    return value


def filename(value: str, field: str = "filename") -> str:
    bounded_text(value, field, MAX_FILENAME_BYTES)
    if len(value.encode("utf-8")) > MAX_FILENAME_BYTES:
        raise LimitError(f"{field} is longer than {MAX_FILENAME_BYTES} bytes")
    return value


def folder(value: str, field: str = "folder") -> str:
    """A folder path: at most 512 bytes, 32 levels, 128 bytes per segment (checked on the raw
    value; :func:`agents.storage.normalize_folder` refuses ``..`` and backslashes)."""
    utf8_text(value, field)
    size = len(value.encode("utf-8"))
    if size > MAX_FOLDER_BYTES:
        raise LimitError(f"{field} is {size} bytes long; the limit is {MAX_FOLDER_BYTES}")
    parts = [p for p in value.split("/") if p]
    if len(parts) > MAX_FOLDER_DEPTH:
        raise LimitError(f"{field} has {len(parts)} levels; the limit is {MAX_FOLDER_DEPTH}")
    for p in parts:
        if len(p.encode("utf-8")) > MAX_FOLDER_SEGMENT_BYTES:
            raise LimitError(f"{field} segment {p[:40]!r}... is longer than "
                             f"{MAX_FOLDER_SEGMENT_BYTES} bytes")
    return value


def tags(values: Iterable[str], field: str = "tags") -> list[str]:
    out = list(values)
    if len(out) > MAX_TAGS:
        raise LimitError(f"{len(out)} {field}; the limit is {MAX_TAGS}")
    for t in out:
        if not isinstance(t, str):
            raise LimitError(f"{field} must be strings")
        bounded_text(t, f"tag {t[:40]!r}", MAX_TAG)
    return out


def context(values: Mapping[str, Any], field: str = "context") -> dict[str, str]:
    """At most 100 entries of string keys (128) and string values (1024), 16 KiB in all."""
    if len(values) > MAX_CONTEXT_ENTRIES:
        raise LimitError(f"{field} has {len(values)} entries; the limit is {MAX_CONTEXT_ENTRIES}")
    total = 0
    out: dict[str, str] = {}
    for k, v in values.items():
        if not isinstance(k, str) or not k:
            raise LimitError(f"{field} keys must be non-empty strings")
        if not isinstance(v, str):
            raise LimitError(f"{field} value of {k[:40]!r} must be a string")
        bounded_text(k, f"{field} key {k[:40]!r}", MAX_CONTEXT_KEY)
        bounded_text(v, f"{field} value of {k[:40]!r}", MAX_CONTEXT_VALUE, controls=True)
        total += len(k.encode()) + len(v.encode())
        out[k] = v
    if total > MAX_CONTEXT_BYTES:
        raise LimitError(f"{field} holds {total} bytes; the limit is {MAX_CONTEXT_BYTES}")
    return out


MAX_METADATA_BYTES: Final = 16 * 1024


def metadata(values: Mapping[str, Any], field: str = "metadata") -> dict[str, Any]:
    """Structured metadata (Cloudinary's): at most 100 fields named like context keys, each a
    string (1024), a finite number, a boolean or a list of at most 100 strings; 16 KiB in all."""
    import json

    if len(values) > MAX_CONTEXT_ENTRIES:
        raise LimitError(f"{field} has {len(values)} fields; the limit is {MAX_CONTEXT_ENTRIES}")
    out: dict[str, Any] = {}
    for k, v in values.items():
        if not isinstance(k, str) or not k:
            raise LimitError(f"{field} field names must be non-empty strings")
        bounded_text(k, f"{field} field {k[:40]!r}", MAX_CONTEXT_KEY)
        what = f"{field} value of {k[:40]!r}"
        if isinstance(v, bool):
            pass
        elif isinstance(v, int | float):
            finite(float(v), what, minimum=-math.inf)
        elif isinstance(v, str):
            bounded_text(v, what, MAX_CONTEXT_VALUE, controls=True)
        elif isinstance(v, list):
            if len(v) > MAX_TAGS or not all(isinstance(x, str) for x in v):
                raise LimitError(f"{what} must be a list of at most {MAX_TAGS} strings")
            for x in v:
                bounded_text(x, what, MAX_CONTEXT_VALUE, controls=True)
        else:
            raise LimitError(f"{what} must be a string, a number, a boolean or a list of "
                             "strings")
        out[k] = v
    size = len(json.dumps(out, ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise LimitError(f"{field} holds {size} bytes; the limit is {MAX_METADATA_BYTES}")
    return out


def names(values: Iterable[str], field: str = "postprocess") -> list[str]:
    out = list(values)
    if len(out) > MAX_POSTPROCESS:
        raise LimitError(f"{len(out)} {field} names; the limit is {MAX_POSTPROCESS}")
    for n in out:
        if not isinstance(n, str) or not n:
            raise LimitError(f"{field} names must be non-empty strings")
        bounded_text(n, f"{field} name {n[:40]!r}", MAX_NAME)
    return out


def moderation(value: str | None, field: str = "moderation") -> str | None:
    """``manual`` or a post-process name (whether it exists is the config's to say)."""
    if value is None:
        return None
    bounded_text(value, field, MAX_NAME)
    if not value.strip():
        raise LimitError(f"{field} must be 'manual' or a post-process name")
    return value.strip()


def script(value: str | None, field: str = "on_success") -> str | None:
    if value is None:
        return None
    utf8_text(value, field)
    size = len(value.encode("utf-8"))
    if size > MAX_ON_SUCCESS_BYTES:
        raise LimitError(f"{field} is {size} bytes long; the limit is {MAX_ON_SUCCESS_BYTES}")
    return value


def url(value: str | None, field: str = "notification_url") -> str | None:
    """An http(s) URL whose host is a plain DNS name or IP literal (no percent-encoding: a host
    like ``%31%32%37.0.0.1`` is refused here, before any resolver sees it)."""
    if value is None:
        return None
    from urllib.parse import urlsplit

    bounded_text(value, field, MAX_URL)
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise LimitError(f"{field} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise LimitError(f"{field} must be an http:// or https:// URL with a host")
    if not _valid_host(host):
        raise LimitError(f"{field} host {host[:60]!r} is not a valid DNS name or IP address")
    return value


_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)


def _valid_host(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    if len(host) > 253:
        return False
    labels = host.rstrip(".").split(".")
    return all(_LABEL.fullmatch(label) for label in labels)


def topic_name(value: str, field: str = "reply_to") -> str:
    if len(value) > MAX_TOPIC or not TOPIC_RE.fullmatch(value) or value in (".", ".."):
        raise LimitError(f"{field} {value[:60]!r} is not a valid Kafka topic name "
                         f"(letters, digits, . _ -; at most {MAX_TOPIC})")
    return value


def finite(value: float | None, field: str, *, minimum: float = 0.0) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value < minimum:
        raise LimitError(f"{field} must be a finite number >= {minimum:g}, got {value!r}")
    return value


def dimension(value: int | None, field: str) -> int | None:
    if value is None:
        return None
    if not 1 <= value <= MAX_DIMENSION:
        raise LimitError(f"{field} must be between 1 and {MAX_DIMENSION}, got {value}")
    return value


def one_of(value: str, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise LimitError(f"{field} must be one of {', '.join(allowed)}; got {value[:40]!r}")
    return value


# --- raw sizes and the JSON context: checked before anything parses the value -----------------

MAX_CONTEXT_RAW_BYTES: Final = 8 * MAX_CONTEXT_BYTES
"""A context as sent: JSON escapes make up to 6 bytes of one (``\\u0001``), so 8x the decoded
limit admits every valid context and still bounds what ``json.loads`` is given."""

_JSON_STRUCTURE: Final = re.compile(r'["\\{}\[\]]')


def raw_bytes(size: int, field: str, max_bytes: int) -> int:
    """Refuse a value by its size as received, before anything parses or decodes it."""
    if size > max_bytes:
        raise LimitError(f"{field} is more than {max_bytes} bytes long; the limit is {max_bytes}")
    return size


def json_depth(text: str) -> int:
    """How deep objects and arrays nest in JSON text (``{"a": "b"}`` is 1), found without
    parsing: a linear scan that cannot recurse, so 100,000 brackets cost a scan, not the stack."""
    depth = deepest = 0
    in_string = False
    escaped = -1  # index of the character a backslash escapes
    for m in _JSON_STRUCTURE.finditer(text):
        i, c = m.start(), m.group()
        if in_string:
            if i == escaped:
                continue
            if c == "\\":
                escaped = i + 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "}]":
            depth -= 1
    return deepest


def context_json(raw: str, field: str = "context") -> dict[str, str]:
    """A context sent as JSON text: at most :data:`MAX_CONTEXT_RAW_BYTES`, a flat object of
    strings (no nesting: :data:`MAX_CONTEXT_JSON_DEPTH` counts the object and its values), no
    lone surrogates (``"\\udc80"`` escapes), and then the limits of :func:`context`."""
    import json

    utf8_text(raw, field)
    raw_bytes(len(raw.encode("utf-8")), field, MAX_CONTEXT_RAW_BYTES)
    depth = json_depth(raw)
    if depth >= MAX_CONTEXT_JSON_DEPTH:
        raise LimitError(f"{field} nests objects or arrays {depth} levels deep; it must be a "
                         "flat JSON object of strings")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, 4300-digit integers
        raise LimitError(f"{field} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise LimitError(f"{field} must be a JSON object")
    return context(value, field)


MAX_STORED_FILENAME_BYTES: Final = MAX_FILENAME_BYTES - len("." + "0" * 32 + ".tmp") - 1  # 217
"""An uploaded file's name as the object stores write it: local storage first writes
``.<name>.<32 hex>.tmp`` next to it (then renames), so 38 of a path segment's 255 bytes are
taken; a longer name failed as ``File name too long`` (a 500)."""


def stored_filename(value: str, field: str = "filename") -> str:
    """:func:`filename`, and at most :data:`MAX_STORED_FILENAME_BYTES` UTF-8 bytes."""
    filename(value, field)
    size = len(value.encode("utf-8"))
    if size > MAX_STORED_FILENAME_BYTES:
        raise LimitError(f"{field} is {size} bytes long; the limit is {MAX_STORED_FILENAME_BYTES}")
    return value
