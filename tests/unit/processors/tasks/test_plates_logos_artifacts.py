"""Licence plates, logos and JPEG artifacts on real pictures.

Pictures: scikit-image's bundled photos. Plates are synthetic (a white 4.7:1 plate with a black
frame and TrueType type, pasted into a photo): the cascade was trained on real plates, but no
photo of a real plate ships here. Logos are synthetic too (drawn shapes and text, pasted scaled
and rotated); JPEG artifacts are real (Pillow at quality 10, PSNR against the clean photo).
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydantic import ValidationError

from agents.policy.rules import make_vocabulary, parse_rule
from processors import registry
from processors.models import plates
from processors.registry import ProcessorError, TaskInput
from processors.tasks import blur_plates, extract_logo, recognize_plate, remove_artifacts
from tests.support.processors import image_input, rule_holds, run

skdata = pytest.importorskip("skimage.data", reason="scikit-image (dev dependency) not installed")

PLATE_TEXT = "AB12 CDE"
TASKS = ("recognize-plate", "blur-plates", "extract-logo", "remove-artifacts")


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {n: _photo(n) for n in ("astronaut", "coffee", "chelsea", "rocket", "camera")}








def font(size: int) -> ImageFont.FreeTypeFont:
    f = ImageFont.load_default(size=size)
    if not isinstance(f, ImageFont.FreeTypeFont):
        pytest.skip("Pillow without FreeType: no TrueType default font")
    return f


def make_plate(text: str = PLATE_TEXT, height: int = 40) -> Image.Image:
    """A white 4.7:1 plate, black frame, black type centred."""
    w = round(height * 4.7)
    im = Image.new("RGB", (w, height), (250, 250, 250))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, w - 1, height - 1), outline=(10, 10, 10), width=max(2, height // 20))
    f = font(round(height * 0.72))
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=f)
    draw.text(((w - (x1 - x0)) / 2 - x0, (height - (y1 - y0)) / 2 - y0), text, font=f,
              fill=(15, 15, 15))
    return im


def with_plate(base: Image.Image, xy: tuple[int, int], height: int = 40,
               text: str = PLATE_TEXT) -> tuple[Image.Image, tuple[int, int, int, int]]:
    plate = make_plate(text, height)
    img = base.copy()
    img.paste(plate, xy)
    return img, (xy[0], xy[1], xy[0] + plate.width, xy[1] + plate.height)


def iou(a: list[float] | tuple[float, ...], b: list[float] | tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


# ---------------------------------------------------------------------------------- registry
def test_registration() -> None:
    specs = {
        "recognize-plate": (recognize_plate.MAX_SIDE, {"plate_characters", "plate_content"}),
        "blur-plates": (None, set()),
        "extract-logo": (extract_logo.MAX_SIDE, {"brand", "brand_count"}),
        "remove-artifacts": (None, set()),
    }
    for name, (max_side, props) in specs.items():
        proc = registry.get(name)
        assert proc.version and proc.description
        assert proc.media == frozenset({"image"})
        assert proc.input == registry.InputSpec(kind="image", max_side=max_side, mode="RGB")
        assert set(proc.rule_properties) == props
        make_vocabulary(proc.rule_properties)  # phrases do not clash with the base vocabulary
    assert recognize_plate.MAX_SIDE == 2048 and extract_logo.MAX_SIDE == 1280


def test_plate_rule_phrases_parse() -> None:
    vocab = make_vocabulary(registry.get("recognize-plate").rule_properties)
    cases = {
        "number plate content does not start with 'C'": ("plate_content", "not_starts_with"),
        "number of characters in number plate is 7": ("plate_characters", "eq"),
        "number of characters is smaller than 5": ("plate_characters", "lt"),
        "plate characters >= 5": ("plate_characters", "ge"),
        "number plate length is at most 8": ("plate_characters", "le"),
        "plate content contains 'AB'": ("plate_content", "contains"),
        "number plate is 'AB12CDE'": ("plate_content", "eq"),
        "plate ends with 'CDE'": ("plate_content", "ends_with"),
    }
    for phrase, (prop, op) in cases.items():
        rule = parse_rule(phrase, vocab)
        assert (rule.property, rule.op) == (prop, op), phrase  # type: ignore[union-attr]


def test_validation_config_with_plate_and_logo_rules(tmp_path: Path) -> None:
    from agents.policy.postprocess import parse_config

    text = f"""
