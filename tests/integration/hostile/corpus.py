"""The hostile-input corpus: deterministic, seeded; every case says how to deliver it and which
outcomes count as clear (any one of them passes).

Classes (``CLASSES``): images, videos, events, api, on_success, webhooks. The expectations come
from the issue "No message can stop the pipeline", not from what Darkroom does today:

* images/videos: accepted and processed correctly, or refused (API 4xx with a detail) / an error
  result on the asset with a clear permanent error. A success on a broken file is a failure.
* events: a dead letter on the matching ``<prefix>.dlq.*`` topic whose error names the reason;
  the agent moves on (the runner's barriers and canaries check that part).
* api: a clear 4xx with a detail, never 5xx; valid-but-odd requests get a 2xx.
* on_success: the asset completes and the script failure is recorded under ``on_success.script``.
* webhooks: delivery refused (state ``refused``), never a connection to the runner's loopback
  listener.

Values that depend on the running stack (paths, ports, the topic prefix, the asset id of the
delivery) are written as placeholders (``INBOX``, ``SECRET``, ...) and substituted by
:func:`substitute` at delivery time; Avro values are rendered by :func:`render_value` after the
substitution, so lengths stay right.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from tests.integration.hostile import media as m

SEED = 20261201

CLASSES: tuple[str, ...] = ("api", "images", "videos", "on_success", "webhooks", "events")

# ------------------------------------------------------------------------------ placeholders
INBOX = "%%INBOX%%"        # the worker's extra file root (absolute, no trailing slash)
SECRET = "%%SECRET%%"      # the canary secret file (absolute path outside every storage root)
LPORT = "%%LPORT%%"        # port of the loopback listener that must never see a connection
ALLOWED = "%%ALLOWED%%"    # host:port of the allowlisted receiver (127.0.0.2)
PREFIX = "%%PREFIX%%"      # the topic prefix of the running stack
AID = "%%AID%%"            # the asset id (and Kafka key) of this delivery
OKJPEG = "%%OKJPEG%%"      # file:// URI of a valid 300x200 JPEG inside the inbox
REQID = "%%REQID%%"        # request id of the blurhash task of the asset prepared for the case
DELIVERY = "%%DELIVERY%%"  # delivery id of the (failing) webhook of the asset prepared for it


@dataclass(frozen=True)
class Ctx:
    """What the placeholders stand for in one delivery."""

    inbox: str
    secret: str
    lport: int
    allowed: str
    prefix: str
    aid: str
    okjpeg: str
    reqid: str = ""
    delivery: str = ""

    def table(self) -> dict[str, str]:
        return {INBOX: self.inbox, SECRET: self.secret, LPORT: str(self.lport),
                ALLOWED: self.allowed, PREFIX: self.prefix, AID: self.aid, OKJPEG: self.okjpeg,
                REQID: self.reqid, DELIVERY: self.delivery}


def substitute(value: Any, ctx: Ctx) -> Any:
    """Replace placeholders in strings/bytes, recursively through lists, tuples and dicts."""
    table = ctx.table()
    if isinstance(value, str):
        for k, v in table.items():
            if k in value:
                value = value.replace(k, v)
        return value
    if isinstance(value, bytes):
        for k, v in table.items():
            kb = k.encode()
            if kb in value:
                value = value.replace(kb, v.encode())
        return value
    if isinstance(value, list):
        return [substitute(v, ctx) for v in value]
    if isinstance(value, tuple):
        return tuple(substitute(v, ctx) for v in value)
    if isinstance(value, dict):
        return {substitute(k, ctx): substitute(v, ctx) for k, v in value.items()}
    return value


# -------------------------------------------------------------------------------- deliveries


@dataclass(frozen=True)
class Part:
    """One multipart/form-data part."""

    name: bytes
    data: bytes
    filename: bytes | None = None
    content_type: bytes | None = None


@dataclass(frozen=True)
class Http:
    """One HTTP request to the API, sent over a raw socket exactly as described."""

    method: str
    target: str                               # request target, sent as is
    headers: tuple[tuple[str, bytes], ...] = ()
    body: bytes = b""                         # raw body (used when parts is None)
    parts: tuple[Part, ...] | None = None     # a multipart/form-data body
    auth: bool = True                         # add the valid X-API-Key
    chunked: bool = False                     # Transfer-Encoding: chunked, no Content-Length
    content_length: bytes | None = None       # a Content-Length value to send instead
    stream_extra: int = 0                     # stream this many more bytes after the body
    upload: bool = False                      # POST /v1/assets: a 2xx names an asset to follow


@dataclass(frozen=True)
class RawUpload:
    """A file written into the worker's inbox, named by an UploadEvent on ``<prefix>.uploads``."""

    filename: str
    data: bytes | None                        # None: no file (the uri names something else)
    fields: Mapping[str, Any] = field(default_factory=dict)   # UploadEvent overrides
    symlink_to: str | None = None             # write a symlink to this path instead


@dataclass(frozen=True)
class Mutation:
    """A byte-level edit of an encoded single-object value."""

    kind: Literal["truncate", "garbage", "bad_utf8", "union_index", "huge_length",
                  "negative_length", "trailing", "header_only"]
    arg: Any = None


@dataclass(frozen=True)
class Record:
    """An Avro single-object value of ``schema`` (defaults filled by schemas.records)."""

    schema: str
    fields: Mapping[str, Any]
    mutation: Mutation | None = None
    header_of: str | None = None              # the body of ``schema`` under this header


@dataclass(frozen=True)
class Raw:
    data: bytes


@dataclass(frozen=True)
class Message:
    """Raw bytes on ``<prefix>.<topic>``; ``value`` None is a tombstone."""

    topic: str                                # e.g. "uploads", "tasks.blurhash"
    key: bytes | None
    value: Record | Raw | None
    prepare: Literal["", "asset", "delivery"] = ""
    # "asset": first upload a valid asset with id AID (its blurhash request id is REQID);
    # "delivery": the same with a webhook to a failing receiver (its delivery id is DELIVERY)


Delivery = Http | RawUpload | Message

# -------------------------------------------------------------------------------- outcomes

DAMAGED = ("damaged", "corrupt", "truncated", "broken", "cannot identify", "recognised",
           "recognized", "unidentified", "not a readable", "unreadable", "not a valid",
           "invalid", "unsupported", "decod", "empty", "zero", "premature", "incomplete",
           "missing", "not an image")
LIMIT = ("pixel", "limit", "bomb", "too large", "too big", "exceeds", "over the")
VIDEO = (*DAMAGED, "video", "audio", "still image", "frames", "duration", "moov", "stream",
         "ffprobe", "container", "not a media")
TOMBSTONE = ("tombstone", "null", "no value", "empty")
MALFORMED = ("malformed", "single-object", "header", "schema", "fingerprint", "corrupt",
             "magic", "decode", "empty", "not a")
CORRUPT = ("corrupt", "truncated", "malformed", "body", "decode", "eof", "short", "invalid")
UTF8 = ("utf-8", "utf8", "unicode", "decode", "invalid", "malformed", "corrupt")
UNION = ("union", "branch", "index", "corrupt", "malformed", "decode", "invalid")
TRAILING = ("trailing", "extra", "left over", "leftover", "unread", "corrupt", "malformed")
OUTSIDE = ("outside", "allowed", "root", "not allowed", "forbidden", "traversal")


@dataclass(frozen=True)
class Processed:
    """Accepted and processed correctly: status complete, every result ok, the true size."""

    kind: Literal["image", "video", "other"] = "image"
    width: int | None = None
    height: int | None = None
    swap_ok: bool = False                     # EXIF orientation may swap width and height

    def text(self) -> str:
        size = f" {self.width}x{self.height}" if self.width else ""
        return f"processed as {self.kind}{size}"


@dataclass(frozen=True)
class Refused:
    """The API refused the upload: a 4xx with a detail naming the reason."""

    words: tuple[str, ...] = (*DAMAGED, *LIMIT)

    def text(self) -> str:
        return "API 4xx with a detail"


@dataclass(frozen=True)
class ErrorResult:
    """The asset ended failed/partial/refused with a clear permanent error; no decoding task
    reported success (a grey-filled decode)."""

    words: tuple[str, ...] = DAMAGED

    def text(self) -> str:
        return "error result with a clear permanent error"


@dataclass(frozen=True)
class DeadLettered:
    """A dead letter whose error names the reason, on one of ``topics``: ``uploads``,
    ``results``, ``webhooks``, ``task`` (any task's dlq) or ``task:<name>``."""

    topics: tuple[str, ...]
    words: tuple[str, ...]
    original_kind: str | None = None          # checked when dead letters carry the field

    def text(self) -> str:
        return f"dead letter on dlq.{'|'.join(self.topics)} naming {'/'.join(self.words[:3])}"


@dataclass(frozen=True)
class HttpAnswer:
    """A status in [low, high]; 4xx answers carry a JSON ``detail``; an accepted upload must
    reach a final status."""

    low: int
    high: int
    words: tuple[str, ...] = ()

    def text(self) -> str:
        return f"HTTP {self.low}-{self.high}" + (" with a detail" if self.low >= 400 else "")


@dataclass(frozen=True)
class ScriptFailed:
    """Asset complete; ``on_success.script`` records status error (one of ``kinds``)."""

    kinds: tuple[str, ...] = ()

    def text(self) -> str:
        return f"complete, on_success.script error ({'/'.join(self.kinds) or 'any'})"


@dataclass(frozen=True)
class NotDelivered:
    """The webhook was not delivered: every delivery of the asset in one of ``states``."""

    states: tuple[str, ...] = ("refused",)

    def text(self) -> str:
        return f"webhook {'/'.join(self.states)}"


@dataclass(frozen=True)
class ResultOk:
    """A task request was processed: an ok TaskResult with its request id (and true size)."""

    width: int | None = None
    height: int | None = None

    def text(self) -> str:
        return "ok task result" + (f" of {self.width}x{self.height}" if self.width else "")


Outcome = (Processed | Refused | ErrorResult | DeadLettered | HttpAnswer | ScriptFailed
           | NotDelivered | ResultOk)


@dataclass(frozen=True)
class Case:
    id: str
    klass: str
    group: str
    description: str
    delivery: Delivery
    expect: tuple[Outcome, ...]
    fast: bool = False

    def expected_text(self) -> str:
        return " or ".join(o.text() for o in self.expect)


# ------------------------------------------------------------------------------ rendering


