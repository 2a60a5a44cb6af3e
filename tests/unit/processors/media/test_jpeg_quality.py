"""The JPEG quality estimate from quantisation tables (shared by remove-artifacts and
analyze-quality), on files Pillow (libjpeg-turbo) saved at known qualities."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from processors.media import jpeg_quality


def _picture() -> Image.Image:
    return Image.merge("RGB", [Image.effect_noise((48, 40), s) for s in (20, 40, 60)])


def _jpeg(img: Image.Image, quality: int, subsampling: int = 2) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


@pytest.mark.parametrize("subsampling,name", [(2, "4:2:0"), (1, "4:2:2"), (0, "4:4:4")])
def test_every_quality_is_read_exactly(subsampling: int, name: str) -> None:
    img = _picture()
    for quality in range(10, 101):
        est = jpeg_quality.estimate(_jpeg(img, quality, subsampling))
        assert est is not None
        assert (est.quality, est.exact, est.distance) == (quality, True, 0.0), quality
        assert est.subsampling == name


def test_low_qualities_and_grey_pictures() -> None:
    grey = _picture().convert("L")
    for quality in (1, 2, 5, 9, 50, 75, 95):
        est = jpeg_quality.estimate(_jpeg(grey, quality))
        assert est is not None and est.quality == quality and est.exact
        assert est.subsampling is None and set(est.tables or {}) == {0}


def test_sources_path_stream_and_opened_image(tmp_path: Path) -> None:
    data = _jpeg(_picture(), 85)
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    for src in (path, str(path), data, io.BytesIO(data)):
        est = jpeg_quality.estimate(src)
        assert est is not None and est.quality == 85
    with Image.open(path) as im:
        found = jpeg_quality.from_image(im)
        assert found is not None and found.quality == 85
        assert found.as_dict() == {"quality": 85, "exact": True, "distance": 0.0,
                                   "subsampling": "4:2:0"}
        assert jpeg_quality.from_image(im.convert("RGB")) is None  # decoded pixels: no tables


def test_not_a_jpeg() -> None:
    buf = io.BytesIO()
    _picture().save(buf, format="PNG")
    assert jpeg_quality.estimate(buf.getvalue()) is None
    assert jpeg_quality.estimate(b"\xff\xd8\xff garbage") is None
    assert jpeg_quality.estimate(b"") is None


def test_custom_tables_get_the_nearest_quality() -> None:
    """Tables that are no libjpeg quality (a camera's): the nearest, not exact."""
    std = jpeg_quality.scaled_table(jpeg_quality.STD_LUMINANCE, 80)
    custom = [max(1, v + (1 if i % 3 == 0 else 0)) for i, v in enumerate(std)]
    chroma = list(jpeg_quality.scaled_table(jpeg_quality.STD_CHROMINANCE, 80))
    buf = io.BytesIO()
    _picture().save(buf, format="JPEG", qtables={0: custom, 1: chroma})
    est = jpeg_quality.estimate(buf.getvalue())
    assert est is not None and not est.exact
    assert 78 <= est.quality <= 80 and 0 < est.distance < 0.1
    # remove-artifacts re-applies exactly these tables: Pillow writes them back unchanged.
    again = io.BytesIO()
    _picture().save(again, format="JPEG", qtables=dict(est.tables or {}),
                    subsampling=est.pillow_subsampling)
    back = jpeg_quality.estimate(again.getvalue())
    assert back is not None and back.tables == est.tables


def test_scaling_matches_libjpeg() -> None:
    assert jpeg_quality.scale_factor(50) == 100 and jpeg_quality.scale_factor(10) == 500
    assert jpeg_quality.scale_factor(100) == 0
    assert set(jpeg_quality.scaled_table(jpeg_quality.STD_LUMINANCE, 100)) == {1}
    assert jpeg_quality.scaled_table(jpeg_quality.STD_LUMINANCE, 50) == jpeg_quality.STD_LUMINANCE
    assert max(jpeg_quality.scaled_table(jpeg_quality.STD_CHROMINANCE, 1)) == 255