postprocesses:
  - name: plates
    task: recognize-plate
    mode: sync
    validation:
      - "number plate content does not start with 'C' => notice"
      - rule: "number of characters in number plate is smaller than 5"
        action: refuse
  - name: logos
    task: extract-logo
    params: {{library: "{tmp_path}"}}
    validation:
      - "brand is 'zephyr' => notice"
"""
    cfg = parse_config(text, "plates.yaml", registry.load_all())
    pp = cfg.postprocesses[0]
    props = {"width": 600, "height": 400}
    read = {"plates": [{"text": "AB12 CDE", "compact": "AB12CDE", "characters": 7,
                        "confidence": 0.99, "box": [0, 0, 10, 10]}]}
    [notice] = cfg.validate_result(pp, props, read)
    assert notice.action == "notice"
    c_plate = {"plates": [{"text": "CD12", "compact": "CD12", "characters": 4,
                           "confidence": 0.99, "box": [0, 0, 10, 10]}]}
    [refusal] = cfg.validate_result(pp, props, c_plate)
    assert refusal.action == "refuse"
    # No plate read: both properties are missing, so no rule on them holds.
    assert cfg.validate_result(pp, props, {"plates": []}) == []
    logos = cfg.postprocesses[1]
    [seen] = cfg.validate_result(logos, props, {"brands": [{"brand": "zephyr"}], "count": 1})
    assert seen.action == "notice"
    assert cfg.validate_result(logos, props, {"brands": [], "count": 0}) == []


# ------------------------------------------------------------------------------------ plates
PLATE_CASES = [("coffee", (60, 300), 40), ("astronaut", (40, 420), 30),
               ("chelsea", (150, 200), 48), ("rocket", (300, 330), 36)]


@pytest.mark.parametrize(("name", "xy", "height"), PLATE_CASES)
def test_plate_is_detected_and_read(photos: dict[str, Image.Image], name: str,
                                    xy: tuple[int, int], height: int) -> None:
    img, truth = with_plate(photos[name], xy, height)
    result = run("recognize-plate", image_input(img))
    assert result["count"] == 1, result
    [plate] = result["plates"]
    # OCR may or may not report the gap; the letters and digits are exact.
    assert plate["compact"] == "AB12CDE" and plate["text"] in (PLATE_TEXT, "AB12CDE")
    assert plate["characters"] == 7 and plate["confidence"] >= 0.9
    assert iou(plate["box"], truth) >= 0.8, (plate["box"], truth)
    assert result["detector"]["model"] == "haarcascade_russian_plate_number"
    assert result["model"] == "PP-OCRv6-small"
    assert rule_holds("recognize-plate", "number plate content does not start with 'C'", result)
    assert rule_holds("recognize-plate", "number plate content starts with 'ab'", result)
    assert rule_holds("recognize-plate", "number of characters in number plate is 7", result)
    assert not rule_holds("recognize-plate", "plate characters < 7", result)


def test_plate_text_is_normalised() -> None:
    assert recognize_plate.normalize_text(" ab-12  cdé·x ") == "AB 12 CD X"
    assert recognize_plate.characters("AB12 CDE") == 7


def test_two_plates_best_first(photos: dict[str, Image.Image]) -> None:
    img, _ = with_plate(photos["coffee"], (40, 40), 36, "KX63 WPT")
    img, _ = with_plate(img, (300, 320), 40, "CD45 FGH")
    result = run("recognize-plate", image_input(img))
    assert sorted(p["compact"] for p in result["plates"]) == ["CD45FGH", "KX63WPT"]
    confidences = [p["confidence"] for p in result["plates"]]
    assert confidences == sorted(confidences, reverse=True)
    best = result["plates"][0]["compact"]
    assert rule_holds("recognize-plate", f"number plate is '{best}'", result)


def test_plate_boxes_are_in_original_pixels(photos: dict[str, Image.Image]) -> None:
    big = photos["coffee"].resize((1200, 800), Image.Resampling.BICUBIC)
    big, truth = with_plate(big, (200, 560), 80)
    small = big.resize((600, 400), Image.Resampling.BOX)  # what the agent would hand
    result = run("recognize-plate", image_input(small, width=1200, height=800))
    [plate] = result["plates"]
    assert plate["compact"] == "AB12CDE"
    assert iou(plate["box"], truth) >= 0.8, (plate["box"], truth)


def test_no_plate_no_reading(photos: dict[str, Image.Image]) -> None:
    for img in photos.values():
        result = run("recognize-plate", image_input(img))
        assert result["plates"] == [] and result["count"] == 0
        # Missing properties: no condition on them holds, positive or negated.
        assert not rule_holds("recognize-plate",
                              "number plate content does not start with 'C'", result)
        assert not rule_holds("recognize-plate", "number of characters is smaller than 3",
                              result)


def test_detector_is_thread_safe(photos: dict[str, Image.Image]) -> None:
    img, _ = with_plate(photos["coffee"], (60, 300), 40)
    params = plates.DetectParams()
    expected = plates.detect_plates(img, params)
    results: list[list[plates.Plate]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(plates.detect_plates(img, params))
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    assert all(r == expected for r in results)


def test_merge_boxes() -> None:
    merged = plates.merge_boxes([(0, 0, 60, 20), (30, 0, 90, 22), (200, 200, 260, 220)])
    assert merged == [((0, 0, 90, 22), 2), ((200, 200, 260, 220), 1)]


# ---------------------------------------------------------------------------------- blurring
def _variance(arr: np.ndarray, box: list[int] | tuple[int, ...]) -> float:
    x0, y0, x1, y1 = box
    return float(arr[y0:y1, x0:x1].astype(np.float64).var())


@pytest.mark.parametrize("method", ["gaussian", "pixelate", "fill"])
def test_blur_plates(photos: dict[str, Image.Image], tmp_path: Path, method: str) -> None:
    img, truth = with_plate(photos["coffee"], (60, 300), 40)
    result = run("blur-plates", image_input(img, tmp_path, format="PNG"), {"method": method})
    assert result["output"] == "blurred.png" and result["format"] == "png"
    assert result["count"] == 1 and result["method"] == method
    [box] = result["boxes"]
    # The padded box holds the whole plate, frame included.
    assert box[0] <= truth[0] and box[1] <= truth[1]
    assert box[2] >= truth[2] and box[3] >= truth[3]
    assert box[2] - box[0] <= (truth[2] - truth[0]) * 1.3
    with Image.open(tmp_path / "blurred.png") as im:
        out = np.asarray(im.convert("RGB"))
    before = np.asarray(img)
    assert out.shape == before.shape
    # A mosaic keeps the contrast between its cells; smoothing and filling remove nearly all.
    drop = 0.35 if method == "pixelate" else 0.1
    assert _variance(out, truth) < drop * _variance(before, truth)
    outside = np.ones(before.shape[:2], dtype=bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert np.array_equal(out[outside], before[outside])
    # Nothing legible is left.
    assert run("recognize-plate", image_input(Image.fromarray(out)))["count"] == 0
    assert np.array_equal(np.asarray(img), before)  # the shared input image is untouched


def test_blur_plates_full_resolution_jpeg(photos: dict[str, Image.Image], tmp_path: Path) -> None:
    big = photos["rocket"].resize((1920, 1281), Image.Resampling.BICUBIC)
    big, truth = with_plate(big, (400, 900), 90)
    result = run("blur-plates", image_input(big, tmp_path, format="JPEG"))
    assert result["output"] == "blurred.jpg" and (result["width"], result["height"]) == big.size
    [box] = result["boxes"]
    assert iou(box, truth) >= 0.6
    with Image.open(tmp_path / "blurred.jpg") as im:
        assert im.format == "JPEG" and im.size == big.size
        out = np.asarray(im.convert("RGB"))
    assert _variance(out, truth) < 0.1 * _variance(np.asarray(big), truth)
    # Away from the plate only JPEG's own noise remains.
    diff = np.abs(out[:600].astype(np.int16) - np.asarray(big)[:600].astype(np.int16))
    assert float(diff.mean()) < 3.0


def test_blur_output_family(tmp_path: Path) -> None:
    p = blur_plates.BlurPlatesParams()
    assert blur_plates.output_family(p, "JPEG") == "jpeg"
    assert blur_plates.output_family(p, "MPO") == "jpeg"
    assert blur_plates.output_family(p, "WEBP") == "webp"
    assert blur_plates.output_family(p, "GIF") == "png"
    assert blur_plates.output_family(p, None) == "png"
    assert blur_plates.output_family(blur_plates.BlurPlatesParams(format="png"), "JPEG") == "png"


def test_blur_without_plates_changes_nothing(photos: dict[str, Image.Image],
                                             tmp_path: Path) -> None:
    img = photos["chelsea"]
    result = run("blur-plates", image_input(img, tmp_path, format="WEBP"), {"format": "png"})
    assert result["boxes"] == [] and result["count"] == 0
    with Image.open(tmp_path / result["output"]) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(img))


def test_blur_params_are_checked() -> None:
    proc = registry.get("blur-plates")
    for bad in ({"method": "swirl"}, {"strength": 0}, {"padding": -1}, {"format": "gif"},
                {"unknown": 1}, {"scale_factor": 1.0}):
        with pytest.raises(ValidationError):
            proc.parse_params(bad)


# ------------------------------------------------------------------------------------- logos
def zephyr_logo(size: int = 300) -> Image.Image:
    """A badge: framed rounded square, nested diamonds, a square, five pentagons, a word."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    s = size / 300
    d.rounded_rectangle((4 * s, 4 * s, 296 * s, 296 * s), radius=30 * s, fill=(250, 245, 235, 255),
                        outline=(20, 40, 120, 255), width=int(8 * s))
    d.polygon([(150 * s, 30 * s), (260 * s, 140 * s), (150 * s, 250 * s), (40 * s, 140 * s)],
              fill=(200, 30, 40, 255))
    d.polygon([(150 * s, 70 * s), (220 * s, 140 * s), (150 * s, 210 * s), (80 * s, 140 * s)],
              fill=(255, 210, 0, 255))
    d.rectangle((120 * s, 110 * s, 180 * s, 170 * s), fill=(20, 40, 120, 255))
    for i in range(5):
        d.regular_polygon((40 * s + i * 55 * s, 40 * s, 12 * s), n_sides=5, rotation=i * 13,
                          fill=(20, 120, 60, 255))
    d.text((150 * s, 270 * s), "ZEPHYR", font=font(int(40 * s)), anchor="ms",
           fill=(10, 10, 10, 255))
    return im


