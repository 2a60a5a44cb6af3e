"""extract-metadata: EXIF, IPTC, XMP and ICC read from the header, rules on them, and the
lossless copy without location (checked by reading it back)."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin, features

from agents.policy.rules import make_vocabulary
from processors import registry
from processors.registry import ProcessorError, TaskInput
from processors.tasks import extract_metadata as em
from tests.support.processors import rule_holds, run
from tests.unit.processors.tasks import metadata_samples as ms

TASK = "extract-metadata"


def _file(tmp_path: Path, data: bytes, name: str = "photo.jpg") -> TaskInput:
    path = tmp_path / name
    path.write_bytes(data)
    work = tmp_path / f"work-{name}"
    work.mkdir()
    return TaskInput(properties={}, path=path, workdir=work)


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def test_registration() -> None:
    proc = registry.get(TASK)
    assert proc.input == registry.InputSpec(kind="file")  # header only: no decode
    assert set(proc.info) == {"image_metadata"}
    assert {"has_gps", "copyright", "has_copyright"} <= set(proc.rule_properties)
    make_vocabulary(proc.rule_properties)  # no clash with the base vocabulary


def test_reads_exif_iptc_xmp_and_icc(tmp_path: Path) -> None:
    result = run(TASK, _file(tmp_path, ms.tagged_jpeg()))
    json.dumps(result)
    assert (result["make"], result["model"], result["lens"]) == (ms.MAKE, ms.MODEL, ms.LENS)
    assert result["exposure_time"] == "1/250" and result["exposure_time_s"] == 0.004
    assert (result["f_number"], result["iso"], result["focal_length"]) == (2.8, 400, 35.0)
    assert result["focal_length_35mm"] == 53
    assert result["captured_at"] == "2024-06-01T10:20:30+02:00"
    lat = 48 + 51 / 60 + 29.64 / 3600
    lon = 2 + 17 / 60 + 40.2 / 3600
    assert result["gps"] == {"latitude": round(lat, 6), "longitude": round(lon, 6),
                             "altitude": 35.5}
    assert result["has_gps"] is True and result["orientation"] == 1
    assert result["copyright"] == ms.COPYRIGHT and result["artist"] == ms.ARTIST
    assert result["icc_profile"] == "sRGB built-in"
    assert result["title"] == "Pont Neuf" and result["keywords"] == ["bridge", "river"]
    assert result["location"] == {"city": "Paris", "sublocation": "Ile de la Cite",
                                  "country": "France", "country_code": "FR"}
    assert result["iptc"]["copyright_notice"] == ms.COPYRIGHT
    assert result["iptc"]["by_line"] == [ms.ARTIST]
    assert result["xmp"]["dc:rights"] == ms.COPYRIGHT
    assert result["xmp"]["dc:creator"] == [ms.ARTIST]
    assert result["sources"] == {"exif": True, "gps_ifd": True, "xmp": True, "iptc": True,
                                 "icc": True}
    assert "exif" not in result and "stripped" not in result and "warnings" not in result
    info = registry.get(TASK).info_of(result)["image_metadata"]
    assert info["gps"] == result["gps"] and info["copyright"] == ms.COPYRIGHT
    assert info["make"] == ms.MAKE and "iptc" not in info and "xmp" not in info


def test_details_name_every_exif_tag(tmp_path: Path) -> None:
    result = run(TASK, _file(tmp_path, ms.tagged_jpeg()), {"details": True})
    exif = result["exif"]
    assert exif["Make"] == ms.MAKE and exif["LensModel"] == ms.LENS
    assert exif["GPSLatitude"] == [48.0, 51.0, 29.64] and exif["GPSLatitudeRef"] == "N"
    json.dumps(exif)


def test_orientation_and_southern_western_coordinates(tmp_path: Path) -> None:
    ex = ms.exif(orientation=6)
    gps = ex.get_ifd(0x8825)
    gps[1], gps[3], gps[5] = "S", "W", b"\x01"
    buf = io.BytesIO()
    ms.picture().save(buf, format="JPEG", exif=ex)
    result = run(TASK, _file(tmp_path, buf.getvalue()))
    assert result["orientation"] == 6
    assert result["gps"]["latitude"] < 0 and result["gps"]["longitude"] < 0
    assert result["gps"]["altitude"] == -35.5


def test_a_file_without_metadata(tmp_path: Path) -> None:
    buf = io.BytesIO()
    ms.picture().save(buf, format="PNG")
    result = run(TASK, _file(tmp_path, buf.getvalue(), "plain.png"), {"strip": True})
    assert result["has_gps"] is False and result["gps"] is None and result["copyright"] is None
    assert result["format"] == "PNG" and result["iptc"] is None and result["xmp"] is None
    assert result["stripped"] == {"output": None, "removed": [],
                                  "reason": "no location metadata to remove"}
    assert not any((tmp_path / "work-plain.png").iterdir())  # nothing to remove: nothing written
    assert registry.get(TASK).info_of(result) == {"image_metadata": {"has_gps": False}}


def test_rule_properties(tmp_path: Path) -> None:
    tagged = run(TASK, _file(tmp_path, ms.tagged_jpeg()))
    assert rule_holds(TASK, "has GPS is yes", tagged)
    assert not rule_holds(TASK, "has GPS is no", tagged)
    assert rule_holds(TASK, "copyright contains 'ana lima'", tagged)
    assert rule_holds(TASK, "has copyright is yes", tagged)
    assert rule_holds(TASK, "camera make is FUJIFILM", tagged)
    assert rule_holds(TASK, "ISO is larger than 200", tagged)
    buf = io.BytesIO()
    ms.picture().save(buf, format="JPEG", exif=Image.Exif())
    plain = run(TASK, _file(tmp_path, buf.getvalue(), "plain.jpg"))
    assert rule_holds(TASK, "has GPS is no", plain)
    assert rule_holds(TASK, "copyright does not contain 'Getty'", plain)
    assert not rule_holds(TASK, "copyright contains 'Getty'", plain)
    assert not rule_holds(TASK, "ISO is larger than 0", plain)  # unknown: conditions are false


def test_redact_gps(tmp_path: Path) -> None:
    result = run(TASK, _file(tmp_path, ms.tagged_jpeg()), {"redact_gps": True, "details": True})
    assert result["gps"] is None and result["has_gps"] is True
    assert not any(k.startswith("exif:GPS") for k in result["xmp"])
    assert not any(k.startswith("GPS") for k in result["exif"])
    assert "gps" not in registry.get(TASK).info_of(result)["image_metadata"]


def _reread(data: bytes, tmp_path: Path, name: str) -> dict[str, object]:
    return run(TASK, _file(tmp_path, data, name), {"details": True})


def test_strip_jpeg_is_lossless_and_removes_every_location(tmp_path: Path) -> None:
    original = ms.tagged_jpeg()
    inp = _file(tmp_path, original)
    result = run(TASK, inp, {"strip": True})
    stripped = result["stripped"]
    assert stripped["output"] == "stripped.jpg" and stripped["lossless"] is True
    assert "exif GPS IFD (7 tags)" in stripped["removed"]
    assert {"iptc 2:90 city", "iptc 2:101 country", "xmp exif:GPSLatitude",
            "xmp photoshop:City"} <= set(stripped["removed"])
    assert inp.workdir is not None
    data = (inp.workdir / "stripped.jpg").read_bytes()
    assert stripped["bytes"] == len(data)
    assert np.array_equal(_pixels(data), _pixels(original))  # the same entropy-coded data
    assert data[data.index(b"\xff\xda"):] == original[original.index(b"\xff\xda"):]
    again = _reread(data, tmp_path, "again.jpg")
    assert again["has_gps"] is False and again["gps"] is None and again["location"] is None
    exif = again["exif"]
    assert isinstance(exif, dict) and not any(k.startswith("GPS") for k in exif)
    assert again["copyright"] == ms.COPYRIGHT and again["artist"] == ms.ARTIST
    assert again["make"] == ms.MAKE and again["lens"] == ms.LENS
    assert again["captured_at"] == "2024-06-01T10:20:30+02:00"
    assert again["icc_profile"] == "sRGB built-in" and again["keywords"] == ["bridge", "river"]
    xmp = again["xmp"]
    assert isinstance(xmp, dict) and xmp["dc:rights"] == ms.COPYRIGHT
    assert not {"photoshop:City", "exif:GPSLatitude", "Iptc4xmpCore:Location"} & set(xmp)
    assert b"Paris" not in data and b"France" not in data and b"48,51" not in data
    # The other EXIF tags read back byte for byte the same.
    full = _reread(original, tmp_path, "orig.jpg")["exif"]
    assert isinstance(full, dict)
    assert {k: v for k, v in full.items() if not k.startswith("GPS")} == exif


def test_strip_cuts_what_follows_the_first_image(tmp_path: Path) -> None:
    """A second frame (MPO) or an appended video may carry its own location: it goes."""
    first = ms.tagged_jpeg()
    second = ms.tagged_jpeg(ms.picture((64, 48)))
    inp = _file(tmp_path, first + second)
    result = run(TASK, inp, {"strip": True})
    assert any("bytes after the image" in r for r in result["stripped"]["removed"])
    assert inp.workdir is not None
    data = (inp.workdir / "stripped.jpg").read_bytes()
    assert data.endswith(b"\xff\xd9") and data.count(b"\xff\xd8\xff") == 1
    assert np.array_equal(_pixels(data), _pixels(first))


def test_strip_png_with_a_late_exif_chunk(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", ms.XMP, zip=True)
    info.add_text("Raw profile type exif", "\nexif\n  4\n00000000\n")
    buf = io.BytesIO()
    ms.picture().save(buf, format="PNG", pnginfo=info)
    png = buf.getvalue()
    exif_body = ms.exif().tobytes()[6:]  # without "Exif\0\0"
    chunk = struct.pack(">I", len(exif_body)) + b"eXIf" + exif_body
    chunk += struct.pack(">I", __import__("zlib").crc32(b"eXIf" + exif_body))
    iend = png.rindex(b"IEND") - 4
    late = png[:iend] + chunk + png[iend:]  # eXIf after IDAT: Pillow sees it only after a decode
    read = run(TASK, _file(tmp_path, late, "late.png"))
    assert read["has_gps"] is True and read["make"] == ms.MAKE
    assert read["location"]["city"] == "Paris"  # from the compressed XMP chunk
    inp = _file(tmp_path, late, "strip.png")
    result = run(TASK, inp, {"strip": True})
    assert result["stripped"]["output"] == "stripped.png"
    assert "Raw profile type exif text chunk" in result["stripped"]["removed"]
    assert inp.workdir is not None
    data = (inp.workdir / "stripped.png").read_bytes()
    assert np.array_equal(_pixels(data), _pixels(late))
    again = _reread(data, tmp_path, "again.png")
    assert again["has_gps"] is False and again["location"] is None
    assert again["make"] == ms.MAKE and again["copyright"] == ms.COPYRIGHT


def test_strip_webp(tmp_path: Path) -> None:
    buf = io.BytesIO()
    ms.picture().save(buf, format="WEBP", lossless=True, exif=ms.exif(), xmp=ms.XMP.encode())
    inp = _file(tmp_path, buf.getvalue(), "photo.webp")
    before = run(TASK, inp, {"strip": True})
    assert before["has_gps"] is True and before["location"]["country"] == "France"
    assert before["stripped"]["output"] == "stripped.webp"
    assert inp.workdir is not None
    data = (inp.workdir / "stripped.webp").read_bytes()
    assert np.array_equal(_pixels(data), _pixels(buf.getvalue()))
    again = _reread(data, tmp_path, "again.webp")
    assert again["has_gps"] is False and again["location"] is None
    assert again["model"] == ms.MODEL


def test_strip_other_formats_says_so(tmp_path: Path) -> None:
    if not features.check("avif"):
        pytest.skip("Pillow without AVIF")
    buf = io.BytesIO()
    ms.picture().save(buf, format="AVIF", exif=ms.exif(), xmp=ms.XMP.encode())
    result = run(TASK, _file(tmp_path, buf.getvalue(), "photo.avif"), {"strip": True})
    assert result["has_gps"] is True and result["make"] == ms.MAKE  # read: yes
    assert result["location"]["city"] == "Paris"
    assert result["stripped"]["output"] is None and "not AVIF" in result["stripped"]["reason"]


def test_xmp_with_entities_is_refused(tmp_path: Path) -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            "&b;</x:xmpmeta>")
    buf = io.BytesIO()
    ms.picture().save(buf, format="JPEG", xmp=bomb.encode())
    inp = _file(tmp_path, buf.getvalue())
    result = run(TASK, inp, {"strip": True})
    assert result["xmp"] is None
    assert any("xmp: refused" in w for w in result["warnings"])
    assert result["stripped"]["removed"] == ["xmp (unreadable)", "xmp packet"]


def test_strip_xmp_keeps_the_packet_length() -> None:
    packet = ms.XMP.encode()
    out, removed = em.strip_xmp(packet)
    assert out is not None and len(out) == len(packet) and removed
    assert em.parse_xmp(out)["dc:title"] == "Pont Neuf"
    assert em.strip_xmp(out) == (out, [])  # nothing left to remove


def test_corrupt_files_are_permanent_errors(tmp_path: Path) -> None:
    with pytest.raises(ProcessorError) as exc:
        run(TASK, _file(tmp_path, b"not an image at all", "x.jpg"))
    assert exc.value.permanent
    with pytest.raises(ProcessorError) as exc:
        run(TASK, TaskInput(properties={}))
    assert exc.value.permanent
    broken = bytearray(ms.tagged_jpeg())
    at = broken.index(b"Exif\x00\x00") + 6
    broken[at:at + 2] = b"XX"  # EXIF byte order destroyed: reported, not fatal
    inp = _file(tmp_path, bytes(broken), "broken.jpg")
    result = run(TASK, inp, {"strip": True})
    assert result["make"] is None and result["copyright"] == ms.COPYRIGHT  # IPTC/XMP still read
    # An EXIF block that cannot be walked cannot be cleaned: the copy goes without it.
    assert "exif segment (unreadable)" in result["stripped"]["removed"]
    assert inp.workdir is not None
    assert b"Exif\x00\x00" not in (inp.workdir / "stripped.jpg").read_bytes()
    with pytest.raises(ValueError):
        em.blank_gps(bytearray(b"XX\x00\x2a\x00\x00\x00\x08"))
    with pytest.raises(ValueError):
        em.blank_gps(bytearray(b"II\x2a\x00\xff\x00\x00\x00"))  # IFD0 past the end