def encode_record(schema: str, fields: Mapping[str, Any]) -> bytes:
    import schemas
    from schemas.records import ALL_RECORDS

    cls = {c.SCHEMA: c for c in ALL_RECORDS}[schema]
    return schemas.encode(schema, cls.from_dict(dict(fields)).to_dict())


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _mutate(data: bytes, mut: Mutation) -> bytes:
    head, body = data[:10], data[10:]
    if mut.kind == "truncate":
        return head + body[: int(len(body) * float(mut.arg))]
    if mut.kind == "garbage":
        size, seed = mut.arg
        return head + m.rand_bytes(int(size), int(seed))
    if mut.kind == "header_only":
        return head
    if mut.kind == "trailing":
        return data + bytes(mut.arg)
    marker = str(mut.arg[0] if isinstance(mut.arg, tuple) else mut.arg).encode()
    pos = body.find(marker)
    if pos < 2:
        raise ValueError(f"marker {marker!r} not found")
    if mut.kind == "bad_utf8":
        bad = (b"\xc3\x28\xff\xfe\xed\xa0\x80" * len(marker))[: len(marker)]
        return head + body[:pos] + bad + body[pos + len(marker):]
    if mut.kind == "union_index":
        index = int(mut.arg[1])
        return head + body[: pos - 2] + _varint(index) + body[pos - 1:]
    if mut.kind == "huge_length":
        return head + body[: pos - 1] + _varint(1 << 60) + body[pos:]
    if mut.kind == "negative_length":
        return head + body[: pos - 1] + _varint(-5) + body[pos:]
    raise ValueError(mut.kind)


def render_value(value: Record | Raw | None, ctx: Ctx) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, Raw):
        return bytes(substitute(value.data, ctx))
    import schemas

    data = encode_record(value.schema, substitute(dict(value.fields), ctx))
    if value.header_of:
        data = schemas.load(value.header_of).header + data[10:]
    if value.mutation is not None:
        data = _mutate(data, value.mutation)
    return data


# ------------------------------------------------------------------------------ builders

_BASE = [SEED]


def _rb(n: int, k: int) -> bytes:
    """Deterministic random bytes: stream ``k`` of the corpus seed."""
    return m.rand_bytes(n, _BASE[0] * 1000 + k)


def _gs(k: int) -> int:
    """A seed for a mutation made at delivery time (stream ``k`` of the corpus seed)."""
    return _BASE[0] * 1000 + k

def _case(cases: list[Case], klass: str, group: str, name: str, description: str,
          delivery: Delivery, expect: Iterable[Outcome]) -> None:
    cases.append(Case(f"{klass}/{group}/{name}", klass, group, description, delivery,
                      tuple(expect)))


#: classes sampled twice per group in the fast subset (the others once)
_FAST_TWICE = ("images", "webhooks")

#: events are picked by hand for the fast subset: one of each kind of poison
_FAST_EVENTS = {f"events/{n}" for n in (
    "uploads-malformed/uploads/tombstone", "uploads-malformed/uploads/wrong-schema",
    "uploads-malformed/uploads/2mb-malformed",
    "tasks-malformed/tasks.blurhash/tombstone-no-key",
    "tasks-malformed/tasks.validate-image/union-index-out-of-range",
    "results-malformed/results.blurhash/invalid-utf8",
    "webhooks-malformed/webhooks/garbage-body",
    "uploads-fields/uploads/asset-id-empty", "uploads-fields/uploads/uri-traversal-to-secret",
    "uploads-fields/uploads/reply-to-space-slash",
    "uploads-fields/uploads/notification-url-pct-encoded-host",
    "uploads-fields/uploads/duration-nan", "uploads-fields/uploads/symlink-to-secret",
    "tasks-fields/tasks.blurhash/params-deep-nesting",
    "results-fields/results.blurhash/status-banana",
    "webhooks-fields/webhooks/due-at-far-future")}


