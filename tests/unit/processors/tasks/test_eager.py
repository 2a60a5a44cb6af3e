"""eager: renditions from one decode, written into the workdir (where they become derived
objects), with the geometry of every fit mode and the formats Pillow can write here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from PIL import Image, features
from pydantic import ValidationError

from processors import registry
from processors.media import imaging
from processors.registry import ProcessorError, TaskInput
from processors.tasks import eager
from tests.support.processors import run

TASK = "eager"


def _source(tmp_path: Path, size: tuple[int, int] = (1600, 1200), fmt: str = "JPEG",
            **save: Any) -> TaskInput:
    w, h = size
    grad = Image.linear_gradient("L").resize(size)
    img = Image.merge("RGB", (grad, grad.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                              Image.new("L", size, 90)))
    path = tmp_path / f"src.{fmt.lower()}"
    img.save(path, format=fmt, **save)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return TaskInput(properties={"width": w, "height": h}, path=path, workdir=work)


def test_three_renditions_from_one_draft_decode(tmp_path: Path) -> None:
    inp = _source(tmp_path)
    params = {"renditions": [
        {"name": "large", "width": 800, "format": "webp"},
        {"name": "square", "width": 300, "height": 300, "fit": "cover", "format": "jpeg",
         "quality": 70},
        {"name": "thumb", "width": 100, "height": 100, "fit": "contain", "format": "png"},
    ]}
    with mock.patch.object(imaging, "decode_with_info", wraps=imaging.decode_with_info) as dec:
        result = run(TASK, inp, params)
    assert dec.call_count == 1  # ONE decode for every rendition
    assert dec.call_args.args[1] == 800  # at 1/2 scale: the largest rendition needs 800 px
    assert result["decoded"] == {"width": 800, "height": 600}
    json.dumps(result)
    by = {r["name"]: r for r in result["renditions"]}
    assert (by["large"]["width"], by["large"]["height"], by["large"]["file"]) == (
        800, 600, "large.webp")
    assert (by["square"]["width"], by["square"]["height"]) == (300, 300)
    assert by["square"]["quality"] == 70 and by["thumb"]["quality"] is None
    assert (by["thumb"]["width"], by["thumb"]["height"]) == (100, 75)
    assert inp.workdir is not None
    assert sorted(p.name for p in inp.workdir.iterdir()) == ["large.webp", "square.jpg",
                                                            "thumb.png"]
    for r in result["renditions"]:
        path = inp.workdir / r["file"]
        assert r["bytes"] == path.stat().st_size > 0
        with Image.open(path) as im:
            assert im.size == (r["width"], r["height"])
            assert im.format == {"webp": "WEBP", "jpeg": "JPEG", "png": "PNG"}[r["format"]]


@pytest.mark.parametrize("fit,box,expected", [
    ("contain", (400, 400), (400, 300)),
    ("scale-down", (4000, 4000), (1600, 1200)),  # never larger than the source
    ("contain", (4000, 4000), (4000, 3000)),  # contain scales up
    ("cover", (400, 400), (400, 400)),
    ("fill", (400, 100), (400, 100)),
])
def test_fit_modes(fit: str, box: tuple[int, int], expected: tuple[int, int]) -> None:
    r = eager.Rendition(name="x", width=box[0], height=box[1], fit=fit)  # type: ignore[arg-type]
    size, _ = eager.plan(r, (1600, 1200))
    assert size == expected


def test_cover_gravity_and_crop() -> None:
    full = (1600, 1200)
    centre = eager.Rendition(name="c", width=100, height=100, fit="cover")
    west = eager.Rendition(name="w", width=100, height=100, fit="cover", gravity="west")
    east = eager.Rendition(name="e", width=100, height=100, fit="cover", gravity="east")
    assert eager.plan(centre, full)[1] == (200.0, 0.0, 1400.0, 1200.0)
    assert eager.plan(west, full)[1] == (0.0, 0.0, 1200.0, 1200.0)
    assert eager.plan(east, full)[1] == (400.0, 0.0, 1600.0, 1200.0)
    cropped = eager.Rendition(name="k", width=200,
                              crop=eager.Crop(x=0.5, y=0.5, width=0.5, height=0.5))
    size, box = eager.plan(cropped, full)
    assert size == (200, 150) and box == (800.0, 600.0, 1600.0, 1200.0)
    # A crop of a quarter of the width needs 4x the pixels per output pixel.
    small_crop = eager.Rendition(name="z", width=100,
                                 crop=eager.Crop(x=0.0, y=0.0, width=0.25, height=0.25))
    assert eager.needed_scale([small_crop], full) == pytest.approx(0.25)


def test_crop_pixels_come_from_the_right_place(tmp_path: Path) -> None:
    inp = _source(tmp_path, fmt="PNG")
    result = run(TASK, inp, {"renditions": [
        {"name": "right", "width": 100, "format": "png",
         "crop": {"x": 0.75, "y": 0.0, "width": 0.25, "height": 1.0}}]})
    assert inp.workdir is not None and inp.path is not None
    with Image.open(inp.workdir / "right.png") as im, Image.open(inp.path) as src:
        out = np.asarray(im.convert("RGB"), np.float32)
        ref = np.asarray(src.crop((1200, 0, 1600, 1200)).resize(im.size), np.float32)
    assert result["renditions"][0]["width"] == 100
    assert np.abs(out - ref).mean() < 2.0
    assert result["decoded"] == {"width": 1600, "height": 1200}  # PNG: full decode


def test_draft_side() -> None:
    assert eager.draft_side(4000, 0.2) == 1000  # 1/4: 1000 >= 800
    assert eager.draft_side(4000, 0.4) == 2000  # 1/2
    assert eager.draft_side(4000, 0.1) == 500  # 1/8
    assert eager.draft_side(4000, 0.6) is None  # full size
    assert eager.draft_side(4000, 0.125) == 500


@pytest.mark.skipif(not features.check("avif"), reason="Pillow without AVIF")
def test_avif_when_pillow_writes_it(tmp_path: Path) -> None:
    inp = _source(tmp_path)
    result = run(TASK, inp, {"renditions": [{"name": "a", "width": 200, "format": "avif"}]})
    assert inp.workdir is not None
    with Image.open(inp.workdir / "a.avif") as im:
        assert im.format == "AVIF" and im.size == (200, 150)
    assert result["renditions"][0]["quality"] == 60


def test_avif_refused_at_validation_without_libavif() -> None:
    proc = registry.get(TASK)
    with mock.patch.object(eager.features, "check", return_value=False), \
            pytest.raises(ValidationError, match="AVIF renditions need Pillow built with libavif"):
        proc.parse_params({"renditions": [{"name": "a", "width": 10, "format": "avif"}]})


def test_params_are_checked() -> None:
    proc = registry.get(TASK)
    bad: list[dict[str, Any]] = [
        {},
        {"renditions": []},
        {"renditions": [{"name": "a"}]},  # no size
        {"renditions": [{"name": "../x", "width": 10}]},
        {"renditions": [{"name": "a", "width": 10}, {"name": "a", "width": 20}]},
        {"renditions": [{"name": "a", "width": 10, "format": "gif"}]},
        {"renditions": [{"name": "a", "width": 10, "fit": "stretch"}]},
        {"renditions": [{"name": "a", "width": 10, "crop": {"x": 0.8, "width": 0.5}}]},
        {"renditions": [{"name": "a", "width": 0}]},
    ]
    for raw in bad:
        with pytest.raises(ValidationError):
            proc.parse_params(raw)
    ok = proc.parse_params({"renditions": [{"name": "a.webp", "width": 10}]})
    assert ok.renditions[0].file_name == "a.webp"  # type: ignore[attr-defined]


def test_transparency_is_kept_except_in_jpeg(tmp_path: Path) -> None:
    img = Image.new("RGBA", (200, 100), (255, 0, 0, 0))
    img.paste((0, 0, 255, 255), (0, 0, 100, 100))
    path = tmp_path / "alpha.png"
    img.save(path)
    work = tmp_path / "w"
    work.mkdir()
    run(TASK, TaskInput(properties={}, path=path, workdir=work), {"renditions": [
        {"name": "p", "width": 100, "format": "png"},
        {"name": "j", "width": 100, "format": "jpeg"}]})
    with Image.open(work / "p.png") as im:
        assert im.mode == "RGBA" and im.getpixel((90, 10))[3] == 0  # type: ignore[index]
    with Image.open(work / "j.jpg") as im:
        r, g, b = im.convert("RGB").getpixel((90, 10))  # type: ignore[misc]
        assert min(r, g, b) > 240  # transparent -> white


def test_bad_input(tmp_path: Path) -> None:
    params = {"renditions": [{"name": "a", "width": 10}]}
    with pytest.raises(ProcessorError):
        run(TASK, TaskInput(properties={}, workdir=tmp_path), params)
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(ProcessorError) as exc:
        run(TASK, TaskInput(properties={}, path=path, workdir=tmp_path), params)
    assert exc.value.permanent
    with pytest.raises(ProcessorError):
        run(TASK, TaskInput(properties={}, path=path), params)  # no workdir