def krona_logo(size: int = 300) -> Image.Image:
    """An unrelated logo: a ring, a pie slice and two words, on transparency."""
    im = Image.new("RGBA", (size, int(size * 0.6)), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    s = size / 300
    d.ellipse((5 * s, 5 * s, 175 * s, 175 * s), fill=(0, 90, 170, 255))
    d.ellipse((40 * s, 40 * s, 140 * s, 140 * s), fill=(255, 255, 255, 255))
    d.pieslice((60 * s, 60 * s, 120 * s, 120 * s), 30, 300, fill=(240, 120, 0, 255))
    d.text((185 * s, 60 * s), "Krona", font=font(int(34 * s)), fill=(0, 90, 170, 255))
    d.text((185 * s, 110 * s), "GmbH", font=font(int(34 * s)), fill=(240, 120, 0, 255))
    return im


def paste_logo(base: Image.Image, logo: Image.Image, scale: float, angle: float,
               xy: tuple[int, int]) -> tuple[Image.Image, tuple[int, int, int, int]]:
    small = logo.resize((round(logo.width * scale), round(logo.height * scale)),
                        Image.Resampling.LANCZOS)
    rotated = small.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
    out = base.copy()
    out.paste(rotated, xy, rotated)
    return out, (xy[0], xy[1], xy[0] + rotated.width, xy[1] + rotated.height)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("logos")
    zephyr_logo().save(folder / "zephyr.png")
    krona_logo().save(folder / "krona.png")
    (folder / "notes.txt").write_text("not a logo")
    return folder


LOGO_CASES = [("astronaut", 0.7, 12, (120, 80)), ("coffee", 0.65, -14, (300, 60)),
              ("chelsea", 0.6, 10, (40, 20)), ("rocket", 0.8, -15, (330, 110)),
              ("camera", 0.7, 13, (200, 240))]


@pytest.mark.parametrize(("name", "scale", "angle", "xy"), LOGO_CASES)
def test_logo_is_found_where_it_was_pasted(photos: dict[str, Image.Image], library: Path,
                                           name: str, scale: float, angle: float,
                                           xy: tuple[int, int]) -> None:
    img, truth = paste_logo(photos[name], zephyr_logo(), scale, angle, xy)
    result = run("extract-logo", image_input(img), {"library": str(library)})
    assert [b["brand"] for b in result["brands"]] == ["zephyr"], result  # krona never fires
    [hit] = result["brands"]
    assert hit["inliers"] >= 20 and 0 < hit["score"] <= 1
    assert np.allclose(hit["box"], truth, atol=8), (hit["box"], truth)
    assert len(hit["polygon"]) == 4
    assert result["library_size"] == 2 and result["library_skipped"] == []
    assert rule_holds("extract-logo", "brand is 'zephyr'", result)
    assert not rule_holds("extract-logo", "brand is 'krona'", result)
    assert rule_holds("extract-logo", "number of logos is 1", result)


def test_logo_not_found_without_it(photos: dict[str, Image.Image], library: Path) -> None:
    for img in photos.values():
        result = run("extract-logo", image_input(img), {"library": str(library)})
        assert result["brands"] == [] and result["count"] == 0
        assert rule_holds("extract-logo", "brand is not 'zephyr'", result)


def test_logo_boxes_are_in_original_pixels(photos: dict[str, Image.Image], library: Path) -> None:
    img, truth = paste_logo(photos["coffee"], zephyr_logo(), 0.7, 12, (150, 60))
    small = img.resize((300, 200), Image.Resampling.BOX)
    result = run("extract-logo", image_input(small, width=600, height=400),
                 {"library": str(library)})
    [hit] = result["brands"]
    assert np.allclose(hit["box"], truth, atol=12), (hit["box"], truth)


def test_logo_orb_detector(photos: dict[str, Image.Image], library: Path) -> None:
    img, truth = paste_logo(photos["astronaut"], zephyr_logo(), 0.7, 12, (120, 80))
    result = run("extract-logo", image_input(img), {"library": str(library), "detector": "orb"})
    assert [b["brand"] for b in result["brands"]] == ["zephyr"]
    assert np.allclose(result["brands"][0]["box"], truth, atol=12)
    clean = run("extract-logo", image_input(photos["astronaut"]),
                {"library": str(library), "detector": "orb"})
    assert clean["brands"] == []


def test_logo_library_from_the_deployment_settings(photos: dict[str, Image.Image],
                                                    library: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """DARKROOM_LOGO_LIBRARY is read by agents.settings and handed in as TaskInput.settings
    (the processor reads no environment)."""
    from agents.composition import Runtime
    from agents.settings import Settings

    img, _ = paste_logo(photos["coffee"], zephyr_logo(), 0.7, 12, (150, 60))
    monkeypatch.setenv(extract_logo.ENV_LIBRARY, str(library))
    given = Runtime(Settings()).processor_settings
    assert given.logo_library == str(library)
    inp = image_input(img)
    inp.settings = given
    assert [b["brand"] for b in run("extract-logo", inp)["brands"]] == ["zephyr"]
    with pytest.raises(ProcessorError) as exc:  # the environment alone does nothing here
        run("extract-logo", image_input(img))
    assert exc.value.permanent and extract_logo.ENV_LIBRARY in str(exc.value)


def test_logo_library_cache(tmp_path: Path) -> None:
    zephyr_logo().save(tmp_path / "zephyr.png")
    first = extract_logo.load_library(tmp_path)
    assert extract_logo.load_library(tmp_path) is first  # computed once
    krona_logo().save(tmp_path / "krona.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    second = extract_logo.load_library(tmp_path)
    assert second is not first
    assert sorted(lg.brand for lg in second.logos) == ["krona", "zephyr"]
    assert second.skipped == ("broken.jpg",)
    # A rewritten file (new mtime) is noticed too.
    os.utime(tmp_path / "zephyr.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert extract_logo.load_library(tmp_path) is not second


def test_logo_library_errors(photos: dict[str, Image.Image], tmp_path: Path) -> None:
    img = photos["coffee"]
    with pytest.raises(ProcessorError) as exc:
        run("extract-logo", image_input(img), {"library": str(tmp_path / "missing")})
    assert exc.value.permanent
    with pytest.raises(ProcessorError) as exc:
        run("extract-logo", image_input(img), {"library": str(tmp_path)})  # empty folder
    assert exc.value.permanent and "no usable logo" in str(exc.value)


def test_sane_homography_rejects_degenerate_maps() -> None:
    size = (400, 300)
    pts = np.array([[10, 10], [390, 10], [390, 290], [10, 290]], dtype=np.float32)
    ok = np.array([[0.7, -0.1, 50], [0.1, 0.7, 40], [0, 0, 1]], dtype=np.float64)
    assert extract_logo.sane_homography(ok, size, pts) is not None
    collapse = np.array([[1e-4, 0, 50], [0, 1e-4, 40], [0, 0, 1]], dtype=np.float64)
    assert extract_logo.sane_homography(collapse, size, pts) is None
    behind = np.array([[1, 0, 0], [0, 1, 0], [-0.004, 0, 1]], dtype=np.float64)
    assert extract_logo.sane_homography(behind, size, pts) is None  # a corner at/behind infinity
    sliver = np.array([[1, 0, 0], [0, 0.05, 0], [0, 0, 1]], dtype=np.float64)
    assert extract_logo.sane_homography(sliver, size, pts) is None
    corner_only = pts[:1].repeat(3, axis=0) + np.array([[0, 0], [5, 0], [0, 5]], np.float32)
    assert extract_logo.sane_homography(ok, size, corner_only) is None


# ---------------------------------------------------------------------------------- artifacts
def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / mse)


def test_remove_artifacts_raises_psnr(photos: dict[str, Image.Image], tmp_path: Path) -> None:
    gains = {}
    for name, clean in photos.items():
        work = tmp_path / name
        work.mkdir()
        compressed = _jpeg(clean, 10)
        result = run("remove-artifacts", image_input(compressed, work, format="JPEG"))
        assert result["method"] == "jpeg-reapply" and result["output"] == "deblocked.png"
        assert result["params"]["estimated_quality"] == 10
        with Image.open(work / "deblocked.png") as im:
            out = np.asarray(im.convert("RGB"))
        ref = np.asarray(clean)
        before, after = psnr(ref, np.asarray(compressed)), psnr(ref, out)
        gains[name] = (round(before, 2), round(after, 2), round(after - before, 2))
    print("\nremove-artifacts PSNR (q10 -> deblocked):", gains)
    assert all(g > 0.2 for _, _, g in gains.values()), gains
    assert float(np.mean([g for _, _, g in gains.values()])) > 0.4, gains


def test_remove_artifacts_on_a_shifted_grid(photos: dict[str, Image.Image],
                                            tmp_path: Path) -> None:
    clean = photos["chelsea"]
    compressed = _jpeg(clean, 25).crop((5, 3, clean.width, clean.height))  # grid off by (3, 5)
    result = run("remove-artifacts", image_input(compressed, tmp_path), {"format": "jpeg"})
    assert result["params"]["estimated_quality"] == 25 and result["output"] == "deblocked.jpg"
    assert [p % 8 for p in result["params"]["grid_phase"]] == [3, 5]
    # MCU (16 px) edges of the cropped picture: x = 16 - 5, y = 16 - 3.
    assert remove_artifacts.grid_phase(np.asarray(compressed)) == (11, 13)
    with Image.open(tmp_path / "deblocked.jpg") as im:
        out = np.asarray(im.convert("RGB"))
    ref = np.asarray(clean.crop((5, 3, clean.width, clean.height)))
    assert psnr(ref, out) > psnr(ref, np.asarray(compressed)) + 0.2


def test_remove_artifacts_leaves_clean_pictures_alone(photos: dict[str, Image.Image],
                                                      tmp_path: Path) -> None:
    img = photos["astronaut"]
    result = run("remove-artifacts", image_input(img, tmp_path, format="PNG"))
    assert result["method"] == "none" and result["output"] is None and result["reason"]
    assert list(tmp_path.iterdir()) == []  # nothing done, nothing written
    forced = run("remove-artifacts", image_input(img, tmp_path), {"quality": 30, "passes": 4})
    assert forced["method"] == "jpeg-reapply" and forced["params"]["quality"] == 30
    assert [p.name for p in tmp_path.iterdir()] == ["deblocked.png"]


@pytest.mark.parametrize("quality", [85, 92])
def test_remove_artifacts_reads_high_qualities_from_the_tables(
        photos: dict[str, Image.Image], tmp_path: Path, quality: int) -> None:
    """The pixel ghost read these as 100; the file's quantisation tables say what they are. Above
    max_quality nothing is done and no derived file is written."""
    src = tmp_path / "photo.jpg"
    photos["coffee"].save(src, format="JPEG", quality=quality)
    work = tmp_path / "work"
    work.mkdir()
    with Image.open(src) as im:
        decoded = im.convert("RGB")
    inp = TaskInput(properties={"format": "JPEG"}, image=decoded, path=src, workdir=work)
    result = run("remove-artifacts", inp)
    assert result["params"]["estimated_quality"] == quality
    assert result["params"]["estimated_from"] == "quantisation tables"
    assert result["params"]["tables_exact"] is True
    assert result["method"] == "none" and result["output"] is None
    assert f"quality {quality} is above max_quality 70" in result["reason"]
    assert list(work.iterdir()) == []
    # Asked to work that high, it re-applies the file's own tables.
    forced = run("remove-artifacts", inp, {"max_quality": 95, "passes": 4})
    assert forced["method"] == "jpeg-reapply" and forced["params"]["quality"] == quality
    assert [p.name for p in work.iterdir()] == ["deblocked.png"]


def test_remove_artifacts_uses_the_tables_of_the_file(photos: dict[str, Image.Image],
                                                      tmp_path: Path) -> None:
    """Quality 40 with the tables: the same gain as with the pixel estimate, ~0.1 s less."""
    clean = photos["chelsea"]
    src = tmp_path / "photo.jpg"
    clean.save(src, format="JPEG", quality=40)
    with Image.open(src) as im:
        compressed = im.convert("RGB")
    work = tmp_path / "work"
    work.mkdir()
    result = run("remove-artifacts", TaskInput(properties={}, image=compressed, path=src,
                                               workdir=work))
    assert result["params"]["estimated_from"] == "quantisation tables"
    assert result["params"]["quality"] == 40 and result["method"] == "jpeg-reapply"
    with Image.open(work / "deblocked.png") as im:
        out = np.asarray(im.convert("RGB"))
    ref = np.asarray(clean)
    assert psnr(ref, out) > psnr(ref, np.asarray(compressed)) + 0.2


# --------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("task", TASKS)
def test_bad_input_is_permanent(task: str, tmp_path: Path, library: Path) -> None:
    params = {"library": str(library)} if task == "extract-logo" else None
    with pytest.raises(ProcessorError) as exc:
        run(task, TaskInput(properties={"width": 10, "height": 10}, image=None, workdir=tmp_path),
            params)
    assert exc.value.permanent
    buf = io.BytesIO()
    _photo("coffee").save(buf, format="PNG")
    truncated = Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 3]))
    with pytest.raises(ProcessorError) as exc:
        run(task, image_input(truncated, tmp_path, width=600, height=400), params)
    assert exc.value.permanent


@pytest.mark.parametrize("task", ["blur-plates", "remove-artifacts"])
def test_outputs_need_a_workdir(task: str, photos: dict[str, Image.Image]) -> None:
    with pytest.raises(ProcessorError) as exc:
        run(task, image_input(photos["coffee"]))
    assert exc.value.permanent