def _mark_fast(cases: list[Case]) -> list[Case]:
    """The fast subset: the first case of every (class, group), and the middle one too for
    the larger classes: every class and every group is represented."""
    from dataclasses import replace

    groups: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(cases):
        groups.setdefault((c.klass, c.group), []).append(i)
    chosen = {i for i, c in enumerate(cases) if c.id in _FAST_EVENTS}
    for (klass, _g), idx in groups.items():
        if klass == "events":
            continue
        chosen.add(idx[0])
        if klass in _FAST_TWICE and len(idx) >= 4:
            chosen.add(idx[len(idx) // 2])
    return [replace(c, fast=i in chosen) for i, c in enumerate(cases)]


def api_upload(filename: str, data: bytes, part_type: bytes = b"application/octet-stream",
               **form: str | bytes) -> Http:
    parts = [Part(b"file", data, filename.encode(), part_type)]
    for k, v in form.items():
        parts.append(Part(k.encode(), v if isinstance(v, bytes) else v.encode()))
    return Http("POST", "/v1/assets", parts=tuple(parts), upload=True)


def _mime(filename: str) -> str:
    import mimetypes

    return mimetypes.guess_type(filename)[0] or ""


# ------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class _Variant:
    group: str
    name: str
    filename: str
    data: bytes
    expect: tuple[Outcome, ...]
    description: str


def _valid(w: int, h: int, swap: bool = False) -> tuple[Outcome, ...]:
    return (Processed("image", w, h, swap),)


def _either(w: int | None, h: int | None, swap: bool = False) -> tuple[Outcome, ...]:
    return (Processed("image", w, h, swap), Refused(), ErrorResult((*DAMAGED, *LIMIT)),
            DeadLettered(("uploads", "task"), (*DAMAGED, *LIMIT)))


def _broken(words: tuple[str, ...] = DAMAGED) -> tuple[Outcome, ...]:
    return (Refused(words), ErrorResult(words), DeadLettered(("uploads", "task"), words))


def _non_image() -> tuple[Outcome, ...]:
    return (Processed("other"), *_broken())


def _image_variants() -> list[_Variant]:
    v: list[_Variant] = []

    def add(group: str, name: str, filename: str, data: bytes, expect: tuple[Outcome, ...],
            desc: str) -> None:
        v.append(_Variant(group, name, filename, data, expect, desc))

    base = m.picture(320, 240, seed=3)
    jpeg = m.encode(base, "JPEG", quality=88)
    png = m.encode(base, "PNG")
    gif = m.encode(base.convert("P", palette=Image.Palette.ADAPTIVE, colors=200), "GIF")
    webp = m.encode(base, "WEBP", quality=80)
    prog = m.encode(base, "JPEG", quality=88, progressive=True)

    # --- valid pictures in unusual shapes: must be processed correctly
    add("valid", "jpeg-baseline", "photo.jpg", jpeg, _valid(320, 240), "a plain JPEG (control)")
    add("valid", "png-rgb", "photo.png", png, _valid(320, 240), "a plain PNG (control)")
    add("valid", "gif-static", "photo.gif", gif, _valid(320, 240), "a palette GIF")
    add("valid", "webp-lossy", "photo.webp", webp, _valid(320, 240), "a lossy WebP")
    add("valid", "webp-lossless", "ll.webp", m.encode(base, "WEBP", lossless=True),
        _valid(320, 240), "a lossless WebP")
    add("valid", "bmp", "photo.bmp", m.encode(base, "BMP"), _valid(320, 240), "a BMP")
    add("valid", "tiff", "photo.tif", m.encode(base, "TIFF", compression="tiff_lzw"),
        _valid(320, 240), "an LZW TIFF")
    add("valid", "jpeg-cmyk", "cmyk.jpg", m.encode(base.convert("CMYK"), "JPEG", quality=85),
        _valid(320, 240), "a CMYK JPEG (Adobe marker)")
    add("valid", "jpeg-gray", "gray.jpg", m.encode(base.convert("L"), "JPEG"), _valid(320, 240),
        "a greyscale JPEG")
    add("valid", "jpeg-progressive", "prog.jpg", prog, _valid(320, 240), "a progressive JPEG")
    add("valid", "png-16bit-gray", "g16.png", m.encode(base.convert("I;16"), "PNG"),
        _valid(320, 240), "a 16-bit greyscale PNG")
    add("valid", "png-palette-trns", "pal.png",
        m.encode(base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG",
                 transparency=0),
        _valid(320, 240), "a palette PNG with tRNS")
    add("valid", "png-rgba", "rgba.png", m.encode(base.convert("RGBA"), "PNG"),
        _valid(320, 240), "an RGBA PNG")
    frames = [m.picture(160, 120, seed=s).convert("P", palette=Image.Palette.ADAPTIVE)
              for s in (4, 5, 6)]
    add("valid", "gif-animated", "anim.gif",
        m.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0),
        _valid(160, 120), "an animated GIF (3 frames)")
    rgbf = [m.picture(160, 120, seed=s) for s in (7, 8)]
    add("valid", "webp-animated", "anim.webp",
        m.encode(rgbf[0], "WEBP", save_all=True, append_images=rgbf[1:], duration=80),
        _valid(160, 120), "an animated WebP")
    add("valid", "apng", "anim.png",
        m.encode(rgbf[0], "PNG", save_all=True, append_images=rgbf[1:], duration=80),
        _valid(160, 120), "an animated PNG")
    add("valid", "png-1x1", "one.png", m.encode(m.picture(1, 1, seed=9), "PNG"), _valid(1, 1),
        "a 1x1 PNG")
    add("valid", "jpeg-1x1", "one.jpg", m.encode(m.picture(1, 1, seed=9), "JPEG"), _valid(1, 1),
        "a 1x1 JPEG")
    add("valid", "png-strip-4000x1", "strip.png", m.encode(m.picture(4000, 1, seed=10), "PNG"),
        _valid(4000, 1), "a 4000x1 strip")

    # --- wrong extensions (content type comes from the magic bytes, never the name)
    add("wrong-ext", "png-as-jpg", "really-png.jpg", png, _valid(320, 240), "a PNG named .jpg")
    add("wrong-ext", "jpeg-as-png", "really-jpeg.png", jpeg, _valid(320, 240),
        "a JPEG named .png")
    add("wrong-ext", "webp-as-gif", "really-webp.gif", webp, _valid(320, 240),
        "a WebP named .gif")
    add("wrong-ext", "gif-as-webp", "really-gif.webp", gif, _valid(320, 240),
        "a GIF named .webp")
    add("wrong-ext", "jpeg-no-ext", "noextension", jpeg, _valid(320, 240),
        "a JPEG without an extension")
    add("wrong-ext", "jpeg-as-txt", "notes.txt", jpeg,
        (Processed("image", 320, 240), Processed("other")),
        "a JPEG named .txt (image by its bytes, or an opaque file by its name)")

    # --- EXIF orientation junk: the picture is fine, the tag is not
    for name, tiff in (
        ("orientation-0", m.tiff_ifd([m.orientation_entry(0)])),
        ("orientation-9", m.tiff_ifd([m.orientation_entry(9)])),
        ("orientation-65535", m.tiff_ifd([m.orientation_entry(65535)])),
        ("orientation-ascii", m.tiff_ifd([(0x0112, 2, 4, b"six\x00")])),
        ("orientation-count-1000", m.tiff_ifd([(0x0112, 3, 1000, b"\xf0\xff\x00\x00")])),
        ("ifd-offset-out-of-range", m.tiff_ifd([], ifd_offset=8)[:4] + b"\xf0\xff\xff\x7f"),
        ("ifd-loop", m.tiff_ifd([m.orientation_entry(6), (0x8769, 4, 1,
                                                           struct.pack("<I", 8))], next_ifd=8)),
        ("ifd-65535-entries", b"II*\x00\x08\x00\x00\x00\xff\xff" + b"\x12\x01\x03\x00" * 8),
        ("garbage-app1", _rb(200, 11)),
    ):
        add("exif", name, f"{name}.jpg", m.jpeg_with_exif(jpeg, tiff), _valid(320, 240, True),
            f"a valid JPEG whose EXIF is junk ({name})")
    add("exif", "orientation-6", "rot6.jpg",
        m.jpeg_with_exif(jpeg, m.tiff_ifd([m.orientation_entry(6)])), _valid(240, 320, True),
        "a valid JPEG rotated by EXIF orientation 6")
    add("exif", "png-exif-garbage", "exif.png", m.png_insert(png, b"eXIf", _rb(64, 12)),
        _valid(320, 240, True), "a PNG with a garbage eXIf chunk")

    # --- polyglots
    add("polyglot", "jpeg-plus-zip", "poly.jpg", jpeg + m.zip_bytes(), _valid(320, 240),
        "a JPEG with a ZIP archive appended")
    add("polyglot", "png-plus-html", "poly.png",
        png + b"<html><script>alert(document.cookie)</script></html>", _valid(320, 240),
        "a PNG with HTML after IEND")
    add("polyglot", "jpeg-html-comment", "comment.jpg",
        m.jpeg_insert(jpeg, 0xFE, b"<script>alert(1)</script>" * 2000), _valid(320, 240),
        "a JPEG carrying 50 kB of HTML in a COM segment")
    add("polyglot", "gifar-js", "gifar.gif",
        b"GIF89a/*\x00\x00\x00\x00*/=1;alert(1);//" + m.zip_bytes(), _non_image(),
        "GIF89a/* ... */ JavaScript + ZIP (a GIFAR-style polyglot)")
    add("polyglot", "pdf-with-jpeg", "doc.jpg", m.pdf_with(jpeg), _non_image(),
        "a PDF embedding a JPEG, named .jpg")
    add("polyglot", "html-as-png", "page.png",
        b"<!doctype html><html><body onload=alert(1)>hi</body></html>", _non_image(),
        "an HTML page named .png")
    add("polyglot", "svg-xxe", "vector.png",
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file://' + SECRET.encode()
        + b'">]><svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text>'
        b'<image href="http://127.0.0.1:' + LPORT.encode() + b'/svg"/></svg>', _non_image(),
        "an SVG with an XXE entity naming the canary secret and an href to the loopback listener")
    add("polyglot", "zip-as-jpg", "archive.jpg", m.zip_bytes(), _non_image(),
        "a ZIP archive named .jpg")

    # --- truncations at several cut points (inside the pixel data)
    for fmt, data, ext in (("jpeg", jpeg, "jpg"), ("png", png, "png"), ("gif", gif, "gif"),
                           ("webp", webp, "webp")):
        for frac in (0.02, 0.25, 0.5, 0.75, 0.95):
            pct = int(frac * 100)
            add("truncated", f"{fmt}-{pct}pct", f"cut{pct}.{ext}", m.cut(data, frac), _broken(),
                f"a {fmt.upper()} cut at {pct} % of its bytes")
    add("truncated", "jpeg-progressive-50pct", "prog50.jpg", m.cut(prog, 0.5), _broken(),
        "a progressive JPEG cut at 50 % (the first scans are complete)")
    add("truncated", "gif-animated-20pct", "anim20.gif",
        m.cut(m.encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), 0.2),
        _broken(), "an animated GIF cut inside its first frame")
    add("truncated", "png-no-iend-cut-idat", "noiend.png",
        m.cut(m.png_without(png, b"IEND"), 0.9), _broken(), "a PNG without IEND, IDAT cut")

    # --- garbage entropy data under valid headers
    add("garbage", "jpeg-random-scan", "noise.jpg", m.jpeg_random_scan(jpeg, _gs(13)), _broken(),
        "valid JPEG tables and frame header, entropy-coded data pure noise")
    add("garbage", "png-random-idat", "noise.png", m.png_random_idat(png, _gs(14)), _broken(),
        "a PNG whose IDAT is random bytes (valid CRCs)")
    add("garbage", "gif-random-lzw", "noise.gif", m.gif_random_lzw(gif, _gs(15)), _broken(),
        "a GIF whose LZW data is random")
    add("garbage", "webp-random-vp8", "noise.webp", m.webp_random_vp8(webp, _gs(16)), _broken(),
        "a WebP whose VP8 bitstream is random after the frame header")
    add("garbage", "png-bad-crc", "crc.png", m.png_bad_crc(png), _either(320, 240),
        "a PNG whose IDAT CRC is wrong (the pixel data itself is intact)")
    add("garbage", "jpeg-no-huffman-tables", "nodht.jpg", m.jpeg_without(jpeg, 0xC4),
        _either(320, 240), "a JPEG without its DHT segments (decoders may use the standard "
        "tables it was written with)")
    add("garbage", "random-named-jpg", "random.jpg", _rb(30000, 17), _non_image(),
        "30 kB of random bytes named .jpg")
    add("garbage", "png-magic-then-random", "magic.png", m.PNG_SIG + _rb(30000, 18),
        _broken(), "the PNG signature followed by random bytes")
    add("garbage", "jpeg-magic-then-random", "magic.jpg", b"\xff\xd8\xff" + _rb(30000, 19),
        _broken(), "the JPEG SOI followed by random bytes")
    add("garbage", "png-huge-chunk-length", "chunklen.png", m.png_huge_chunk_length(png),
        _broken(), "a PNG chunk announcing 4 GB")

    # --- header dimensions lying
    add("header-lie", "png-10000x10000-over-320x240", "lie.png", m.png_lie(png, 10000, 10000),
        _broken((*DAMAGED, *LIMIT)), "a 320x240 PNG whose IHDR says 10000x10000")
    add("header-lie", "jpeg-10000x10000-over-320x240", "lie.jpg", m.jpeg_lie(jpeg, 10000, 10000),
        _broken((*DAMAGED, *LIMIT)), "a 320x240 JPEG whose SOF says 10000x10000")
    add("header-lie", "gif-10000x10000-over-320x240", "lie.gif", m.gif_lie(gif, 10000, 10000),
        _broken((*DAMAGED, *LIMIT)), "a 320x240 GIF whose screen and frame say 10000x10000")
    add("header-lie", "webp-10000x10000-over-320x240", "lie.webp", m.webp_lie(webp, 10000, 10000),
        _broken((*DAMAGED, *LIMIT)), "a 320x240 WebP whose VP8 header says 10000x10000")
    add("header-lie", "gif-screen-only-10000", "screen.gif", m.gif_lie(gif, 10000, 10000, False),
        _either(10000, 10000), "a GIF whose logical screen is 10000x10000 over a 320x240 frame")
    add("header-lie", "jpeg-smaller-1x1-over-320x240", "small.jpg", m.jpeg_lie(jpeg, 1, 1),
        _either(1, 1), "a 320x240 JPEG whose SOF says 1x1")
    add("header-lie", "png-0x0", "zero.png", m.png_header_only(0, 0), _broken(),
        "a PNG whose IHDR says 0x0")
    add("header-lie", "gif-0x0", "zero.gif", m.gif_header_only(0, 0), _broken(),
        "a GIF of 0x0")
    add("header-lie", "jpeg-0x0", "zero.jpg", m.jpeg_sof_only(0, 0), _broken(),
        "a JPEG SOF of 0x0 and no scan")

    # --- decompression bombs (huge declared size)
    bomb = (*DAMAGED, *LIMIT)
    add("bomb", "png-1bit-12000x12000", "bomb.png", m.png_1bit_bomb(12000, 12000),
        _broken(LIMIT), "a valid 1-bit 12000x12000 PNG (144 MP in 18 kB)")
    add("bomb", "png-header-65535x65535", "bomb65k.png", m.png_header_only(65535, 65535),
        _broken(bomb), "an IHDR of 65535x65535 over a tiny IDAT")
    add("bomb", "png-header-2g-x-2g", "bomb2g.png", m.png_header_only(2**31 - 1, 2**31 - 1),
        _broken(bomb), "an IHDR of (2^31-1)^2")
    add("bomb", "jpeg-sof-65500x65500", "bomb.jpg", m.jpeg_lie(jpeg, 65500, 65500),
        _broken(bomb), "a JPEG SOF of 65500x65500")
    add("bomb", "gif-65535x65535", "bomb.gif", m.gif_header_only(65535, 65535), _broken(bomb),
        "a GIF of 65535x65535")
    add("bomb", "webp-canvas-16m", "bomb.webp", m.webp_canvas_bomb(webp, 1 << 24, 1 << 24),
        _broken(bomb), "a VP8X canvas of 2^24 x 2^24 over a small frame")
    add("bomb", "tiff-100000x100000", "bomb.tif", m.tiff_header_only(100000, 100000),
        _broken(bomb), "a TIFF IFD of 100000x100000")
    add("bomb", "bmp-100000x100000", "bomb.bmp", m.bmp_header_only(100000, 100000),
        _broken(bomb), "a BMP header of 100000x100000")
    add("bomb", "png-16bit-rgb-10240x10240", "deep.png",
        m.png_header_only(10240, 10240, depth=16, color=2), _broken(bomb),
        "a 16-bit RGB IHDR of 10240x10240 (105 MP, 630 MB decoded)")
    add("bomb", "png-16bit-rgba-10000x10000", "deep-rgba.png",
        m.png_header_only(10000, 10000, depth=16, color=6), _broken(bomb),
        "a 16-bit RGBA IHDR of exactly 100 MP over a tiny IDAT")
    add("bomb", "png-ztxt-24mib", "ztxt.png", m.ztxt_bomb(png), _either(320, 240),
        "a valid PNG carrying a zTXt chunk that inflates to 24 MiB")

    # --- zero bytes and near-empty files
    for ext in ("jpg", "png", "gif", "webp"):
        add("empty", f"zero-byte-{ext}", f"empty.{ext}", b"", _broken((*DAMAGED, "size")),
            f"a zero-byte .{ext}")
    add("empty", "png-signature-only", "sig.png", m.PNG_SIG, _broken(), "only the PNG signature")
    add("empty", "png-ihdr-only", "ihdr.png", m.PNG_SIG + m.png_chunk(b"IHDR", m.ihdr(320, 240)),
        _broken(), "signature and IHDR, no pixel data")
    add("empty", "jpeg-soi-eoi", "soi.jpg", b"\xff\xd8\xff\xd9", _broken(), "SOI + EOI")
    return v


