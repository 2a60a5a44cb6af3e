"""Pictures carrying camera metadata, made here (no sample file with GPS ships): EXIF (IFD0, the
Exif IFD, a GPS IFD), an XMP packet, an IPTC-IIM block in a Photoshop APP13 segment and an sRGB
ICC profile. Used by the extract-metadata tests and ``benchmarks/metadata.py``."""

from __future__ import annotations

import io
import struct

from PIL import Image, ImageCms
from PIL.TiffImagePlugin import IFDRational

MAKE, MODEL, LENS = "FUJIFILM", "X-T4", "XF35mmF1.4 R"
ARTIST, COPYRIGHT = "Ana Lima", "(c) 2024 Ana Lima, all rights reserved"
CAPTURED = "2024:06:01 10:20:30"
LAT, LON, ALT = (48, 51, 29.64), (2, 17, 40.2), 35.5  # Paris, 35.5 m

XMP = f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:Iptc4xmpCore="http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/"
    xmlns:xmpRights="http://ns.adobe.com/xap/1.0/rights/"
    photoshop:City="Paris" photoshop:Country="France"
    exif:GPSLatitude="48,51.494N" exif:GPSLongitude="2,17.67E"
    Iptc4xmpCore:CountryCode="FR" xmpRights:Marked="True">
   <dc:creator><rdf:Seq><rdf:li>{ARTIST}</rdf:li></rdf:Seq></dc:creator>
   <dc:rights><rdf:Alt><rdf:li xml:lang="x-default">{COPYRIGHT}</rdf:li></rdf:Alt></dc:rights>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Pont Neuf</rdf:li></rdf:Alt></dc:title>
   <dc:subject><rdf:Bag><rdf:li>bridge</rdf:li><rdf:li>river</rdf:li></rdf:Bag></dc:subject>
   <Iptc4xmpCore:Location>Pont Neuf</Iptc4xmpCore:Location>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""


def _rational(value: float, den: int = 100) -> IFDRational:
    return IFDRational(round(value * den), den)


def exif(*, gps: bool = True, orientation: int = 1) -> Image.Exif:
    ex = Image.Exif()
    ex[0x010F] = MAKE
    ex[0x0110] = MODEL
    ex[0x0112] = orientation
    ex[0x013B] = ARTIST
    ex[0x8298] = COPYRIGHT
    ex[0x0132] = CAPTURED
    sub = ex.get_ifd(0x8769)
    sub[0x829A] = IFDRational(1, 250)  # ExposureTime
    sub[0x829D] = IFDRational(28, 10)  # FNumber
    sub[0x8827] = 400  # ISO
    sub[0x9003] = CAPTURED  # DateTimeOriginal
    sub[0x9011] = "+02:00"  # OffsetTimeOriginal
    sub[0x920A] = IFDRational(35, 1)  # FocalLength
    sub[0xA405] = 53  # FocalLengthIn35mmFilm
    sub[0xA433] = "FUJIFILM"
    sub[0xA434] = LENS
    if gps:
        g = ex.get_ifd(0x8825)
        g[0] = b"\x02\x03\x00\x00"
        g[1] = "N"
        g[2] = tuple(_rational(v) for v in LAT)
        g[3] = "E"
        g[4] = tuple(_rational(v) for v in LON)
        g[5] = b"\x00"
        g[6] = _rational(ALT, 10)
    return ex


def iptc_block(datasets: list[tuple[int, int, bytes]]) -> bytes:
    """An IPTC-IIM block (``1C rec ds len data`` per dataset), UTF-8 declared (1:90)."""
    out = b"\x1c\x01\x5a\x00\x03\x1b\x25\x47"  # 1:90 coded character set = ESC % G (UTF-8)
    for rec, ds, data in datasets:
        out += struct.pack(">BBBH", 0x1C, rec, ds, len(data)) + data
    return out


IPTC = iptc_block([
    (2, 80, ARTIST.encode()),  # By-line
    (2, 116, COPYRIGHT.encode()),  # Copyright Notice
    (2, 25, b"bridge"), (2, 25, b"river"),  # Keywords
    (2, 90, b"Paris"),  # City
    (2, 92, b"Ile de la Cite"),  # Sub-location
    (2, 101, b"France"),  # Country
    (2, 105, b"Pont Neuf"),  # Headline
])


def app13(iim: bytes) -> bytes:
    """A JPEG APP13 segment: Photoshop 3.0 image resources with IPTC-IIM (resource 0x0404)."""
    data = iim + (b"\x00" if len(iim) % 2 else b"")
    body = b"Photoshop 3.0\x00" + b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00"
    body += struct.pack(">I", len(iim)) + data
    return b"\xff\xed" + struct.pack(">H", len(body) + 2) + body


def insert_after_app_segments(jpeg: bytes, segment: bytes) -> bytes:
    """``segment`` put after the APPn segments that follow SOI."""
    pos = 2
    while jpeg[pos] == 0xFF and 0xE0 <= jpeg[pos + 1] <= 0xEF:
        pos += 2 + struct.unpack(">H", jpeg[pos + 2:pos + 4])[0]
    return jpeg[:pos] + segment + jpeg[pos:]


def srgb_icc() -> bytes:
    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def picture(size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A picture with some texture (gradient + pattern), so JPEG sizes are realistic."""
    w, h = size
    base = Image.linear_gradient("L").resize((w, h))
    return Image.merge("RGB", (base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                               Image.effect_noise((w, h), 40)))


def tagged_jpeg(img: Image.Image | None = None, *, gps: bool = True, orientation: int = 1,
                quality: int = 90) -> bytes:
    """A JPEG with EXIF (GPS unless ``gps=False``), XMP, ICC and IPTC."""
    buf = io.BytesIO()
    (img or picture()).save(buf, format="JPEG", quality=quality,
                            exif=exif(gps=gps, orientation=orientation),
                            xmp=XMP.encode(), icc_profile=srgb_icc())
    return insert_after_app_segments(buf.getvalue(), app13(IPTC))
