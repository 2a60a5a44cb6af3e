"""analyze-quality on degraded copies of real photos (scikit-image's): every score orders the
clean picture above a mild and a mild above a strong degradation of what it measures."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from agents.policy.rules import make_vocabulary
from processors import registry
from processors.registry import ProcessorError, TaskInput
from processors.tasks import analyze_quality as aq
from tests.support.processors import rule_holds, run

skdata = pytest.importorskip("skimage.data", reason="scikit-image (dev dependency) not installed")

TASK = "analyze-quality"
#: Photos of ordinary exposure (rocket is a night scene and immunohistochemistry a bright
#: slide: no histogram measure can tell those from mis-exposed pictures; the README says so).
PHOTOS = ("astronaut", "coffee", "chelsea", "camera")

Degrade = Callable[[Image.Image, float], Image.Image]


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {n: _photo(n) for n in PHOTOS}


def _to_linear(x: np.ndarray) -> np.ndarray:
    x = x / 255
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _to_srgb(y: np.ndarray) -> np.ndarray:
    y = np.clip(y, 0, 1)
    return 255 * np.where(y <= 0.0031308, 12.92 * y, 1.055 * y ** (1 / 2.4) - 0.055)


def exposed(img: Image.Image, ev: float) -> Image.Image:
    """``ev`` stops more (or less) light, in linear light, clipped as a sensor clips."""
    lin = _to_linear(np.asarray(img, np.float64)) * 2.0**ev
    return Image.fromarray(np.round(_to_srgb(lin)).astype(np.uint8))


def noisy(img: Image.Image, sigma: float) -> Image.Image:
    rng = np.random.default_rng(7)
    a = np.asarray(img, np.float32) + rng.normal(0, sigma, np.asarray(img).shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def flattened(img: Image.Image, k: float) -> Image.Image:
    a = np.asarray(img, np.float32)
    return Image.fromarray(np.clip(a.mean() + (a - a.mean()) * k, 0, 255).astype(np.uint8))


def desaturated(img: Image.Image, k: float) -> Image.Image:
    a = np.asarray(img, np.float32)
    grey = (a @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return Image.fromarray(np.clip(grey + (a - grey) * k, 0, 255).astype(np.uint8))


def blurred(img: Image.Image, radius: float) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius))


def _score(img: Image.Image) -> dict[str, object]:
    return run(TASK, TaskInput(properties={"width": img.width, "height": img.height},
                               image=img))


FAMILIES: dict[str, tuple[str, Degrade, float, float]] = {
    "blur": ("focus", blurred, 1.0, 3.0),
    "noise": ("noise", noisy, 5.0, 15.0),
    "over-exposure": ("exposure", exposed, 1.0, 2.5),
    "under-exposure": ("exposure", exposed, -1.0, -2.5),
    "low contrast": ("contrast", flattened, 0.6, 0.3),
    "desaturation": ("saturation", desaturated, 0.5, 0.2),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_score_orders_clean_mild_strong(photos: dict[str, Image.Image],
                                             family: str) -> None:
    key, degrade, mild, strong = FAMILIES[family]
    for name, clean in photos.items():
        scores = [_score(v) for v in (clean, degrade(clean, mild), degrade(clean, strong))]
        values = [s[key] for s in scores]
        if key == "saturation" and name == "camera":
            assert values == [None, None, None]  # a grey photo has no colour to judge
            continue
        assert isinstance(values[0], float) and all(0 <= v <= 1 for v in values)  # type: ignore[operator]
        assert values[0] > values[1] > values[2], (family, name, values)
        overall = [s["quality_score"] for s in scores]
        assert overall[0] > overall[2], (family, name, overall)  # type: ignore[operator]


def _jpeg_file(img: Image.Image, quality: int, tmp_path: Path) -> TaskInput:
    path = tmp_path / f"q{quality}.jpg"
    img.save(path, format="JPEG", quality=quality)
    with Image.open(path) as im:
        decoded = im.convert("RGB")
    return TaskInput(properties={"width": img.width, "height": img.height, "format": "JPEG"},
                     image=decoded, path=path)


def test_recompressed_copies_order_jpeg_quality_and_overall(photos: dict[str, Image.Image],
                                                           tmp_path: Path) -> None:
    for name, clean in photos.items():
        results = [run(TASK, _jpeg_file(clean, q, tmp_path)) for q in (92, 50, 10)]
        assert [r["jpeg_quality"] for r in results] == [0.92, 0.5, 0.1]
        assert results[0]["jpeg"] == {"quality": 92, "exact": True, "distance": 0.0,
                                      "subsampling": "4:2:0"}
        overall = [r["quality_score"] for r in results]
        assert overall[0] > overall[1] > overall[2], (name, overall)


def test_resolution_and_non_jpeg(photos: dict[str, Image.Image]) -> None:
    img = photos["coffee"]
    small = run(TASK, TaskInput(properties={"width": 600, "height": 400}, image=img))
    large = run(TASK, TaskInput(properties={"width": 4000, "height": 3000}, image=img))
    tiny = run(TASK, TaskInput(properties={"width": 100, "height": 67}, image=img))
    assert large["resolution"] == 1.0 > small["resolution"] > tiny["resolution"]
    assert small["jpeg_quality"] is None and small["jpeg"] is None  # not a JPEG: not scored
    assert small["measures"]["megapixels"] == 0.24


def test_result_shape_rules_and_info(photos: dict[str, Image.Image]) -> None:
    result = _score(photos["chelsea"])
    json.dumps(result)
    for key in ("focus", "noise", "exposure", "contrast", "saturation", "resolution",
                "quality_score"):
        assert 0.0 <= result[key] <= 1.0  # type: ignore[operator]
    assert set(result["measures"]) >= {"blur_effect", "laplacian_variance", "noise_sigma",
                                       "mean_luminance", "clipped_highlights", "rms_contrast",
                                       "colourfulness"}
    assert rule_holds(TASK, "quality score is larger than 0.5", result)
    assert not rule_holds(TASK, "quality score is smaller than 0.5", result)
    assert rule_holds(TASK, "focus is larger than 0.8", result)
    blurry = _score(blurred(photos["chelsea"], 4))
    assert rule_holds(TASK, "focus is smaller than 0.2", blurry)
    proc = registry.get(TASK)
    make_vocabulary(proc.rule_properties)
    assert proc.info_of(result) == {"quality_score": result["quality_score"]}
    assert proc.input == registry.InputSpec(kind="image", max_side=aq.MAX_SIDE, mode="RGB")


def test_noise_estimate_reads_added_noise(photos: dict[str, Image.Image]) -> None:
    """Immerkær's sigma with edges excluded tracks added Gaussian noise (luma sigma = 0.668 x
    the per-channel sigma for independent channel noise)."""
    for name in ("astronaut", "chelsea"):
        clean = photos[name]
        base = _score(clean)["measures"]["noise_sigma"]  # type: ignore[index]
        got = _score(noisy(clean, 15))["measures"]["noise_sigma"]  # type: ignore[index]
        expected = float(np.hypot(base, 15 * 0.668))
        assert abs(got - expected) / expected < 0.12, (name, base, got, expected)


def test_flat_and_tiny_pictures() -> None:
    flat = run(TASK, TaskInput(properties={}, image=Image.new("RGB", (64, 64), (128, 128, 128))))
    assert flat["focus"] < 0.01 and flat["saturation"] is None and flat["noise"] > 0.9
    with pytest.raises(ProcessorError):
        run(TASK, TaskInput(properties={}, image=Image.new("RGB", (4, 4))))
    with pytest.raises(ProcessorError) as exc:
        run(TASK, TaskInput(properties={}))
    assert exc.value.permanent
    buf = io.BytesIO()
    _photo("coffee").save(buf, format="PNG")
    truncated = Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 3]))
    with pytest.raises(ProcessorError) as exc:
        run(TASK, TaskInput(properties={}, image=truncated))
    assert exc.value.permanent


def test_overall_is_a_weighted_geometric_mean() -> None:
    assert aq.overall({"focus": 1.0, "noise": 1.0}) == pytest.approx(1.0)
    assert aq.overall({"focus": 0.25, "noise": 1.0, "exposure": 1.0}) == pytest.approx(
        0.25 ** (3 / 7))
    assert aq.overall({"focus": 0.0}) == pytest.approx(0.01)
