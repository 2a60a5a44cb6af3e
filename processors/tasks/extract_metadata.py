"""``extract-metadata``: camera, capture and rights metadata (EXIF, IPTC, XMP, ICC) of a picture,
and on request a copy of the file without its location.

**Reader: Pillow itself**, measured against the alternatives on a 12 MP JPEG (3.4 MB) carrying
EXIF with a GPS IFD, XMP, IPTC-IIM and an ICC profile (``benchmarks/metadata.py``; ms per file,
ranges of three runs on this shared, loaded 2-core machine):

==========================  ==========  ================================================
library                     ms          reads
==========================  ==========  ================================================
Pillow 13 (this task)       0.8-1.6     EXIF (IFD0, Exif, GPS), XMP, IPTC, ICC: all four
exifread 3.5.1              0.3-1.3     EXIF only (no IPTC, no ICC)
piexif 1.1.3                0.4-1.2     EXIF only; unmaintained since 2019
pyexiv2 2.16 (exiv2 0.28)   0.4-4.4     all four (from a file; 1.1-4.7 from bytes); a
                                        1.5 MB wheel bundling the C++ library
==========================  ==========  ================================================

All of them cost next to nothing against anything else done to an upload, so the choice is
what they read and what they bring: Pillow reads all four kinds with no new dependency (the task
figure includes parsing the XMP and building the result), exifread and piexif read only EXIF,
and pyexiv2 would add a native library to do what Pillow already does.

What Pillow gives: ``Image.open`` parses the header only (no pixel is decoded): ``getexif()``
with the Exif and GPS IFDs, ``info["xmp"]`` (the raw packet, parsed here with ElementTree;
packets with a DTD or entities are ignored, as defusedxml would refuse them),
``IptcImagePlugin.getiptcinfo`` (JPEG APP13 / TIFF), ``info["icc_profile"]`` (its description
through LittleCMS). A PNG whose ``eXIf`` or XMP chunk comes after the pixel data is read by a
walk over the chunk headers, not by decoding it.

Result: ``make``, ``model``, ``lens``, ``exposure_time`` ("1/250") and ``exposure_time_s``,
``f_number``, ``iso``, ``focal_length`` (mm), ``focal_length_35mm``, ``captured_at`` (ISO 8601,
with the offset when the file has one), ``gps`` (``latitude``, ``longitude`` in degrees,
``altitude`` in m; EXIF, else XMP), ``orientation``, ``copyright``, ``artist``, ``title``,
``description``, ``keywords``, ``location`` (IPTC/XMP city, state, country...), ``icc_profile``,
``has_gps``; ``iptc`` and ``xmp`` as read; ``exif`` (every tag by name) with ``details``. Fields a
file lacks are ``null``. The asset's info gets ``image_metadata``: the summary fields that are set.

``strip``: a copy without location is written into the workdir as ``stripped.<ext>`` (a derived
object), **losslessly**: the pixels and every other byte are kept. JPEG: the EXIF GPS IFD is
emptied in place (the offsets of everything else, maker notes included, stay valid), XMP location
properties (``exif:GPS*``, ``photoshop:City/State/Country``, ``Iptc4xmpCore:Location/
CountryCode``, ``Iptc4xmpExt:LocationCreated/LocationShown``, DJI's ``drone-dji:Gps*``/
``*Altitude``) are blanked with whitespace (XMP's own padding), IPTC datasets 2:26/27/90/92/95/
100/101 (location code/name, city, sub-location, state, country code/name) are dropped (the
Photoshop IPTC digest is updated), extended-XMP segments are dropped, and whatever follows the
end of the first image (other MPO frames, motion-photo videos, trailers, which may carry their
own location) is cut, with the MPF index. PNG: the ``eXIf`` and XMP chunks are edited the same
way and ImageMagick's "Raw profile type" text chunks are dropped. WebP: ``EXIF`` and ``XMP``
chunks. Other formats are not stripped (the result says so). Nothing to remove: nothing is
written. ``redact_gps`` leaves the coordinates out of the result and the asset's info
(``has_gps`` still tells).

Rule properties: "has GPS" (``yes``/``no``: "has GPS is yes => notice"), "has copyright",
"copyright" ("copyright contains 'Getty'"; a file without one has the empty string, so "does not
contain" holds), "artist", "camera make", "camera model", "ISO".
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from PIL import ExifTags, Image, ImageCms, IptcImagePlugin
from pydantic import BaseModel, ConfigDict

from processors.registry import (
    InputSpec,
    ProcessorError,
    RuleProperty,
    TaskInput,
    register,
    result_field,
)

VERSION: Final = "1.0"
OUTPUT_STEM: Final = "stripped"

#: Longest string value reported (EXIF/IPTC/XMP fields are free text of any length).
MAX_TEXT: Final = 2000
#: Largest XMP packet inflated from a compressed PNG chunk (a zip bomb stops here).
MAX_XMP_BYTES: Final = 4 << 20
#: Most XMP properties reported (a packet may hold thousands, e.g. Photoshop's history).
MAX_XMP_PROPERTIES: Final = 200

EXIF_IFD: Final = 0x8769
GPS_IFD: Final = 0x8825
MAKER_NOTE: Final = 0x927C

_OPEN_ERRORS: Final = (OSError, SyntaxError, ValueError, EOFError, struct.error,
                       Image.DecompressionBombError)
_PARSE_ERRORS: Final = (ValueError, TypeError, KeyError, IndexError, struct.error, OSError,
                        SyntaxError, ZeroDivisionError, OverflowError, EOFError)


class ExtractMetadataParams(BaseModel):
    """``strip``: also write a copy without location metadata (``stripped.<ext>``, lossless);
    ``redact_gps``: leave the coordinates out of the result and the info; ``details``: every
    EXIF tag by name under ``exif``."""

    model_config = ConfigDict(extra="forbid")

    strip: bool = False
    redact_gps: bool = False
    details: bool = False


# ------------------------------------------------------------------------------- values
def _text(value: Any) -> str | None:
    """A trimmed string (NULs between parts become "; "), or None when empty."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    parts = [p.strip() for p in value.split("\x00")]
    out = "; ".join(p for p in parts if p)
    return out[:MAX_TEXT] or None