def _images(cases: list[Case]) -> None:
    for var in _image_variants():
        desc = var.description
        _case(cases, "images", var.group, f"{var.name}@api", desc + " (through the API)",
              api_upload(var.filename, var.data, folder="/hostile/images"), var.expect)
        _case(cases, "images", var.group, f"{var.name}@raw",
              desc + " (a file named by a raw upload event)",
              RawUpload(var.filename, var.data, {"content_type": _mime(var.filename)}),
              var.expect)


# ------------------------------------------------------------------------------- videos


def _videos(cases: list[Case]) -> None:
    vids = m.videos()
    valid = (Processed("video", 160, 120),)
    broken = (Refused(VIDEO), ErrorResult(VIDEO), DeadLettered(("uploads", "task"), VIDEO))
    not_video = (*broken, Processed("other"))
    variants: list[tuple[str, str, str, bytes, tuple[Outcome, ...], str]] = [
        ("valid", "mp4", "clip.mp4", vids["mp4"], valid, "a valid 1 s MP4 (control)"),
        ("valid", "avi-mjpeg", "clip.avi", vids["avi"], valid, "a valid MJPEG AVI"),
        ("valid", "mkv-mjpeg", "clip.mkv", vids["mkv"], valid, "a valid MJPEG Matroska"),
        ("valid", "mpegts", "clip.ts", vids["ts"],
         (*valid, ErrorResult((*VIDEO, "ffmpeg", "crash", "signal", "mpeg-ts", "mpegts"))),
         "a valid MPEG-TS (the wheel's ffmpeg may crash on TS here: a clear error is fine)"),
        ("truncated", "mp4-50pct", "cut.mp4", m.cut(vids["mp4"], 0.5), broken,
         "an MP4 cut at 50 % (moov at the end: the header is lost)"),
        ("truncated", "mp4-faststart-50pct", "cutfs.mp4", m.cut(vids["mp4_faststart"], 0.5),
         broken, "a faststart MP4 cut at 50 % (header intact, data stops early)"),
        ("truncated", "avi-50pct", "cut.avi", m.cut(vids["avi"], 0.5), broken,
         "an AVI cut at 50 %"),
        ("truncated", "mpegts-50pct", "cut.ts", m.cut(vids["ts"], 0.5), broken,
         "an MPEG-TS cut at 50 %"),
        ("truncated", "mkv-50pct", "cut.mkv", m.cut(vids["mkv"], 0.5), broken,
         "a Matroska cut at 50 %"),
        ("truncated", "mp4-moov-size-lie", "moov.mp4", m.mp4_moov_size_lie(vids["mp4_faststart"]),
         (*valid, *broken), "an MP4 whose moov box claims 4 GB (readable anyway: either is fine)"),
        ("empty", "zero-frames-mp4", "zero.mp4", vids["zero_frames"], broken,
         "a valid MP4 container with no frames (zero length)"),
        ("empty", "zero-byte-mp4", "empty.mp4", b"", broken, "a zero-byte .mp4"),
        ("empty", "zero-byte-avi", "empty.avi", b"", broken, "a zero-byte .avi"),
        ("empty", "audio-only-mp4", "audio.mp4", vids["audio_only"], broken,
         "an MP4 with audio only"),
        ("not-video", "jpeg-named-mp4", "photo.mp4",
         m.encode(m.picture(64, 48, seed=20), "JPEG"),
         (*broken, Processed("image", 64, 48)), "a JPEG named .mp4"),
        ("not-video", "text-named-mp4", "notes.mp4", b"just some text, not a video\n" * 40,
         not_video, "a text file named .mp4"),
        ("not-video", "random-named-mov", "random.mov", _rb(50000, 21), not_video,
         "random bytes named .mov"),
        ("not-video", "ftyp-then-random", "ftyp.mp4",
         b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + _rb(40000, 22),
         broken, "an ftyp box followed by random bytes"),
        ("not-video", "riff-avi-then-random", "riff.avi",
         b"RIFF\x00\x00\x01\x00AVI LIST" + _rb(40000, 23), broken,
         "a RIFF/AVI header followed by random bytes"),
        ("not-video", "hls-playlist-named-mp4", "playlist.mp4",
         ("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://127.0.0.1:" + LPORT
          + "/seg.ts\n#EXTINF:1,\nfile://" + SECRET + "\n#EXT-X-ENDLIST\n").encode(),
         not_video, "an HLS playlist named .mp4 pointing at the loopback listener and the secret"),
        ("not-video", "ffconcat-named-mp4", "concat.mp4",
         ("ffconcat version 1.0\nfile '" + SECRET + "'\nfile 'http://127.0.0.1:" + LPORT
          + "/c.mp4'\n").encode(), not_video,
         "an ffconcat script named .mp4 naming the secret and the loopback listener"),
    ]
    for group, name, filename, data, expect, desc in variants:
        _case(cases, "videos", group, f"{name}@api", desc + " (through the API)",
              api_upload(filename, data, folder="/hostile/videos"), expect)
        _case(cases, "videos", group, f"{name}@raw",
              desc + " (a file named by a raw upload event)",
              RawUpload(filename, data, {"content_type": _mime(filename)}), expect)


# ------------------------------------------------------------------------------- events

_UPLOAD = {"asset_id": AID, "uri": OKJPEG, "filename": "ok.jpg", "folder": "/hostile/events",
           "content_type": "image/jpeg", "uploaded_at": 1764547200000}
_REQUEST = {"request_id": "rq-" + AID, "asset_id": AID, "task": "blurhash",
            "postprocess": "blurhash", "uri": OKJPEG, "filename": "ok.jpg",
            "folder": "/hostile/events", "content_type": "image/jpeg",
            "params_json": '{"x_components": 4, "y_components": 3}'}
_RESULT = {"request_id": "rq-" + AID, "asset_id": AID, "task": "blurhash",
           "postprocess": "blurhash", "status": "ok",
           "data_json": '{"blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj", "width": 300}'}
_DELIVERY = {"delivery_id": "dl-" + AID, "asset_id": AID, "version": 1,
             "event": "asset.completed", "url": "http://" + ALLOWED + "/ok/" + AID,
             "payload": b'{"asset_id": "' + AID.encode() + b'", "event": "asset.completed"}'}

_TOPICS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    # topic: (schema, base fields, dlq topic tag, the schema put there by mistake)
    "uploads": ("UploadEvent", _UPLOAD, "uploads", "TaskResult"),
    "tasks.validate-image": ("TaskRequest", {**_REQUEST, "task": "validate-image",
                                             "postprocess": "validate-image", "params_json": "{}",
                                             "width": 300, "height": 200, "format": "JPEG",
                                             "size_bytes": 5000},
                             "task:validate-image", "UploadEvent"),
    "tasks.blurhash": ("TaskRequest", _REQUEST, "task:blurhash", "UploadEvent"),
    "results.blurhash": ("TaskResult", _RESULT, "results", "TaskRequest"),
    "webhooks": ("WebhookDelivery", _DELIVERY, "webhooks", "UploadEvent"),
}

# a string field of each schema the union / UTF-8 / length mutations target
_MARKER = "HOSTILEMARKERxyz"
_UNION_FIELD = {"UploadEvent": "notification_url", "TaskRequest": "format",
                "TaskResult": "error"}
_STRING_FIELD = {"UploadEvent": "filename", "TaskRequest": "filename", "TaskResult": "postprocess",
                 "WebhookDelivery": "event"}

_KEY = AID.encode()


def _events_malformed(cases: list[Case]) -> None:
    for ti, (topic, (schema, base, dlq, wrong)) in enumerate(_TOPICS.items()):
        g = topic.split(".")[0]
        r = 100 * (ti + 1)  # each topic gets its own random bytes
        bases: dict[str, dict[str, Any]] = {"UploadEvent": _UPLOAD, "TaskRequest": _REQUEST,
                                            "TaskResult": _RESULT}
        other = bases[wrong]

        def add(name: str, desc: str, key: bytes | None, value: Record | Raw | None,
                words: tuple[str, ...], kind: str | None = None, *, topic: str = topic,
                g: str = g, dlq: str = dlq) -> None:
            _case(cases, "events", f"{g}-malformed", f"{topic}/{name}", f"{desc} on {topic}",
                  Message(topic, key, value), (DeadLettered((dlq,), words, kind),))

        sfield = _STRING_FIELD[schema]
        add("tombstone", "a tombstone (value null)", _KEY, None, TOMBSTONE, "null")
        add("tombstone-no-key", "a tombstone without a key", None, None, TOMBSTONE, "null")
        add("empty-key-garbage", "an empty key and garbage", b"", Raw(_rb(40, r + 31)),
            MALFORMED)
        add("no-key-garbage-body", "no key, a valid header and a garbage body", None,
            Record(schema, base, Mutation("garbage", (64, _gs(r + 32)))), CORRUPT)
        add("empty-value", "an empty value", _KEY, Raw(b""), MALFORMED)
        add("random-bytes", "64 random bytes", _KEY, Raw(_rb(64, r + 33)), MALFORMED)
        add("json", "a JSON document", _KEY,
            Raw(b'{"json": "is not our contract", "topic": "' + topic.encode() + b'"}'), MALFORMED)
        add("truncated-body", "a valid header and half of a valid body", _KEY,
            Record(schema, base, Mutation("truncate", 0.5)), CORRUPT)
        add("header-only", "a valid header and no body", _KEY,
            Record(schema, base, Mutation("header_only")), CORRUPT)
        add("garbage-body", "a valid header and a garbage body", _KEY,
            Record(schema, base, Mutation("garbage", (300, _gs(r + 34)))), CORRUPT)
        add("trailing-bytes", "a valid value followed by junk", _KEY,
            Record(schema, base, Mutation("trailing", b"\x00junk after the record")), TRAILING)
        add("wrong-schema", f"a {wrong} where a {schema} belongs", _KEY,
            Record(wrong, other), (*MALFORMED, wrong.lower()))
        add("wrong-header", f"a {schema} body under a {wrong} header", _KEY,
            Record(schema, base, header_of=wrong), (*MALFORMED, wrong.lower()))
        add("2mb-malformed", "a 2 MB malformed value", _KEY,
            Record(schema, base, Mutation("garbage", (2_000_000, _gs(r + 35)))),
            (*CORRUPT, *MALFORMED, "too large", "size"), "omitted")
        add("invalid-utf8", f"invalid UTF-8 in {sfield}", _KEY,
            Record(schema, {**base, sfield: _MARKER}, Mutation("bad_utf8", _MARKER)), UTF8)
        add("huge-string-length", f"{sfield} declares 2^60 bytes", _KEY,
            Record(schema, {**base, sfield: _MARKER}, Mutation("huge_length", _MARKER)), CORRUPT)
        add("negative-string-length", f"{sfield} declares -5 bytes", _KEY,
            Record(schema, {**base, sfield: _MARKER}, Mutation("negative_length", _MARKER)),
            CORRUPT)
        if schema in _UNION_FIELD:
            ufield = _UNION_FIELD[schema]
            add("union-index-out-of-range", f"union branch 7 in {ufield}", _KEY,
                Record(schema, {**base, ufield: _MARKER}, Mutation("union_index", (_MARKER, 7))),
                UNION)


