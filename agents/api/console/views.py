"""What the asset page draws, read from the asset JSON (``GET /v1/assets/{id}``) by the shape of
each result, not by post-process name (names are the deployment's choice; a second face detector
configured under another name is drawn the same way):

==================  =========================================================================
result data         drawn as
==================  =========================================================================
``faces[].box``     boxes ``[x, y, w, h]`` over the picture (face detection and the face index)
``lines[].box``     polygons (four ``[x, y]`` corners) over the picture, with the text (OCR)
``plates[].box``    boxes ``[x0, y0, x1, y1]`` over the picture, with the plate's text
``brands[]``        polygons over the picture (logo matches)
``colors[].hex``    colour swatches with their share
``tags[]``          tag chips with scores (and the broad labels)
``scene``           the scene, indoor/outdoor and the category scores
``nsfw``            the score as a meter
``details.unsafe_segments``  segments on the video's timeline (video SFW)
``hls.master``      a ``<video>`` playing the master playlist (native HLS), else a link
``derived``         every stored object, linked (pictures shown)
==================  =========================================================================

Coordinates are the asset's upright pixels (the results say so); each overlay is an SVG whose
viewBox is the result's ``width``/``height`` (else the asset's), laid over the picture, so the
browser does the scaling. Every value is checked for its type and range here (the data came
over Kafka, from any producer); what does not fit is left out, never drawn wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Final

MAX_COORD: Final = 1 << 20
MAX_ITEMS: Final = 500
HEX: Final = re.compile(r"^#[0-9a-fA-F]{6}$")
PICTURE_SUFFIXES: Final = (".webp", ".png", ".jpg", ".jpeg", ".gif", ".avif")


def _num(value: Any, lo: float = -MAX_COORD, hi: float = MAX_COORD) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) and lo <= v <= hi else None


def _text(value: Any, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _list(value: Any) -> list[Any]:
    return list(value[:MAX_ITEMS]) if isinstance(value, list) else []


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass
class Shape:
    """One box (``points`` empty) or polygon over the picture, in its pixels."""

    label: str
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0
    points: str = ""
    index: int = 0


@dataclass
class Overlay:
    postprocess: str
    task: str
    kind: str  # faces | ocr | plates | logos
    width: float
    height: float
    shapes: list[Shape]


@dataclass
class Swatch:
    hex: str
    share: float


@dataclass
class Segment:
    start_ms: float
    end_ms: float
    confidence: float | None


@dataclass
class Facets:
    """What one result shows besides its raw JSON."""

    swatches: list[Swatch] = field(default_factory=list)
    tags: list[tuple[str, float | None]] = field(default_factory=list)
    broad: list[tuple[str, float | None]] = field(default_factory=list)
    scene: str = ""
    indoor_outdoor: str = ""
    scenes: list[tuple[str, float]] = field(default_factory=list)
    nsfw: float | None = None
    sfw: bool | None = None
    segments: list[Segment] = field(default_factory=list)
    text: str = ""
    plates: list[tuple[str, float | None]] = field(default_factory=list)
    logos: list[tuple[str, float | None]] = field(default_factory=list)
    faces: int | None = None
    hls: str | None = None
    dash: str | None = None
    derived: list[tuple[str, str, bool]] = field(default_factory=list)  # name, url, picture


@dataclass
class ResultView:
    name: str
    task: str
    status: str
    mode: str
    error: str
    verdicts: list[Mapping[str, Any]]
    data: Any
    facets: Facets


@dataclass
class AssetView:
    kind: str  # image | video | other
    width: float | None
    height: float | None
    duration_ms: float | None
    overlays: list[Overlay]
    results: list[ResultView]
    moderation: str | None
    timeline: list[tuple[str, list[Segment]]]


def _box_xywh(box: Any) -> tuple[float, float, float, float] | None:
    vals = [_num(v) for v in _list(box)]
    if len(vals) != 4 or any(v is None for v in vals):
        return None
    x, y, w, h = (float(v) for v in vals if v is not None)
    return (x, y, w, h) if w >= 0 and h >= 0 else None


def _box_corners(box: Any) -> tuple[float, float, float, float] | None:
    found = _box_xywh(box)
    if found is None:
        return None
    x0, y0, x1, y1 = found
    return (x0, y0, x1 - x0, y1 - y0) if x1 >= x0 and y1 >= y0 else None


def _polygon(points: Any) -> str:
    out = []
    for p in _list(points)[:64]:
        pair = [_num(v) for v in _list(p)]
        if len(pair) != 2 or pair[0] is None or pair[1] is None:
            return ""
        out.append(f"{pair[0]:g},{pair[1]:g}")
    return " ".join(out) if len(out) >= 3 else ""


def _score(value: Any) -> float | None:
    return _num(value, -1e9, 1e9)


def _labelled(items: Any, key: str, score: str) -> list[tuple[str, float | None]]:
    out: list[tuple[str, float | None]] = []
    for item in _list(items):
        if isinstance(item, str):
            out.append((item[:200], None))
        elif isinstance(item, Mapping) and _text(item.get(key)):
            out.append((_text(item.get(key)), _score(item.get(score))))
    return out


def overlays_of(name: str, task: str, data: Mapping[str, Any], width: float | None,
                height: float | None) -> list[Overlay]:
    w = _num(data.get("width"), 1) or width
    h = _num(data.get("height"), 1) or height
    if not w or not h:
        return []
    found: list[Overlay] = []
    faces = []
    for i, face in enumerate(_list(data.get("faces"))):
        box = _box_xywh(_map(face).get("box"))
        if box is not None:
            label = f"face {i + 1} ({fmt_conf(_map(face).get('confidence'))})"
            faces.append(Shape(label, *box, index=i))
    if faces:
        found.append(Overlay(name, task, "faces", w, h, faces))
    lines = [Shape(_text(_map(ln).get("text")), points=pts, index=i)
             for i, ln in enumerate(_list(data.get("lines")))
             if (pts := _polygon(_map(ln).get("box")))]
    if lines:
        found.append(Overlay(name, task, "ocr", w, h, lines))
    plates = [Shape(_text(_map(p).get("text")), *b, index=i)
              for i, p in enumerate(_list(data.get("plates")))
              if (b := _box_corners(_map(p).get("box"))) is not None]
    if plates:
        found.append(Overlay(name, task, "plates", w, h, plates))
    logos = [Shape(_text(_map(b).get("brand")), points=pts, index=i)
             for i, b in enumerate(_list(data.get("brands")))
             if (pts := _polygon(_map(b).get("polygon")))]
    if logos:
        found.append(Overlay(name, task, "logos", w, h, logos))
    return found


def fmt_conf(value: Any) -> str:
    v = _score(value)
    return "?" if v is None else f"{v:.2f}"


def segments_of(data: Mapping[str, Any]) -> list[Segment]:
    out = []
    for s in _list(_map(data.get("details")).get("unsafe_segments")):
        start, end = _num(_map(s).get("start_offset"), 0), _num(_map(s).get("end_offset"), 0)
        if start is not None and end is not None and end >= start:
            out.append(Segment(start, end, _score(_map(s).get("confidence"))))
    return out


def facets_of(data: Mapping[str, Any], urls: Mapping[str, str]) -> Facets:
    f = Facets()
    for c in _list(data.get("colors")):
        hex_, share = _text(_map(c).get("hex")), _num(_map(c).get("share"), 0, 1)
        if HEX.match(hex_):
            f.swatches.append(Swatch(hex_.lower(), share or 0.0))
    f.tags = _labelled(data.get("tags"), "label", "score")
    f.broad = _labelled(data.get("broad"), "label", "score")
    f.scene = _text(data.get("scene"))
    f.indoor_outdoor = _text(data.get("indoor_outdoor"))
    f.scenes = [(label, score or 0.0) for label, score in
                _labelled(data.get("scenes"), "category", "score")]
    f.nsfw = _num(data.get("nsfw"), 0, 1)
    sfw = data.get("sfw")
    f.sfw = sfw if isinstance(sfw, bool) else None
    f.segments = segments_of(data)
    f.text = _text(data.get("text"), 20_000)
    f.plates = _labelled(data.get("plates"), "text", "confidence")
    f.logos = _labelled(data.get("brands"), "brand", "score")
    count = data.get("count")
    if isinstance(data.get("faces"), list) and isinstance(count, int) \
            and not isinstance(count, bool):
        f.faces = count
    master = _text(_map(data.get("hls")).get("master"), 1000)
    f.hls = urls.get(master) if master else None
    manifest = _text(_map(data.get("dash")).get("manifest"), 1000)
    f.dash = urls.get(manifest) if manifest else None
    for name, url in sorted(urls.items())[:MAX_ITEMS]:
        picture = PurePosixPath(name).suffix.lower() in PICTURE_SUFFIXES
        f.derived.append((name, url, picture))
    return f


def kind_of(content_type: str) -> str:
    ctype = content_type.split(";")[0].strip().lower()
    if ctype.startswith("image/") and "svg" not in ctype:
        return "image"
    if ctype.startswith("video/"):
        return "video"
    return "other"


def moderation_of(asset: Mapping[str, Any]) -> str | None:
    """The moderation status, when the asset JSON carries a ``moderation`` field."""
    found = asset.get("moderation")
    if isinstance(found, str):
        return found[:100] or None
    if isinstance(found, Mapping):
        status = found.get("status")
        return status[:100] if isinstance(status, str) and status else "present"
    return None


def asset_view(asset: Mapping[str, Any]) -> AssetView:
    """Everything the asset page draws (``asset``: the API's asset JSON)."""
    info = _map(asset.get("info"))
    width, height = _num(info.get("width"), 1), _num(info.get("height"), 1)
    duration = _num(info.get("duration"), 0)
    results: list[ResultView] = []
    overlays: list[Overlay] = []
    timeline: list[tuple[str, list[Segment]]] = []
    items = _map(asset.get("results"))
    for name in sorted(items)[:MAX_ITEMS]:
        r = _map(items[name])
        data = _map(r.get("data"))
        urls = {k: v for k, v in _map(_map(r.get("derived")).get("urls")).items()
                if isinstance(k, str) and isinstance(v, str)}
        task = _text(r.get("task"))
        facets = facets_of(data, urls)
        if r.get("status") == "ok":
            overlays += overlays_of(str(name), task, data, width, height)
            if facets.segments or facets.sfw is not None:
                timeline.append((str(name), facets.segments))
        results.append(ResultView(
            name=str(name), task=task, status=_text(r.get("status")), mode=_text(r.get("mode")),
            error=_text(r.get("error"), 4000),
            verdicts=[v for v in _list(r.get("verdicts")) if isinstance(v, Mapping)],
            data=r.get("data"), facets=facets))
    ends = [s.end_ms for _, segs in timeline for s in segs]
    duration_ms = duration * 1000 if duration else (max(ends) if ends else None)
    return AssetView(kind=kind_of(_text(asset.get("content_type"))), width=width, height=height,
                     duration_ms=duration_ms, overlays=overlays, results=results,
                     moderation=moderation_of(asset), timeline=timeline)


def card_of(asset: Mapping[str, Any]) -> dict[str, Any]:
    """What a grid card shows of an asset."""
    info = _map(asset.get("info"))
    urls = _map(asset.get("info_urls"))
    blurhash = _text(info.get("blurhash"), 100)
    return {
        "id": _text(asset.get("asset_id"), 200),
        "filename": _text(asset.get("filename"), 300),
        "folder": _text(asset.get("folder"), 600),
        "status": _text(asset.get("status"), 32),
        "tags": [t[:60] for t in _list(asset.get("tags"))[:4] if isinstance(t, str)],
        "thumbnail": _text(urls.get("thumbnail"), 2000) or None,
        "blurhash": blurhash if re.fullmatch(r"[0-9A-Za-z#$%*+,\-.:;=?@\[\]^_{|}~]{6,}",
                                             blurhash) else "",
        "width": int(_num(info.get("width"), 1) or 0),
        "height": int(_num(info.get("height"), 1) or 0),
        "kind": kind_of(_text(asset.get("content_type"))),
        "moderation": moderation_of(asset),
    }