def _number(value: Any) -> float | None:
    if isinstance(value, tuple | list):
        value = value[0] if value else None
    try:
        f = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return f if math.isfinite(f) else None


def _int(value: Any) -> int | None:
    f = _number(value)
    return int(f) if f is not None else None


def _exposure_text(seconds: float) -> str:
    if 0 < seconds < 1:
        return f"1/{round(1 / seconds)}"
    return f"{seconds:g}"


_EXIF_TIME: Final = re.compile(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET: Final = re.compile(r"[+-]\d{2}:\d{2}$|Z$")


def _exif_time(value: Any, offset: Any = None) -> str | None:
    """``2024:06:01 10:20:30`` (+ ``+02:00``) -> ``2024-06-01T10:20:30+02:00``."""
    text = _text(value)
    m = _EXIF_TIME.match(text or "")
    if m is None or m.group(1) == "0000":
        return None
    out = f"{m[1]}-{m[2]}-{m[3]}T{m[4]}:{m[5]}:{m[6]}"
    off = (_text(offset) or "").strip()
    return out + off if _OFFSET.fullmatch(off) else out


def _degrees(dms: Any, ref: Any) -> float | None:
    try:
        d, m, s = (float(x) for x in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = d + m / 60 + s / 3600
    if not math.isfinite(value):
        return None
    return -value if (_text(ref) or "").upper()[:1] in ("S", "W") else value


def _gps_from_exif(gps: Mapping[int, Any]) -> dict[str, float] | None:
    lat = _degrees(gps.get(2), gps.get(1))
    lon = _degrees(gps.get(4), gps.get(3))
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180:
        return None
    out = {"latitude": round(lat, 6), "longitude": round(lon, 6)}
    alt = _number(gps.get(6))
    if alt is not None:
        ref = gps.get(5)
        below = (ref[:1] == b"\x01") if isinstance(ref, bytes) else _int(ref) == 1
        out["altitude"] = round(-alt if below else alt, 2)
    return out


_XMP_COORD: Final = re.compile(r"\s*(\d+(?:\.\d+)?),(\d+(?:\.\d+)?)(?:,(\d+(?:\.\d+)?))?([NSEW])")


def _xmp_coordinate(text: Any) -> float | None:
    """XMP's ``DDD,MM.mmk`` / ``DDD,MM,SSk``."""
    m = _XMP_COORD.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return None
    value = float(m[1]) + float(m[2]) / 60 + (float(m[3]) / 3600 if m[3] else 0.0)
    return -value if m[4] in "SW" else value


def _json_value(value: Any) -> Any:
    """An EXIF value made JSON-able (rationals as floats, short bytes as hex)."""
    if isinstance(value, bytes):
        return value.hex() if len(value) <= 64 else f"<{len(value)} bytes>"
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value[:64]]
    if isinstance(value, int):
        return value
    f = _number(value)
    return round(f, 6) if f is not None else None


# ------------------------------------------------------------------------------- XMP
#: Preferred prefixes of the usual namespaces (a packet may use any prefix for them).
XMP_PREFIXES: Final = {
    "http://purl.org/dc/elements/1.1/": "dc",
    "http://ns.adobe.com/xap/1.0/": "xmp",
    "http://ns.adobe.com/xap/1.0/rights/": "xmpRights",
    "http://ns.adobe.com/xap/1.0/mm/": "xmpMM",
    "http://ns.adobe.com/photoshop/1.0/": "photoshop",
    "http://ns.adobe.com/exif/1.0/": "exif",
    "http://ns.adobe.com/exif/1.0/aux/": "aux",
    "http://cipa.jp/exif/1.0/": "exifEX",
    "http://ns.adobe.com/tiff/1.0/": "tiff",
    "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/": "Iptc4xmpCore",
    "http://iptc.org/std/Iptc4xmpExt/2008-02-29/": "Iptc4xmpExt",
    "http://ns.adobe.com/lightroom/1.0/": "lr",
    "http://www.dji.com/drone-dji/1.0/": "drone-dji",
}
RDF: Final = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XML_LANG: Final = "{http://www.w3.org/XML/1998/namespace}lang"

#: Location properties by namespace: a predicate on the local name.
XMP_LOCATION: Final[dict[str, Callable[[str], bool]]] = {
    "http://ns.adobe.com/exif/1.0/": lambda n: n.startswith("GPS"),
    "http://ns.adobe.com/photoshop/1.0/": lambda n: n in ("City", "State", "Country"),
    "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/": lambda n: n in ("Location", "CountryCode"),
    "http://iptc.org/std/Iptc4xmpExt/2008-02-29/":
        lambda n: n in ("LocationCreated", "LocationShown"),
    "http://www.dji.com/drone-dji/1.0/":
        lambda n: n.lower().startswith("gps") or n.endswith("Altitude"),
}


def _xmp_text(packet: Any) -> str | None:
    """The packet as text; None when absent or when it declares a DTD/entities (refused, as
    defusedxml does: entity expansion is how XML bombs work)."""
    if isinstance(packet, str):
        text = packet
    elif isinstance(packet, bytes | bytearray):
        text = bytes(packet).decode("utf-8", "replace")
    else:
        return None
    text = text.strip("\x00 \r\n\t\ufeff")
    if not text or "<!DOCTYPE" in text or "<!ENTITY" in text:
        return None
    return text


def _xml_root(text: str) -> ET.Element | None:
    try:
        return ET.fromstring(text)
    except (ET.ParseError, ValueError):
        return None


def _prefix_of(tag: str, declared: Mapping[str, str]) -> str:
    uri, _, local = tag[1:].partition("}") if tag.startswith("{") else ("", "", tag)
    prefix = XMP_PREFIXES.get(uri) or declared.get(uri) or "ns"
    return f"{prefix}:{local}"


def _xmp_value(el: ET.Element, declared: Mapping[str, str]) -> Any:
    container = next((c for c in el if c.tag in (f"{{{RDF}}}Seq", f"{{{RDF}}}Bag",
                                                   f"{{{RDF}}}Alt")), None)
    if container is not None:
        items = [li for li in container if li.tag == f"{{{RDF}}}li"]
        if container.tag == f"{{{RDF}}}Alt":
            default = next((li for li in items if li.get(XML_LANG) == "x-default"), None)
            chosen = default if default is not None else (items[0] if items else None)
            return _text((chosen.text or "") if chosen is not None else "")
        return [t for t in (_text(li.text or "") for li in items) if t][:100]
    if el.get(f"{{{RDF}}}resource") is not None:
        return _text(el.get(f"{{{RDF}}}resource"))
    fields: dict[str, Any] = {}
    nested = [el, *[c for c in el if c.tag == f"{{{RDF}}}Description"]]
    for node in nested:
        for k, v in node.attrib.items():
            if not k.startswith(f"{{{RDF}}}"):
                fields[_prefix_of(k, declared)] = _text(v)
        for child in node:
            if child.tag != f"{{{RDF}}}Description":
                fields[_prefix_of(child.tag, declared)] = _text(child.text or "")
    if fields and (len(el) or len(el.attrib)):
        return {k: v for k, v in fields.items() if v is not None} or None
    return _text(el.text or "")


_XMLNS: Final = re.compile(r"""xmlns:([A-Za-z_][\w.-]*)\s*=\s*(["'])(.*?)\2""")


def parse_xmp(packet: Any) -> dict[str, Any]:
    """The packet's properties as ``{"prefix:Name": value}``: text, a list (Seq/Bag), the
    x-default text (Alt) or a dict (a struct). Empty when absent, refused or malformed."""
    text = _xmp_text(packet)
    root = _xml_root(text) if text else None
    if root is None or text is None:
        return {}
    declared = {m[3]: m[1] for m in _XMLNS.finditer(text)}
    out: dict[str, Any] = {}
    for desc in root.iter(f"{{{RDF}}}Description"):
        for k, v in desc.attrib.items():
            if not k.startswith(f"{{{RDF}}}") and len(out) < MAX_XMP_PROPERTIES:
                value = _text(v)
                if value is not None:
                    out.setdefault(_prefix_of(k, declared), value)
        for child in desc:
            if len(out) >= MAX_XMP_PROPERTIES:
                break
            value = _xmp_value(child, declared)
            if value not in (None, [], {}):
                out.setdefault(_prefix_of(child.tag, declared), value)
    return out


def _location_names(text: str) -> list[tuple[str, str, Callable[[str], bool]]]:
    """(prefix, namespace, predicate) for every location namespace the packet declares."""
    found = []
    for m in _XMLNS.finditer(text):
        pred = XMP_LOCATION.get(m[3])
        if pred is not None:
            found.append((m[1], m[3], pred))
    return found


def strip_xmp(packet: bytes) -> tuple[bytes | None, list[str]]:
    """The packet with its location properties blanked (same length: each removed attribute or
    element becomes spaces, the padding XMP itself uses), and what was removed. ``None`` means
    "drop the whole packet": it could not be parsed, or a location property survived the edit."""
    text = _xmp_text(packet)
    if text is None:
        return (packet, []) if not packet.strip(b"\x00 \r\n\t") else (None, ["xmp (unreadable)"])
    raw = bytes(packet).decode("utf-8", "replace")
    removed: list[str] = []
    for prefix, _, pred in _location_names(raw):
        p = re.escape(prefix)

        def blank(m: re.Match[str], pred: Callable[[str], bool] = pred,
                  prefix: str = prefix) -> str:
            if not pred(m["name"]):
                return m[0]
            removed.append(f"xmp {prefix}:{m['name']}")
            return " " * len(m[0].encode("utf-8"))

        raw = re.sub(rf"(?<=\s){p}:(?P<name>[\w.-]+)\s*=\s*(\"[^\"]*\"|'[^']*')", blank, raw)
        raw = re.sub(rf"<{p}:(?P<name>[\w.-]+)(?:\s[^<>]*)?/>", blank, raw)
        raw = re.sub(rf"<{p}:(?P<name>[\w.-]+)(?:\s[^<>]*)?>.*?</{p}:(?P=name)\s*>", blank, raw,
                     flags=re.DOTALL)
    if not removed:
        return packet, []
    out = raw.encode("utf-8")
    root = _xml_root(raw)
    if root is None or _has_xmp_location(root):
        return None, removed
    return out, removed


def _has_xmp_location(root: ET.Element) -> bool:
    for el in root.iter():
        names = [el.tag, *el.attrib]
        for name in names:
            if name.startswith("{"):
                uri, _, local = name[1:].partition("}")
                pred = XMP_LOCATION.get(uri)
                if pred is not None and pred(local):
                    return True
    return False


# ------------------------------------------------------------------------------- IPTC
IPTC_FIELDS: Final = {
    (2, 5): "object_name", (2, 25): "keywords", (2, 40): "special_instructions",
    (2, 55): "date_created", (2, 60): "time_created", (2, 80): "by_line",
    (2, 85): "by_line_title", (2, 90): "city", (2, 92): "sublocation",
    (2, 95): "province_state", (2, 100): "country_code", (2, 101): "country",
    (2, 103): "transmission_reference", (2, 105): "headline", (2, 110): "credit",
    (2, 115): "source", (2, 116): "copyright_notice", (2, 118): "contact", (2, 120): "caption",
    (2, 122): "writer",
}
IPTC_REPEATABLE: Final = frozenset({(2, 25), (2, 80), (2, 85), (2, 118), (2, 122)})
#: Datasets that say where: content location code/name, city, sub-location, state, country.
IPTC_LOCATION: Final = frozenset({26, 27, 90, 92, 95, 100, 101})


def parse_iptc(raw: Mapping[tuple[int, int], Any] | None) -> dict[str, Any]:
    """Pillow's ``getiptcinfo`` result with names (UTF-8 when 1:90 says so, else UTF-8 with a
    Latin-1 fallback)."""
    if not raw:
        return {}
    charset = raw.get((1, 90))
    utf8 = isinstance(charset, bytes) and charset in (b"\x1b%G", b"\x1b%/G")

    def dec(b: Any) -> str | None:
        if not isinstance(b, bytes):
            return None
        try:
            return _text(b.decode("utf-8"))
        except UnicodeDecodeError:
            return _text(b.decode("utf-8" if utf8 else "latin-1", "replace"))

    out: dict[str, Any] = {}
    for key, name in IPTC_FIELDS.items():
        value = raw.get(key)
        if value is None:
            continue
        values = [v for v in (dec(x) for x in (value if isinstance(value, list) else [value]))
                  if v]
        if values:
            out[name] = values if key in IPTC_REPEATABLE else values[0]
    return out


def _iim_datasets(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(record, dataset, start, end) of each IIM dataset; raises ValueError when malformed."""
    pos = 0
    while pos < len(data):
        if data[pos] != 0x1C:
            if not data[pos:].strip(b"\x00"):
                return  # trailing padding
            raise ValueError(f"no IIM tag marker at {pos}")
        if pos + 5 > len(data):
            raise ValueError("truncated IIM dataset header")
        rec, ds, size = data[pos + 1], data[pos + 2], struct.unpack(">H", data[pos + 3:pos + 5])[0]
        head = 5
        if size & 0x8000:  # extended dataset: the next (size & 0x7FFF) bytes are the length
            n = size & 0x7FFF
            if n > 4:
                raise ValueError("IIM extended length too long")
            size = int.from_bytes(data[pos + 5:pos + 5 + n], "big")
            head += n
        end = pos + head + size
        if end > len(data):
            raise ValueError("IIM dataset runs past its block")
        yield rec, ds, pos, end
        pos = end


def strip_iim(data: bytes) -> tuple[bytes, list[str]]:
    """The IIM block without its location datasets; what was removed."""
    kept, removed = [], []
    for rec, ds, start, end in _iim_datasets(data):
        if rec == 2 and ds in IPTC_LOCATION:
            removed.append(f"iptc {rec}:{ds} {IPTC_FIELDS.get((rec, ds), 'location')}")
        else:
            kept.append(data[start:end])
    return b"".join(kept), removed


def strip_photoshop(body: bytes) -> tuple[bytes, list[str]]:
    """A Photoshop image-resource block (after ``Photoshop 3.0\\0``) without IPTC location;
    the IPTC digest (resource 0x0425) is recomputed when present."""
    resources: list[tuple[int, bytes, bytes]] = []
    pos = 0
    while pos + 12 <= len(body) and body[pos:pos + 4] == b"8BIM":
        rid = struct.unpack(">H", body[pos + 4:pos + 6])[0]
        nlen = body[pos + 6]
        name_end = pos + 6 + ((nlen + 2) & ~1)  # pascal string padded to even
        size = struct.unpack(">I", body[name_end:name_end + 4])[0]
        data_start = name_end + 4
        if data_start + size > len(body):
            raise ValueError("Photoshop resource runs past its segment")
        resources.append((rid, body[pos + 6:name_end], body[data_start:data_start + size]))
        pos = data_start + size + (size & 1)
    if body[pos:].strip(b"\x00"):
        raise ValueError("unparsed bytes after the Photoshop resources")
    removed: list[str] = []
    out = []
    new_iim: bytes | None = None
    for rid, name, data in resources:
        if rid == 0x0404:
            data, gone = strip_iim(data)
            removed += gone
            new_iim = data
        out.append((rid, name, data))
    if not removed:
        return body, []
    rebuilt = b""
    for rid, name, data in out:
        if rid == 0x0425 and new_iim is not None and len(data) == 16:
            data = hashlib.md5(new_iim, usedforsecurity=False).digest()
        rebuilt += b"8BIM" + struct.pack(">H", rid) + name + struct.pack(">I", len(data)) + data
        rebuilt += b"\x00" if len(data) & 1 else b""
    return rebuilt, removed


# ------------------------------------------------------------------------------- EXIF GPS
_TIFF_TYPE_SIZES: Final = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4,
                           12: 8, 13: 4, 16: 8, 17: 8, 18: 8}


def blank_gps(tiff: bytearray, base: int = 0) -> int:
    """Empty the GPS IFD of the TIFF structure at ``tiff[base:]`` in place: its entries and
    their out-of-line values are zeroed and its entry count becomes 0. Every other offset stays
    valid (nothing moves), so maker notes and thumbnails survive. Returns the number of GPS
    entries removed (0: none). Raises ValueError on a malformed structure."""
    order = bytes(tiff[base:base + 2])
    if order not in (b"II", b"MM"):
        raise ValueError("not a TIFF/EXIF structure")
    e = "<" if order == b"II" else ">"
    end = len(tiff)

    def u16(p: int) -> int:
        if p + 2 > end:
            raise ValueError("EXIF structure truncated")
        return int(struct.unpack_from(e + "H", tiff, p)[0])

    def u32(p: int) -> int:
        if p + 4 > end:
            raise ValueError("EXIF structure truncated")
        return int(struct.unpack_from(e + "I", tiff, p)[0])

    ifd0 = base + u32(base + 4)
    gps_at = None
    for i in range(u16(ifd0)):
        p = ifd0 + 2 + 12 * i
        if u16(p) == GPS_IFD:
            gps_at = base + u32(p + 8)
    if gps_at is None:
        return 0
    n = u16(gps_at)
    table_end = gps_at + 2 + 12 * n + 4
    if table_end > end:
        raise ValueError("GPS IFD runs past the EXIF data")
    for i in range(n):
        p = gps_at + 2 + 12 * i
        size = _TIFF_TYPE_SIZES.get(u16(p + 2), 1) * u32(p + 4)
        if size > 4:
            off = base + u32(p + 8)
            if off + size <= end and off >= base + 8:
                tiff[off:off + size] = bytes(size)
    tiff[gps_at:table_end] = bytes(table_end - gps_at)
    return n


def _strip_exif_payload(data: bytes, prefix: bytes = b"") -> tuple[bytes | None, list[str]]:
    """EXIF data (optionally after ``prefix``, e.g. ``Exif\\0\\0``) with the GPS IFD emptied;
    ``None`` when the structure cannot be walked (then the whole block must go: its GPS could
    not be found, so it cannot be kept)."""
    buf = bytearray(data)
    try:
        n = blank_gps(buf, len(prefix))
    except ValueError:
        return None, ["exif segment (unreadable)"]
    return (bytes(buf), [f"exif GPS IFD ({n} tags)"]) if n else (data, [])


# ------------------------------------------------------------------------------- JPEG
XMP_HEADER: Final = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_EXTENSION: Final = b"http://ns.adobe.com/xmp/extension/\x00"
PHOTOSHOP: Final = b"Photoshop 3.0\x00"


def _segment(marker: int, body: bytes) -> bytes:
    if len(body) + 2 > 0xFFFF:
        raise ValueError("segment too large")
    return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body


def _jpeg_image_end(data: bytes, pos: int) -> int:
    """The offset just past the first image's EOI, from the SOS at ``pos`` on."""
    n = len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= n:
            return n
        marker = data[pos + 1]
        if marker == 0xD9:
            return pos + 2
        if marker == 0xFF:
            pos += 1  # fill byte
        elif marker == 0x00 or 0xD0 <= marker <= 0xD7:
            pos += 2  # stuffed 0xFF or RSTn
        elif pos + 4 > n:
            return n
        else:  # another marker segment (DHT, SOS of the next scan, DRI...): skip its payload
            pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]


def strip_jpeg(data: bytes) -> tuple[bytes, list[str]]:
    """The JPEG without location (see the module docstring); what was removed."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    out = [data[:2]]
    removed: list[str] = []
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a payload
            out.append(data[pos:pos + 2])
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        body = data[pos + 4:pos + 2 + length]
        seg_end = pos + 2 + length
        if seg_end > len(data):
            raise ValueError("JPEG segment runs past the file")
        if marker == 0xDA:  # SOS: the scans, to the end of the first image
            end = _jpeg_image_end(data, seg_end)
            out.append(data[pos:end])
            if data[end:].strip(b"\x00"):
                removed.append(f"{len(data) - end} bytes after the image (other frames, "
                               "trailers)")
            return b"".join(out), removed
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            new, gone = _strip_exif_payload(body, b"Exif\x00\x00")
            if new is not None:
                out.append(_segment(marker, new))
            removed += gone
        elif marker == 0xE1 and body.startswith(XMP_HEADER):
            packet, gone = strip_xmp(body[len(XMP_HEADER):])
            removed += gone
            if packet is None:
                removed.append("xmp packet")
            else:
                out.append(_segment(marker, XMP_HEADER + packet))
        elif marker == 0xE1 and body.startswith(XMP_EXTENSION):
            removed.append("extended xmp segment")
        elif marker == 0xE2 and body.startswith(b"MPF\x00"):
            removed.append("MPF index")
        elif marker == 0xED and body.startswith(PHOTOSHOP):
            try:
                resources, gone = strip_photoshop(body[len(PHOTOSHOP):])
                out.append(_segment(marker, PHOTOSHOP + resources))
                removed += gone
            except ValueError:
                removed.append("photoshop/iptc segment (unreadable)")
        else:
            out.append(data[pos:seg_end])
        pos = seg_end
    raise ValueError("JPEG without image data")


# ------------------------------------------------------------------------------- PNG
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if pos + 12 + length > len(data):
            raise ValueError("PNG chunk runs past the file")
        yield kind, data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IEND":
            return


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_itxt_xmp(body: bytes) -> bytes | None:
    """The XMP text of an ``iTXt`` chunk keyed ``XML:com.adobe.xmp``, else None."""
    key, sep, rest = body.partition(b"\x00")
    if key != b"XML:com.adobe.xmp" or not sep or len(rest) < 2:
        return None
    compressed = rest[0] == 1
    _, _, rest = rest[2:].partition(b"\x00")  # language tag
    _, _, text = rest.partition(b"\x00")  # translated keyword
    if not compressed:
        return text
    inflater = zlib.decompressobj()
    out = inflater.decompress(text, MAX_XMP_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"compressed XMP inflates past {MAX_XMP_BYTES} bytes")
    return out


def strip_png(data: bytes) -> tuple[bytes, list[str]]:
    out = [PNG_SIGNATURE]
    removed: list[str] = []
    for kind, body in _png_chunks(data):
        if kind == b"eXIf":
            new, gone = _strip_exif_payload(body)
            removed += gone
            if new is not None:
                out.append(_png_chunk(kind, new))
            continue
        try:
            xmp = _png_itxt_xmp(body) if kind == b"iTXt" else None
        except (ValueError, zlib.error):
            removed.append("xmp packet (unreadable)")
            continue
        if xmp is not None:
            packet, gone = strip_xmp(xmp)
            removed += gone
            if packet is None:
                removed.append("xmp packet")
            elif gone:
                out.append(_png_chunk(kind, b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + packet))
            else:
                out.append(_png_chunk(kind, body))
            continue
        if kind in (b"tEXt", b"zTXt", b"iTXt") and body.startswith(b"Raw profile type "):
            removed.append(body.split(b"\x00", 1)[0].decode("latin-1") + " text chunk")
            continue
        out.append(_png_chunk(kind, body))
    return b"".join(out), removed


def png_late_metadata(data: bytes) -> tuple[bytes | None, bytes | None]:
    """``(exif, xmp)`` from a PNG's chunks wherever they are (Pillow only sees those before the
    pixel data without decoding it)."""
    exif = xmp = None
    for kind, body in _png_chunks(data):
        if kind == b"eXIf" and exif is None:
            exif = body
        elif kind == b"iTXt" and xmp is None:
            xmp = _png_itxt_xmp(body)
    return exif, xmp


# ------------------------------------------------------------------------------- WebP
def strip_webp(data: bytes) -> tuple[bytes, list[str]]:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP")
    end = min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    pos, chunks, removed = 12, [], []
    while pos + 8 <= end:
        kind, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if kind == b"EXIF":
            prefix = b"Exif\x00\x00" if body.startswith(b"Exif\x00\x00") else b""
            new, gone = _strip_exif_payload(body, prefix)
            removed += gone
            if new is None:
                pos += 8 + size + (size & 1)
                continue
            body = new
        elif kind == b"XMP ":
            packet, gone = strip_xmp(body)
            removed += gone
            if packet is None:
                removed.append("xmp packet")
                pos += 8 + size + (size & 1)
                continue
            body = packet
        chunks.append(kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1
                                                                     else b""))
        pos += 8 + size + (size & 1)
    payload = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(payload)) + payload, removed


STRIPPERS: Final[dict[str, tuple[str, Callable[[bytes], tuple[bytes, list[str]]]]]] = {
    "JPEG": ("jpg", strip_jpeg),
    "MPO": ("jpg", strip_jpeg),
    "PNG": ("png", strip_png),
    "WEBP": ("webp", strip_webp),
}


# ------------------------------------------------------------------------------- reading
@dataclass
class _Read:
    exif: dict[int, Any] = field(default_factory=dict)
    exif_ifd: dict[int, Any] = field(default_factory=dict)
    gps: dict[int, Any] = field(default_factory=dict)
    xmp: dict[str, Any] = field(default_factory=dict)
    iptc: dict[str, Any] = field(default_factory=dict)
    icc: str | None = None
    format: str = ""
    warnings: list[str] = field(default_factory=list)


def _icc_description(icc: Any) -> str | None:
    if not isinstance(icc, bytes) or not icc:
        return None
    try:
        return _text(ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def _read(path: Path) -> _Read:
    """Everything from the header (Pillow reads only what it parses; a PNG is walked over its
    chunk headers when a chunk may come after the pixels)."""
    out = _Read()
    try:
        im = Image.open(path)
    except _OPEN_ERRORS as exc:
        raise ProcessorError(f"extract-metadata: not a readable image: {exc}") from exc
    with im:
        out.format = im.format or ""
        xmp_packet: Any = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
        raw_exif: Any = im.info.get("exif")
        if out.format == "PNG" and (raw_exif is None or not xmp_packet):
            try:
                late_exif, late_xmp = png_late_metadata(path.read_bytes())
            except (ValueError, zlib.error) as exc:
                out.warnings.append(f"png chunks: {exc}")
                late_exif = late_xmp = None
            raw_exif = raw_exif or late_exif
            xmp_packet = xmp_packet or late_xmp
        if out.format == "TIFF" and not xmp_packet:
            tag = getattr(im, "tag_v2", {}).get(700)
            xmp_packet = tag if isinstance(tag, bytes | str) else None
        try:
            if out.format == "PNG":  # getexif() would decode the pixels to find a late eXIf
                exif = Image.Exif()
                if raw_exif:
                    exif.load(raw_exif)
            else:
                exif = im.getexif()
            out.exif = dict(exif)
            out.exif_ifd = dict(exif.get_ifd(EXIF_IFD))
            out.gps = dict(exif.get_ifd(GPS_IFD))
        except _PARSE_ERRORS as exc:
            out.warnings.append(f"exif: {type(exc).__name__}: {exc}")
        try:
            out.xmp = parse_xmp(xmp_packet)
        except _PARSE_ERRORS as exc:
            out.warnings.append(f"xmp: {type(exc).__name__}: {exc}")
        if xmp_packet and not out.xmp and _xmp_text(xmp_packet) is None:
            out.warnings.append("xmp: refused (declares a DTD or entities) or empty")
        try:
            out.iptc = parse_iptc(IptcImagePlugin.getiptcinfo(im))
        except _PARSE_ERRORS as exc:
            out.warnings.append(f"iptc: {type(exc).__name__}: {exc}")
        out.icc = _icc_description(im.info.get("icc_profile"))
    return out


def _first(*values: Any) -> Any:
    for v in values:
        if isinstance(v, list):
            v = "; ".join(str(x) for x in v if x) or None
        if v not in (None, "", {}):
            return v
    return None


def _xmp_gps(xmp: Mapping[str, Any]) -> dict[str, float] | None:
    lat, lon = _xmp_coordinate(xmp.get("exif:GPSLatitude")), _xmp_coordinate(
        xmp.get("exif:GPSLongitude"))
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180:
        return None
    out = {"latitude": round(lat, 6), "longitude": round(lon, 6)}
    alt = xmp.get("exif:GPSAltitude")
    if isinstance(alt, str) and "/" in alt:
        num, _, den = alt.partition("/")
        alt_v = _number(float(num) / float(den)) if _number(den) else None
    else:
        alt_v = _number(alt)
    if alt_v is not None:
        out["altitude"] = round(-alt_v if xmp.get("exif:GPSAltitudeRef") == "1" else alt_v, 2)
    return out


def _exif_details(r: _Read) -> dict[str, Any]:
    named: dict[str, Any] = {}
    for tags, names in ((r.exif, ExifTags.TAGS), (r.exif_ifd, ExifTags.TAGS),
                        (r.gps, ExifTags.GPSTAGS)):
        for tag, value in tags.items():
            if tag in (EXIF_IFD, GPS_IFD):
                continue
            name = names.get(tag, f"0x{tag:04x}")
            if tag == MAKER_NOTE:
                named[name] = f"<{len(value) if isinstance(value, bytes) else '?'} bytes>"
            else:
                named[name] = _json_value(value)
    return named


def summarize(r: _Read) -> dict[str, Any]:
    """The result fields from what was read (EXIF first, then IPTC, then XMP)."""
    e, x, g, p, i = r.exif, r.exif_ifd, r.gps, r.xmp, r.iptc
    exposure = _number(x.get(0x829A)) or _number(p.get("exif:ExposureTime"))
    gps = _gps_from_exif(g) or _xmp_gps(p)
    location = {k: v for k, v in {
        "city": _first(i.get("city"), p.get("photoshop:City")),
        "sublocation": _first(i.get("sublocation"), p.get("Iptc4xmpCore:Location")),
        "state": _first(i.get("province_state"), p.get("photoshop:State")),
        "country": _first(i.get("country"), p.get("photoshop:Country")),
        "country_code": _first(i.get("country_code"), p.get("Iptc4xmpCore:CountryCode")),
    }.items() if v is not None}
    subject = p.get("dc:subject")
    keywords = list(dict.fromkeys([*(i.get("keywords") or []),
                                   *(subject if isinstance(subject, list) else [])]))
    iptc_time = None
    if i.get("date_created"):
        d = str(i["date_created"])
        t = str(i.get("time_created") or "")
        iptc_time = _exif_time(f"{d[:4]}:{d[4:6]}:{d[6:8]} {t[:2]}:{t[2:4]}:{t[4:6]}"
                               if len(t) >= 6 else f"{d[:4]}:{d[4:6]}:{d[6:8]} 00:00:00")
    focal = _number(x.get(0x920A))
    return {
        "make": _first(_text(e.get(0x010F)), p.get("tiff:Make")),
        "model": _first(_text(e.get(0x0110)), p.get("tiff:Model")),
        "lens": _first(_text(x.get(0xA434)), p.get("aux:Lens"), p.get("exifEX:LensModel")),
        "lens_make": _first(_text(x.get(0xA433)), p.get("exifEX:LensMake")),
        "software": _first(_text(e.get(0x0131)), p.get("xmp:CreatorTool")),
        "exposure_time": _exposure_text(exposure) if exposure else None,
        "exposure_time_s": round(exposure, 6) if exposure else None,
        "f_number": round(f, 2) if (f := _number(x.get(0x829D))) else None,
        "iso": _int(x.get(0x8827)) or _int(x.get(0x8833)),
        "focal_length": round(focal, 2) if focal else None,
        "focal_length_35mm": _int(x.get(0xA405)) or None,
        "captured_at": (_exif_time(x.get(0x9003), x.get(0x9011))
                        or _exif_time(x.get(0x9004), x.get(0x9012))
                        or _exif_time(e.get(0x0132), x.get(0x9010))
                        or _first(p.get("exif:DateTimeOriginal"), p.get("xmp:CreateDate"),
                                  p.get("photoshop:DateCreated"))
                        or iptc_time),
        "gps": gps,
        "orientation": o if (o := _int(e.get(0x0112))) in range(1, 9) else None,
        "copyright": _first(_text(e.get(0x8298)), i.get("copyright_notice"), p.get("dc:rights")),
        "artist": _first(_text(e.get(0x013B)), i.get("by_line"), p.get("dc:creator")),
        "title": _first(p.get("dc:title"), i.get("object_name"), i.get("headline")),
        "description": _first(_text(e.get(0x010E)), p.get("dc:description"), i.get("caption")),
        "keywords": keywords[:100] or None,
        "location": location or None,
        "icc_profile": r.icc,
        "has_gps": gps is not None or bool(g.get(2) or g.get(4)),
    }


#: The summary fields that go into the asset's info (``image_metadata``).
SUMMARY_FIELDS: Final = ("make", "model", "lens", "exposure_time", "f_number", "iso",
                         "focal_length", "captured_at", "gps", "orientation", "copyright",
                         "artist", "title", "keywords", "location", "icc_profile", "has_gps")


def _info(result: Mapping[str, Any]) -> dict[str, Any] | None:
    out = {k: result.get(k) for k in SUMMARY_FIELDS if result.get(k) is not None}
    return out or None


def _yes_no(name: str) -> Callable[[Mapping[str, Any]], str | None]:
    def extract(result: Mapping[str, Any]) -> str | None:
        value = result.get(name)
        return None if value is None else ("yes" if value else "no")

    return extract


def _copyright(result: Mapping[str, Any]) -> str:
    value = result.get("copyright")
    return value if isinstance(value, str) else ""


RULE_PROPERTIES: Final = {
    "has_gps": RuleProperty("string", _yes_no("has_gps"),
                            aliases=("has gps", "has location", "gps")),
    "has_copyright": RuleProperty("string", _yes_no("has_copyright"),
                                  aliases=("has copyright",)),
    "copyright": RuleProperty("string", _copyright,
                              aliases=("copyright", "copyright notice")),
    "artist": RuleProperty("string", result_field("artist"),
                           aliases=("artist", "creator", "photographer")),
    "camera_make": RuleProperty("string", result_field("make"),
                                aliases=("camera make", "make")),
    "camera_model": RuleProperty("string", result_field("model"),
                                 aliases=("camera model", "model")),
    "iso": RuleProperty("number", result_field("iso"), aliases=("iso", "iso speed")),
}


def _strip(path: Path, fmt: str, workdir: Path | None) -> dict[str, Any]:
    entry = STRIPPERS.get(fmt)
    if entry is None:
        return {"output": None, "removed": [],
                "reason": f"stripping is done for JPEG, PNG and WebP, not {fmt or 'this file'}"}
    if workdir is None:
        raise ProcessorError("extract-metadata: strip needs a workdir for its output")
    ext, fn = entry
    try:
        stripped, removed = fn(path.read_bytes())
    except (ValueError, struct.error, zlib.error) as exc:
        raise ProcessorError(f"extract-metadata: cannot strip this {fmt}: {exc}") from exc
    if not removed:
        return {"output": None, "removed": [], "reason": "no location metadata to remove"}
    name = f"{OUTPUT_STEM}.{ext}"
    (workdir / name).write_bytes(stripped)
    return {"output": name, "removed": removed, "bytes": len(stripped), "lossless": True}


@register(
    "extract-metadata",
    outputs=True,
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="file"),  # the header is enough: no pixel is decoded
    params=ExtractMetadataParams,
    rule_properties=RULE_PROPERTIES,
    info={"image_metadata": _info},
)
def extract_metadata(inp: TaskInput, params: ExtractMetadataParams) -> dict[str, Any]:
    """EXIF, IPTC, XMP and ICC metadata; optionally a copy without location."""
    if inp.path is None:
        raise ProcessorError("extract-metadata needs the file", permanent=True)
    path = Path(inp.path)
    if not path.is_file():
        raise ProcessorError(f"extract-metadata: no file at {path}", permanent=False)
    r = _read(path)
    result = summarize(r)
    result["has_copyright"] = result["copyright"] is not None
    if params.redact_gps:
        result["gps"] = None
    result["format"] = "JPEG" if r.format == "MPO" else r.format
    result["sources"] = {"exif": bool(r.exif), "gps_ifd": bool(r.gps), "xmp": bool(r.xmp),
                         "iptc": bool(r.iptc), "icc": r.icc is not None}
    result["iptc"] = r.iptc or None
    xmp = dict(r.xmp)
    if params.redact_gps:
        xmp = {k: v for k, v in xmp.items() if not k.startswith("exif:GPS")}
    result["xmp"] = xmp or None
    if params.details:
        exif = _exif_details(r)
        if params.redact_gps:
            exif = {k: v for k, v in exif.items() if not k.startswith("GPS")}
        result["exif"] = exif
    if r.warnings:
        result["warnings"] = r.warnings
    if params.strip:
        result["stripped"] = _strip(path, r.format, inp.workdir)
    return result