def _ev(cases: list[Case], topic: str, group: str, name: str, desc: str,
        fields: Mapping[str, Any], expect: tuple[Outcome, ...],
        prepare: Literal["", "asset", "delivery"] = "") -> None:
    schema, base, _dlq, _ = _TOPICS[topic]
    _case(cases, "events", group, f"{topic}/{name}", desc,
          Message(topic, _KEY, Record(schema, {**base, **fields}), prepare), expect)


def _dl(topic: str, *words: str, kind: str | None = None) -> tuple[Outcome, ...]:
    return (DeadLettered((topic,), words, kind),)


_BAD_ASSET_IDS = {"empty": "", "10kb": "a" * 10240, "slash": "a/b/c",
                  "dotdot": "../../etc/passwd", "nul": "a\x00b", "space": " leading-space",
                  "unicode": "ümlaut-ä", "dot": ".", "dash-first": "-dash-first"}
_ID_WORDS = ("asset_id", "asset id")
_URI_WORDS = ("uri", "control", "null byte", "nul", "long", "limit", "characters")


def _events_uploads(cases: list[Case]) -> None:
    up = "uploads"

    def add(name: str, desc: str, fields: Mapping[str, Any], expect: tuple[Outcome, ...],
            group: str = "uploads-fields") -> None:
        _ev(cases, up, group, name, desc, fields, expect)

    for name, value in _BAD_ASSET_IDS.items():
        add(f"asset-id-{name}", f"asset_id {value[:24]!r}", {"asset_id": value},
            _dl("uploads", *_ID_WORDS))
    uri_dl = (DeadLettered(("uploads", "task"), _URI_WORDS),)
    outside = (DeadLettered(("uploads", "task"), OUTSIDE),)
    add("uri-nul", "a uri with a NUL", {"uri": "file://" + INBOX + "/fixtures/ok\x00.jpg"}, uri_dl)
    add("uri-pct00", "a uri with %00", {"uri": "file://" + INBOX + "/fixtures/ok%00.jpg"}, uri_dl)
    add("uri-6000-chars", "a 6000-character uri path",
        {"uri": "file://" + INBOX + "/" + "a" * 6000 + ".jpg"}, uri_dl)
    add("uri-etc-passwd", "file:///etc/passwd", {"uri": "file:///etc/passwd",
                                                 "filename": "passwd"}, outside)
    add("uri-relative-dotdot", "file://../", {"uri": "file://../"},
        (DeadLettered(("uploads", "task"), (*OUTSIDE, "uri", "host")),))
    add("uri-canary-secret", "the canary secret by absolute path", {"uri": "file://" + SECRET},
        outside)
    add("uri-traversal-to-secret", "inbox/../ to the canary secret",
        {"uri": "file://" + INBOX + "/../secret/canary.txt"}, outside)
    add("uri-file-localhost", "file://localhost/etc/passwd", {"uri": "file://localhost/etc/passwd"},
        outside)
    add("uri-file-remote-host", "file://remote.example/x.jpg",
        {"uri": "file://remote.example/x.jpg"},
        (DeadLettered(("uploads", "task"), ("host", "remote", "uri", "not allowed")),))
    add("uri-s3-unknown-bucket", "s3 to an unknown bucket",
        {"uri": "s3://no-such-bucket-hostile/x.jpg"},
        (DeadLettered(("uploads", "task"), ("s3", "bucket", "uri", "not configured")),))
    add("uri-http-loopback", "an http:// uri to the loopback listener",
        {"uri": "http://127.0.0.1:" + LPORT + "/x.jpg"},
        (DeadLettered(("uploads", "task"), ("scheme", "uri", "unsupported", "file://")),))
    add("uri-empty", "an empty uri", {"uri": ""},
        (DeadLettered(("uploads", "task"), ("uri", "empty", "scheme")),))
    add("uri-proc-environ", "file:///proc/self/environ", {"uri": "file:///proc/self/environ"},
        outside)
    add("uri-dev-zero", "file:///dev/zero (an endless read)", {"uri": "file:///dev/zero"}, outside)
    for name, target in (("secret", SECRET), ("etc-passwd", "/etc/passwd")):
        _case(cases, "events", "uploads-fields", f"uploads/symlink-to-{name}",
              f"a symlink inside the inbox pointing at {name}",
              RawUpload("link.jpg", None, {"content_type": "image/jpeg"}, symlink_to=target),
              outside)
    for value in ("banana", "SYNC", ""):
        add(f"mode-{value or 'empty'}", f"mode {value!r}", {"mode": value}, _dl("uploads", "mode"))
    for name, dur in (("nan", float("nan")), ("inf", float("inf")), ("minus-inf", float("-inf")),
                      ("minus-1", -1.0)):
        add(f"duration-{name}", f"duration {dur}", {"duration": dur}, _dl("uploads", "duration"))
    add("size-1x1-over-300x200", "width/height 1x1 declared on a 300x200 JPEG",
        {"width": 1, "height": 1, "format": "JPEG", "size_bytes": 10},
        (*_dl("uploads", "width", "height"), Processed("image", 300, 200)))
    add("size-2g", "width/height 2^31-1", {"width": 2**31 - 1, "height": 2**31 - 1,
                                           "format": "JPEG"}, _dl("uploads", "width", "height"))
    add("size-zero", "width/height 0", {"width": 0, "height": 0, "format": "JPEG"},
        _dl("uploads", "width", "height"))
    add("size-negative", "width/height -5", {"width": -5, "height": -5, "format": "JPEG"},
        _dl("uploads", "width", "height"))
    add("bitrate-negative", "bitrate -1", {"bitrate": -1}, _dl("uploads", "bitrate"))
    add("size-bytes-huge", "size_bytes 2^63-1 on a small file", {"size_bytes": 2**63 - 1},
        (*_dl("uploads", "size"), Processed("image", 300, 200)))
    add("filename-10kb", "a 10 kB filename", {"filename": "f" * 10240 + ".jpg"},
        _dl("uploads", "filename"))
    add("filename-nul", "a filename with NUL", {"filename": "ok\x00.jpg"},
        _dl("uploads", "filename", "control"))
    add("filename-traversal", "filename ../../../etc/passwd",
        {"filename": "../../../etc/passwd"},
        (*_dl("uploads", "filename"), Processed("image", 300, 200)))
    add("folder-964", "a 964-character folder", {"folder": "/" + "/".join(["f" * 95] * 10)
                                                 + "/abc"}, _dl("uploads", "folder"))
    add("folder-300-segment", "a 300-character folder segment", {"folder": "/" + "s" * 300},
        _dl("uploads", "folder", "segment"))
    add("folder-dotdot", "folder /a/../../b", {"folder": "/a/../../b"}, _dl("uploads", "folder"))
    add("folder-backslash", "folder \\windows\\system32", {"folder": "\\windows\\system32"},
        _dl("uploads", "folder"))
    add("folder-control", "folder with BEL", {"folder": "/a\x07b"}, _dl("uploads", "folder"))
    add("folder-40-levels", "a folder 40 levels deep", {"folder": "/d" * 40},
        _dl("uploads", "folder", "levels"))
    add("content-type-nul", "content_type with NUL", {"content_type": "image/jpeg\x00"},
        _dl("uploads", "content_type", "content type"))
    add("content-type-10kb", "a 10 kB content_type", {"content_type": "image/" + "x" * 10240},
        _dl("uploads", "content_type", "content type"))
    for name, value in (("space-slash", PREFIX + ".replies.bad topic/x"),
                        ("empty-instance", PREFIX + ".replies."),
                        ("dotdot", "../x"), ("300-chars", PREFIX + ".replies." + "r" * 300),
                        ("nul", PREFIX + ".replies.a\x00b"),
                        ("not-a-replies-topic", PREFIX + ".uploads")):
        add(f"reply-to-{name}", f"reply_to {value[:40]!r}", {"reply_to": value, "mode": "sync"},
            _dl("uploads", "reply_to", "topic"))
    url_words = ("notification_url", "url")
    for name, value in (("not-a-url", "not a url"), ("javascript", "javascript:alert(1)"),
                        ("pct-encoded-host", "http://%31%32%37.0.0.1:" + LPORT + "/hook"),
                        ("file", "file:///etc/passwd"), ("space-in-host", "http://exa mple.com/"),
                        ("3000-chars", "https://example.com/" + "p" * 3000)):
        add(f"notification-url-{name}", f"notification_url {value[:40]!r}",
            {"notification_url": value},
            (*_dl("uploads", *url_words), NotDelivered(("refused",))))
    add("tags-9900", "9,900 tags", {"tags": [f"t{i}" for i in range(9900)]},
        _dl("uploads", "tags", "tag"))
    add("tag-10kb", "a 10 kB tag", {"tags": ["x" * 10240]}, _dl("uploads", "tag"))
    add("tag-nul", "a tag with NUL", {"tags": ["a\x00b"]}, _dl("uploads", "tag"))
    add("context-10000-entries", "a huge context (10,000 entries, ~1 MB)",
        {"context": {f"k{i:05d}": "v" * 90 for i in range(10000)}},
        _dl("uploads", "context", kind="omitted"))
    add("context-100kb-value", "a 100 kB context value", {"context": {"k": "v" * 102400}},
        _dl("uploads", "context"))
    add("context-nul-key", "a context key with NUL", {"context": {"a\x00b": "v"}},
        _dl("uploads", "context"))
    add("postprocess-1000", "1000 postprocess names",
        {"postprocess": [f"p{i}" for i in range(1000)]}, _dl("uploads", "postprocess"))
    add("postprocess-10kb-name", "a 10 kB postprocess name", {"postprocess": ["p" * 10240]},
        _dl("uploads", "postprocess"))
    add("on-success-70kb", "a 70 kB on_success script",
        {"on_success": "// " + "x" * 70 * 1024 + "\n"}, _dl("uploads", "on_success", "script"))
    add("replay-tasks-10000", "replay with 10,000 replay_tasks",
        {"replay": True, "replay_tasks": [f"r{i}" for i in range(10000)]},
        _dl("uploads", "replay_tasks", "replay"))


def _events_tasks(cases: list[Case]) -> None:
    for topic, task in (("tasks.blurhash", "blurhash"), ("tasks.validate-image",
                                                          "validate-image")):
        dlq = f"task:{task}"
        full = task == "blurhash"

        def add(name: str, desc: str, fields: Mapping[str, Any], expect: tuple[Outcome, ...],
                topic: str = topic) -> None:
            _ev(cases, topic, "tasks-fields", name, f"{desc} ({topic})", fields, expect)

        ids = _BAD_ASSET_IDS if full else {"empty": "", "nul": "a\x00b"}
        for name, value in ids.items():
            if name in ("space", "unicode", "dot", "dash-first", "dotdot"):
                continue
            add(f"asset-id-{name}", f"asset_id {value[:24]!r}", {"asset_id": value},
                _dl(dlq, *_ID_WORDS))
        add("uri-etc-passwd", "uri file:///etc/passwd", {"uri": "file:///etc/passwd"},
            _dl(dlq, *OUTSIDE))
        add("uri-canary-secret", "uri naming the canary secret", {"uri": "file://" + SECRET},
            _dl(dlq, *OUTSIDE))
        add("width-2g", "width/height 2^31-1", {"width": 2**31 - 1, "height": 2**31 - 1},
            _dl(dlq, "width", "height"))
        add("params-not-json", "params_json 'not json'", {"params_json": "not json"},
            _dl(dlq, "params", "json"))
        add("bundle-not-json", "bundle_json 'not json'", {"bundle_json": "not json"},
            _dl(dlq, "bundle_json"))
        add("bundle-unknown-task", "a bundle carrying a task no worker knows",
            {"bundle_json": json.dumps([{"request_id": "hb1", "task": "no-such-task",
                                         "postprocess": "x", "params_json": "{}"}])},
            _dl(dlq, "does not know"))
        add("bundle-own-uri", "a bundle member with a uri of its own",
            {"bundle_json": json.dumps([{"request_id": "hb2", "task": "ocr", "postprocess": "o",
                                         "params_json": "{}", "uri": "file:///etc/passwd"}])},
            _dl(dlq, "bundle_json", "exactly"))
        if not full:
            continue
        add("uri-nul", "uri with NUL", {"uri": "file://" + INBOX + "/fixtures/ok\x00.jpg"},
            _dl(dlq, *_URI_WORDS))
        add("uri-pct00", "uri with %00", {"uri": "file://" + INBOX + "/fixtures/ok%00.jpg"},
            _dl(dlq, *_URI_WORDS))
        add("uri-6000-chars", "a 6000-character uri", {"uri": "file://" + INBOX + "/" + "a" * 6000},
            _dl(dlq, *_URI_WORDS))
        add("uri-relative-dotdot", "uri file://../", {"uri": "file://../"},
            _dl(dlq, *OUTSIDE, "uri", "host"))
        add("uri-s3-unknown-bucket", "s3 to an unknown bucket",
            {"uri": "s3://no-such-bucket-hostile/x.jpg"}, _dl(dlq, "s3", "bucket", "uri"))
        add("uri-http-loopback", "an http:// uri to the loopback listener",
            {"uri": "http://127.0.0.1:" + LPORT + "/x.jpg"}, _dl(dlq, "scheme", "uri"))
        add("mode-banana", "mode 'banana'", {"mode": "banana"}, _dl(dlq, "mode"))
        add("duration-nan", "duration NaN", {"duration": float("nan")}, _dl(dlq, "duration"))
        add("size-1x1-over-300x200", "width/height 1x1 on a 300x200 JPEG",
            {"width": 1, "height": 1}, (*_dl(dlq, "width", "height"), ResultOk(300, 200)))
        add("params-array", "params_json '[]'", {"params_json": "[]"},
            (*_dl(dlq, "params"), ResultOk()))
        add("params-1e308", "x_components 1e308", {"params_json": '{"x_components": 1e308}'},
            _dl(dlq, "x_components", "params"))
        add("params-negative", "x_components -1", {"params_json": '{"x_components": -1}'},
            _dl(dlq, "x_components", "params"))
        add("params-deep-nesting", "params_json nested 100,000 deep",
            {"params_json": "[" * 100000 + "]" * 100000}, _dl(dlq, "params", "json", "deep"))
        add("params-900kb", "a 900 kB params_json",
            {"params_json": json.dumps({"x_components": 4, "pad": "p" * 900_000})},
            _dl(dlq, "params", "too large", "size"))
        add("request-id-empty", "an empty request_id", {"request_id": ""},
            _dl(dlq, "request_id", "request id"))
        add("request-id-10kb", "a 10 kB request_id", {"request_id": "r" * 10240},
            _dl(dlq, "request_id", "request id"))
        add("postprocess-unknown", "an unknown postprocess name", {"postprocess": "no-such-pp"},
            (*_dl(dlq, "postprocess"), ResultOk()))
        add("postprocess-empty", "an empty postprocess", {"postprocess": ""},
            _dl(dlq, "postprocess"))
        add("task-mismatch", "task validate-image on the blurhash topic",
            {"task": "validate-image"}, (*_dl(dlq, "task"), ResultOk()))
        add("attempt-negative", "attempt -1", {"attempt": -1}, (*_dl(dlq, "attempt"), ResultOk()))


def _events_results(cases: list[Case]) -> None:
    """Results for a real asset (uploaded first, its blurhash request id reused), so the hostile
    field is the only thing wrong with them; one result for an asset nobody uploaded."""

    def add(name: str, desc: str, fields: Mapping[str, Any], *words: str) -> None:
        prepared = name != "unknown-asset"
        _ev(cases, "results.blurhash", "results-fields", name, desc + " (results.blurhash)",
            {"request_id": REQID, **fields} if prepared else fields, _dl("results", *words),
            prepare="asset" if prepared else "")

    for name in ("empty", "10kb", "slash", "nul"):
        add(f"asset-id-{name}", f"asset_id {_BAD_ASSET_IDS[name][:24]!r}",
            {"asset_id": _BAD_ASSET_IDS[name]}, *_ID_WORDS)
    add("unknown-asset", "a result for an asset nobody uploaded", {}, "asset", "unknown",
        "no such")
    add("status-banana", "status 'banana'", {"status": "banana"}, "status")
    add("data-json-invalid", "data_json not JSON", {"data_json": "{not json"}, "data_json", "json")
    add("data-json-array", "data_json a JSON array", {"data_json": "[1, 2]"}, "data_json",
        "object")
    add("verdicts-invalid", "verdicts_json not JSON", {"verdicts_json": "]]"}, "verdicts")
    add("duration-nan", "duration_ms NaN", {"duration_ms": float("nan")}, "duration")
    add("request-id-empty", "an empty request_id", {"request_id": ""}, "request_id", "request id")


def _events_webhooks(cases: list[Case]) -> None:
    """Deliveries the outbox knows (an asset with a webhook to a failing receiver is uploaded
    first and its delivery id reused), so the hostile field is the only thing wrong; one
    delivery nobody queued."""

    def add(name: str, desc: str, fields: Mapping[str, Any], *words: str,
            expect: tuple[Outcome, ...] | None = None) -> None:
        _ev(cases, "webhooks", "webhooks-fields", name, desc + " (webhooks)",
            {"delivery_id": DELIVERY, **fields}, expect or _dl("webhooks", *words),
            prepare="delivery")

    _ev(cases, "webhooks", "webhooks-fields", "unknown-delivery-to-loopback",
        "a delivery nobody queued, to the loopback listener (webhooks)",
        {"url": "http://127.0.0.1:" + LPORT + "/hook/" + AID},
        _dl("webhooks", "unknown", "delivery", "outbox", "not queued"))
    add("url-loopback-listener", "a queued delivery re-addressed to the loopback listener",
        {"url": "http://127.0.0.1:" + LPORT + "/hook/" + AID},
        expect=(*_dl("webhooks", "url", "refused", "loopback"), NotDelivered(("refused",))))
    add("due-at-far-future", "due_at in the year 146,000,000", {"due_at": 2**62},
        "due_at", "due")
    add("attempt-negative", "attempt -5 to a failing receiver",
        {"attempt": -5, "url": "http://" + ALLOWED + "/fail/" + AID}, "attempt")
    add("attempt-zero", "attempt 0 to a failing receiver",
        {"attempt": 0, "url": "http://" + ALLOWED + "/fail/" + AID}, "attempt")
    add("url-empty", "an empty url", {"url": ""}, "url")
    add("url-10kb", "a 10 kB url", {"url": "http://" + ALLOWED + "/" + "u" * 10240}, "url")
    add("event-banana", "event 'banana'", {"event": "banana"}, "event")
    add("version-negative", "version -1", {"version": -1}, "version")
    add("asset-id-empty", "an empty asset_id", {"asset_id": ""}, *_ID_WORDS)
    add("payload-2mb", "a 2 MB payload", {"payload": b"{" + b" " * 2_000_000 + b"}"},
        expect=_dl("webhooks", "payload", "too large", "size", kind="omitted"))


def _events(cases: list[Case]) -> None:
    _events_malformed(cases)
    _events_uploads(cases)
    _events_tasks(cases)
    _events_results(cases)
    _events_webhooks(cases)


# ---------------------------------------------------------------------------------- api


def _multipart(parts: Iterable[Part], boundary: bytes) -> bytes:
    out = b""
    for p in parts:
        disp = b'form-data; name="' + p.name + b'"'
        if p.filename is not None:
            disp += b'; filename="' + p.filename + b'"'
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disp + b"\r\n"
        if p.content_type is not None:
            out += b"Content-Type: " + p.content_type + b"\r\n"
        out += b"\r\n" + p.data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


BOUNDARY = b"hostileBoundary7MA4YWxkTrZu0gW"


def _api(cases: list[Case]) -> None:
    small = m.encode(m.picture(64, 48, seed=40), "JPEG")
    four = (HttpAnswer(400, 499),)
    ok = (HttpAnswer(200, 299),)

    def add(group: str, name: str, desc: str, req: Http, expect: tuple[Outcome, ...] = four,
            ) -> None:
        _case(cases, "api", group, name, desc, req, expect)

    def up(**form: str | bytes) -> Http:
        return api_upload("x.jpg", small, b"image/jpeg", **form)

    mp_ctype = ("Content-Type", b"multipart/form-data; boundary=" + BOUNDARY)
    good_body = _multipart([Part(b"file", small, b"x.jpg", b"image/jpeg")], BOUNDARY)

    # --- keys
    add("auth", "no-key", "an upload without a key", Http(
        "POST", "/v1/assets", parts=(Part(b"file", small, b"x.jpg"),), auth=False),
        (HttpAnswer(401, 401),))
    add("auth", "invalid-key", "an upload with a wrong key", Http(
        "POST", "/v1/assets", headers=(("X-API-Key", b"nope"),),
        parts=(Part(b"file", small, b"x.jpg"),), auth=False), (HttpAnswer(401, 401),))
    add("auth", "empty-key", "an empty X-API-Key", Http(
        "GET", "/v1/assets", headers=(("X-API-Key", b""),), auth=False), (HttpAnswer(401, 401),))
    add("auth", "bearer-empty", "Authorization: Bearer with nothing after it", Http(
        "GET", "/v1/assets", headers=(("Authorization", b"Bearer "),), auth=False),
        (HttpAnswer(401, 401),))
    add("auth", "key-non-ascii", "a key of invalid UTF-8 bytes", Http(
        "GET", "/v1/assets", headers=(("X-API-Key", b"\xff\xfe\xfd"),), auth=False),
        (HttpAnswer(400, 401),))
    add("auth", "key-64kb", "a 64 kB key header", Http(
        "GET", "/v1/assets", headers=(("X-API-Key", b"k" * 65536),), auth=False), four)
    add("auth", "list-without-key", "GET /v1/assets without a key",
        Http("GET", "/v1/assets", auth=False), (HttpAnswer(401, 401),))
    add("auth", "chunked-unauthenticated-50mb",
        "an unauthenticated chunked upload streaming 50 MB: refused before the body ends",
        Http("POST", "/v1/assets", headers=(mp_ctype,), body=good_body[:-40], auth=False,
             chunked=True, stream_extra=50 << 20), (HttpAnswer(401, 401),))
    add("auth", "unauthenticated-content-length-1tb",
        "an unauthenticated upload announcing 1 TB", Http(
            "POST", "/v1/assets", headers=(mp_ctype,), body=good_body, auth=False,
            content_length=b"1000000000000"), (HttpAnswer(401, 413),))

    # --- body size and framing
    add("body", "oversize-content-length", "a 6 MB upload with its Content-Length",
        api_upload("big.jpg", small + _rb(6 << 20, 41), b"image/jpeg"),
        (HttpAnswer(413, 413),))
    add("body", "oversize-chunked", "a 6 MB upload sent chunked (no Content-Length)",
        Http("POST", "/v1/assets", headers=(mp_ctype,), body=_multipart(
            [Part(b"file", small + _rb(6 << 20, 42), b"big.jpg", b"image/jpeg")], BOUNDARY),
            chunked=True), (HttpAnswer(413, 413),))
    add("body", "content-length-1e30", "Content-Length: 10^30", Http(
        "POST", "/v1/assets", headers=(mp_ctype,), body=good_body,
        content_length=b"1" + b"0" * 30), (HttpAnswer(400, 413),))
    add("body", "content-length-negative", "Content-Length: -1", Http(
        "POST", "/v1/assets", headers=(mp_ctype,), body=good_body, content_length=b"-1"))
    add("body", "content-length-garbage", "Content-Length: abc", Http(
        "POST", "/v1/assets", headers=(mp_ctype,), body=good_body, content_length=b"abc"))
    add("body", "content-length-short", "Content-Length 100 over a longer multipart body", Http(
        "POST", "/v1/assets", headers=(mp_ctype,), body=good_body, content_length=b"100"))

    # --- multipart
    add("multipart", "wrong-boundary", "the body's boundary is not the header's", Http(
        "POST", "/v1/assets", headers=(("Content-Type", b"multipart/form-data; boundary=other"),),
        body=good_body))
    add("multipart", "no-boundary", "multipart/form-data without a boundary", Http(
        "POST", "/v1/assets", headers=(("Content-Type", b"multipart/form-data"),),
        body=good_body))
    add("multipart", "truncated", "a multipart body cut in the middle of the file", Http(
        "POST", "/v1/assets", headers=(mp_ctype,), body=good_body[: len(good_body) // 2]))
    add("multipart", "json-body", "a JSON body instead of multipart", Http(
        "POST", "/v1/assets", headers=(("Content-Type", b"application/json"),),
        body=b'{"file": "x"}'))
    add("multipart", "5000-parts", "5000 small form fields", Http(
        "POST", "/v1/assets", headers=(mp_ctype,), body=_multipart(
            [Part(b"file", small, b"x.jpg")] + [Part(b"tags", b"t")] * 5000, BOUNDARY)))
    add("multipart", "nameless-parts", "parts without a name (no file field)", Http(
        "POST", "/v1/assets", headers=(mp_ctype,),
        body=(b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data\r\n\r\nx\r\n--" + BOUNDARY
              + b"--\r\n")))
    add("multipart", "no-file-field", "a form without the file field",
        Http("POST", "/v1/assets", parts=(Part(b"folder", b"/a"),)))
    add("multipart", "filename-invalid-utf8", "a file name of invalid UTF-8 bytes",
        Http("POST", "/v1/assets", parts=(Part(b"file", small, b"\xff\xfe.jpg"),), upload=True),
        (HttpAnswer(200, 299), HttpAnswer(400, 499)))
    add("multipart", "two-files", "two file fields", Http(
        "POST", "/v1/assets", parts=(Part(b"file", small, b"a.jpg"), Part(b"file", small,
                                                                           b"b.jpg")),
        upload=True), (HttpAnswer(200, 299), HttpAnswer(400, 499)))

    # --- fields
    add("fields", "folder-invalid-utf8", "folder of invalid UTF-8 bytes", up(folder=b"/\xff\xfe"))
    add("fields", "tags-invalid-utf8", "tags of invalid UTF-8 bytes", up(tags=b"a,\xc3\x28"))
    add("fields", "context-lone-surrogate", "context JSON with a lone surrogate",
        up(context='{"a": "\\ud800"}'))
    add("fields", "context-deep-nesting", "context JSON nested 100,000 deep",
        up(context='{"a":' * 100000 + "1" + "}" * 100000))
    add("fields", "context-array", "context JSON that is an array", up(context="[1, 2]"))
    add("fields", "context-nested-object", "context JSON with a nested object",
        up(context='{"a": {"b": 1}}'))
    add("fields", "context-20kb", "a 20 kB context", up(context=json.dumps({"k": "v" * 20480})))
    add("fields", "context-10000-pairs", "10,000 key=value pairs",
        up(context="|".join(f"k{i}=v" for i in range(10000))))
    add("fields", "folder-964", "a 964-character folder",
        up(folder="/" + "/".join(["f" * 95] * 10) + "/abc"))
    add("fields", "folder-300-segment", "a 300-character folder segment",
        up(folder="/" + "s" * 300))
    add("fields", "folder-40-levels", "a folder 40 levels deep", up(folder="/d" * 40))
    add("fields", "folder-dotdot", "folder /a/../../etc", up(folder="/a/../../etc"))
    add("fields", "folder-nul", "folder with NUL", up(folder="/a\x00b"))
    add("fields", "tags-9900", "9,900 tags", up(tags=",".join(f"t{i}" for i in range(9900))))
    add("fields", "tag-10kb", "a 10 kB tag", up(tags="x" * 10240))
    for mode in ("banana", "SYNC", ""):
        add("fields", f"mode-{mode or 'empty'}", f"mode {mode!r}", up(mode=mode))
    for name, url in (("pct-encoded-host", "http://%31%32%37.0.0.1/hook"),
                      ("file", "file:///etc/passwd"), ("ipv6-loopback", "http://[::1]/hook"),
                      ("javascript", "javascript:alert(1)"),
                      ("3000-chars", "https://example.com/" + "p" * 3000)):
        add("fields", f"notification-url-{name}", f"notification_url {url[:40]!r}",
            up(notification_url=url))
    add("fields", "on-success-70kb", "a 70 kB on_success script",
        up(on_success="// " + "x" * 70 * 1024))
    add("fields", "postprocess-200", "200 postprocess names",
        up(postprocess=",".join(f"p{i}" for i in range(200))))
    add("fields", "postprocess-10kb-name", "a 10 kB postprocess name", up(postprocess="p" * 10240))

    # --- valid but odd: 2xx and the asset completes
    add("odd", "folder-extra-slashes", "folder //a///b/./c/", up(folder="//a///b/./c/"), ok)
    add("odd", "folder-unicode", "a Unicode folder", up(folder="/ünï/日本/🙂"), ok)
    add("odd", "filename-traversal", "file name ../../etc/passwd",
        api_upload("../../etc/passwd", small), ok)
    add("odd", "filename-1000-chars", "a 1000-character file name",
        api_upload("n" * 996 + ".jpg", small), ok)
    add("odd", "filename-nul", "a file name with NUL", api_upload("a\x00b.jpg", small), ok)
    add("odd", "part-type-html", "a JPEG sent as text/html", api_upload("x.jpg", small,
                                                                        b"text/html"), ok)
    add("odd", "postprocess-unknown", "an unknown postprocess name (refused, known ones listed)",
        up(postprocess="no-such"), (HttpAnswer(400, 400, ("unknown post-process", "known")),))
    add("odd", "empty-optional-fields", "folder, tags and context empty",
        up(folder="", tags="", context=""), ok)
    add("odd", "context-pipes-with-equals", "context a=b=c|d=", up(context="a=b=c|d="), ok)

    # --- query parameters on list endpoints
    q = "query"
    add(q, "limit-1e30", "limit=10^30", Http("GET", "/v1/assets?limit=1" + "0" * 30))
    add(q, "limit-negative", "limit=-1", Http("GET", "/v1/assets?limit=-1"))
    add(q, "limit-garbage", "limit=abc", Http("GET", "/v1/assets?limit=abc"))
    add(q, "limit-zero", "limit=0", Http("GET", "/v1/assets?limit=0"))
    add(q, "cursor-10kb", "a 10 kB cursor", Http("GET", "/v1/assets?cursor=" + "c" * 10240),
        (HttpAnswer(200, 299), HttpAnswer(400, 499)))
    add(q, "folder-dotdot", "folder=../..", Http("GET", "/v1/assets?folder=../.."))
    add(q, "folder-nul", "folder=%00", Http("GET", "/v1/assets?folder=%00"))
    add(q, "status-banana", "status=banana", Http("GET", "/v1/assets?status=banana"), ok)
    add(q, "cluster-id-huge", "a face cluster id of 10^26",
        Http("GET", "/v1/faces/clusters/1" + "0" * 26))
    add(q, "clusters-limit-huge", "face clusters limit=10^30",
        Http("GET", "/v1/faces/clusters?limit=1" + "0" * 30))
    add(q, "similar-k-huge", "similar k=10^30 on an unknown asset",
        Http("GET", "/v1/assets/nosuchasset/similar?k=1" + "0" * 30))
    add(q, "similar-post-k-negative", "POST /v1/similar?k=-1 without a file",
        Http("POST", "/v1/similar?k=-1", parts=(Part(b"x", b"y"),)))

    # --- unknown asset ids with odd characters
    for name, target in (("nul", "/v1/assets/%00"),
                         ("traversal", "/v1/assets/..%2F..%2Fetc%2Fpasswd"),
                         ("10kb", "/v1/assets/" + "i" * 10240),
                         ("invalid-utf8", "/v1/assets/%ff%fe"),
                         ("rtl-override", "/v1/assets/%E2%80%AEabc"),
                         ("sql", "/v1/assets/'%20OR%201=1--"),
                         ("unicode", "/v1/assets/%F0%9F%99%82")):
        add("ids", f"asset-{name}", f"GET {target[:40]}", Http("GET", target))
    add("ids", "delete-assets", "DELETE /v1/assets", Http("DELETE", "/v1/assets"))
    add("ids", "trace-root", "TRACE /", Http("TRACE", "/"))


# ---------------------------------------------------------------------------- on_success

_SCRIPTS: list[tuple[str, str, str, tuple[str, ...]]] = [
    # group, name, script, acceptable error kinds
    ("loop", "while-true", "while (true) {}", ("timeout",)),
    ("loop", "for-ever", "for (;;) { Math.random(); }", ("timeout",)),
    ("loop", "promise-chain", "function loop() { return Promise.resolve().then(loop) }; loop()",
     ("timeout",)),
    ("loop", "regex-backtracking", "/(a+)+$/.test('a'.repeat(40) + 'b')", ("timeout",)),
    ("loop", "getter-loops-in-update",
     "current_asset.update({get tags() { while (true) {} }})", ("timeout",)),
    ("loop", "promise-never-settles", "new Promise(() => {})",  # never finishes: a hang
     ("timeout", "exception")),
    ("memory", "string-1e9", "let s = 'x'.repeat(1e9)", ("memory", "exception")),
    ("memory", "arraybuffer-2g", "let b = new ArrayBuffer(2 ** 31)", ("memory", "exception")),
    ("memory", "array-growth", "let a = []; while (true) a.push(new Array(1e6).fill(1))",
     ("memory", "timeout")),
    ("memory", "object-keys", "let o = {}; for (let i = 0; ; i++) o['k' + i] = i",
     ("memory", "timeout")),
    ("memory", "deep-recursion", "function f(n) { return f(n + 1) + 1 } f(0)",
     ("exception", "memory")),
    ("host", "require-fs", "require('fs').readFileSync('" + SECRET + "', 'utf8')", ("exception",)),
    ("host", "std-loadfile", "current_asset.update({tags: [std.loadFile('" + SECRET + "')]})",
     ("exception",)),
    ("host", "os-exec", "os.exec(['cat', '" + SECRET + "'])", ("exception",)),
    ("host", "dynamic-import", "import('file://" + SECRET + "').then(m => current_asset.update("
     "{tags: [String(m)]}))", ("exception", "syntax")),
    ("host", "fetch-loopback", "fetch('http://127.0.0.1:" + LPORT + "/js')", ("exception",)),
    ("host", "process-env", "current_asset.update({tags: [process.env.HOME]})", ("exception",)),
    ("huge", "tags-100000", "current_asset.update({tags: Array.from({length: 100000}, "
     "(_, i) => 't' + i)})", ("invalid_update", "memory", "exception", "timeout")),
    ("huge", "tag-1mb", "current_asset.update({tags: ['x'.repeat(1 << 20)]})",
     ("invalid_update", "memory", "timeout")),
    ("huge", "context-10000-keys", "let c = {}; for (let i = 0; i < 10000; i++) c['k' + i] = "
     "'v'.repeat(100); current_asset.update({context: c})",
     ("invalid_update", "memory", "timeout")),
    ("huge", "metadata-10mb", "current_asset.update({metadata: {blob: 'm'.repeat(10 << 20)}})",
     ("invalid_update", "memory", "timeout")),
    ("huge", "metadata-deep", "let o = {}; let p = o; for (let i = 0; i < 5000; i++) "
     "{ p.c = {}; p = p.c } current_asset.update({metadata: o})",
     ("invalid_update", "exception", "memory", "timeout")),
    ("syntax", "unclosed", "current_asset.update({", ("syntax",)),
    ("syntax", "braces", "}}}}", ("syntax",)),
    ("syntax", "php", "<?php system('cat " + SECRET + "'); ?>", ("syntax",)),
    ("syntax", "nul-byte", "current_asset.update({tags: ['a']})\x00garbage(", ("syntax",)),
    ("throw", "error", "throw new Error('boom')", ("exception",)),
    ("throw", "number", "throw 42", ("exception",)),
    ("throw", "null", "throw null", ("exception", "memory")),
    ("throw", "tostring-loops", "throw {toString() { while (true) {} }}",
     ("exception", "timeout")),
    ("throw", "proxy", "throw new Proxy({}, {get() { throw new Error('trap') }})",
     ("exception",)),
    ("nonobject", "update-number", "current_asset.update(42)", ("invalid_update",)),
    ("nonobject", "update-string", "current_asset.update('tags')", ("invalid_update",)),
    ("nonobject", "update-null", "current_asset.update(null)", ("invalid_update",)),
    ("nonobject", "update-array", "current_asset.update([1, 2, 3])", ("invalid_update",)),
    ("nonobject", "tags-not-list", "current_asset.update({tags: 'notalist'})",
     ("invalid_update",)),
    ("nonobject", "context-number", "current_asset.update({context: 5})", ("invalid_update",)),
    ("nonobject", "metadata-bigint", "current_asset.update({metadata: {n: 10n}})",
     ("invalid_update", "exception")),
    ("nonobject", "metadata-cycle", "let o = {}; o.o = o; current_asset.update({metadata: o})",
     ("invalid_update", "exception")),
]


def _on_success(cases: list[Case]) -> None:
    png = m.encode(m.picture(120, 90, seed=50), "PNG")
    for group, name, script, kinds in _SCRIPTS:
        _case(cases, "on_success", group, f"{name}@raw", f"on_success script: {script[:60]}",
              RawUpload("pic.png", png, {"content_type": "image/png", "on_success": script}),
              (ScriptFailed(kinds),))
    for group, name, script, kinds in _SCRIPTS[::6]:
        _case(cases, "on_success", group, f"{name}@api",
              f"on_success script through the API: {script[:60]}",
              api_upload("pic.png", png, b"image/png", folder="/hostile/on-success",
                         on_success=script), (ScriptFailed(kinds), HttpAnswer(400, 499)))


# ------------------------------------------------------------------------------ webhooks

_HOOK = "/hook/" + AID


def _webhooks(cases: list[Case]) -> None:
    png = m.encode(m.picture(120, 90, seed=60), "PNG")
    refused = (NotDelivered(("refused",)),
               DeadLettered(("uploads",), ("notification_url", "url")))
    port = ":" + LPORT
    loopback = [
        ("127.0.0.1", "127.0.0.1"), ("127.1", "127.1"), ("127.0.1", "127.0.1"),
        ("decimal", "2130706433"), ("hex", "0x7f000001"), ("hex-dotted", "0x7f.0.0.1"),
        ("octal", "0177.0.0.1"), ("octal-long", "017700000001"),
        ("zero-padded", "127.000.000.001"), ("ipv6", "[::1]"),
        ("ipv4-mapped", "[::ffff:127.0.0.1]"), ("ipv4-mapped-hex", "[::ffff:7f00:1]"),
        ("ipv6-long", "[0:0:0:0:0:0:0:1]"), ("unspecified", "0.0.0.0"), ("zero", "0"),
        ("ipv6-unspecified", "[::]"), ("localhost", "localhost"), ("localhost-upper",
                                                                    "LOCALHOST"),
        ("localhost-dot", "localhost."), ("127.0.0.1-dot", "127.0.0.1."),
        ("loopback-top", "127.255.255.254"),
    ]
    for name, host in loopback:
        _case(cases, "webhooks", "loopback", name, f"notification_url to {host}",
              RawUpload("pic.png", png, {"content_type": "image/png",
                                         "notification_url": "http://" + host + port + _HOOK}),
              refused)
    for name, url in (("https", "https://127.0.0.1" + port + _HOOK),
                      ("credentials", "http://user:pw@127.0.0.1" + port + _HOOK),
                      ("at-confusion", "http://example.com@127.0.0.1" + port + _HOOK)):
        _case(cases, "webhooks", "loopback", name, f"notification_url {url[:40]}",
              RawUpload("pic.png", png, {"content_type": "image/png",
                                         "notification_url": url}), refused)
    private = [("10.0.0.1", "10.0.0.1"), ("192.168.1.1", "192.168.1.1"),
               ("172.16.0.1", "172.16.0.1"), ("metadata", "169.254.169.254"),
               ("link-local-v6", "[fe80::1]"), ("cgnat", "100.64.0.1"),
               ("multicast", "224.0.0.1"), ("ula-v6", "[fc00::1]"),
               ("mapped-metadata", "[::ffff:169.254.169.254]"), ("broadcast", "255.255.255.255"),
               ("benchmark", "198.18.0.1"), ("this-network", "0.1.2.3")]
    for name, host in private:
        _case(cases, "webhooks", "private", name, f"notification_url to {host}",
              RawUpload("pic.png", png, {"content_type": "image/png",
                                         "notification_url": "http://" + host + "/hook"}),
              refused)
    not_followed = (NotDelivered(("refused", "failed", "retrying", "dead")),)
    for name, path in (("to-loopback", "/redirect/"), ("to-localhost", "/redirect-localhost/"),
                       ("to-metadata", "/redirect-private/")):
        _case(cases, "webhooks", "redirect", name,
              f"an allowlisted receiver answering 302 {name}",
              RawUpload("pic.png", png, {"content_type": "image/png",
                                         "notification_url": "http://" + ALLOWED + path + AID}),
              not_followed)
    for name, host in (("127.0.0.1", "127.0.0.1"), ("localhost", "localhost"),
                       ("ipv6", "[::1]"), ("hex", "0x7f000001")):
        _case(cases, "webhooks", "api", name, f"notification_url to {host} through the API",
              api_upload("pic.png", png, b"image/png", folder="/hostile/webhooks",
                         notification_url="http://" + host + port + _HOOK),
              (NotDelivered(("refused",)), HttpAnswer(400, 499, ("notification_url", "url"))))


# ---------------------------------------------------------------------------------- build


def build(seed: int = SEED) -> list[Case]:
    """The whole corpus, in a stable order (the seed is fixed per corpus version)."""
    _BASE[0] = seed
    cases: list[Case] = []
    _api(cases)
    _images(cases)
    _videos(cases)
    _on_success(cases)
    _webhooks(cases)
    _events(cases)
    ids = [c.id for c in cases]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise AssertionError(f"duplicate case ids: {sorted(dupes)[:5]}")
    return _mark_fast(cases)


def select(cases: list[Case], *, fast: bool = False, classes: Iterable[str] = (),
           match: str | None = None) -> list[Case]:
    wanted = set(classes)
    out = [c for c in cases if (not fast or c.fast) and (not wanted or c.klass in wanted)
           and (match is None or match in c.id)]
    return out


def counts(cases: Iterable[Case]) -> dict[str, int]:
    out = dict.fromkeys(CLASSES, 0)
    for c in cases:
        out[c.klass] += 1
    return out
