"""``thumbnail`` (images, from the shared 256 px decode) and ``video-thumbnail`` (one ffmpeg
frame at 10 % of the duration): a WebP in the workdir, pointed at by ``info.thumbnail``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from processors import registry
from processors.media import ffmpeg as fu
from processors.media.decode_cache import DecodeCache
from processors.registry import InputSpec, ProcessorError, TaskInput
from processors.tasks.thumbnail import fit, thumbnail_uri


def run(task: str, inp: TaskInput, params: dict[str, Any] | None = None) -> dict[str, Any]:
    proc = registry.get(task)
    return proc.run(inp, proc.parse_params(params))


def test_registered_with_the_shared_decode_and_the_info_key() -> None:
    procs = registry.load_all()
    img, vid = procs["thumbnail"], procs["video-thumbnail"]
    assert img.input == InputSpec(kind="image", max_side=256, mode="RGB")
    assert img.media == frozenset({"image"}) and vid.media == frozenset({"video"})
    assert vid.input.kind == "file"
    data = {"file": "thumbnail.webp", "derived": {"thumbnail.webp": "file:///x/t.webp"}}
    assert img.info_of(data) == {"thumbnail": "file:///x/t.webp"}
    assert vid.info_of(data) == {"thumbnail": "file:///x/t.webp"}
    assert img.info_of({"file": "thumbnail.webp"}) == {}  # not stored (yet): no info
    assert thumbnail_uri({"file": 3, "derived": {}}) is None


def test_fit_never_upscales() -> None:
    assert fit(4000, 3000, 256) == (256, 192)
    assert fit(300, 1200, 256) == (64, 256)
    assert fit(100, 50, 256) == (100, 50)
    assert fit(5000, 1, 256) == (256, 1)


def test_image_thumbnail_from_the_decode_cache(tmp_path: Path) -> None:
    src = tmp_path / "big.jpg"
    Image.new("RGB", (1600, 900), (20, 120, 220)).save(src, "JPEG", quality=90)
    decoded = DecodeCache(preview_side=512, max_pixels=10**8).get_decoded(
        "k", lambda: src, 256, mode="RGB")
    work = tmp_path / "work"
    work.mkdir()
    inp = TaskInput(properties={"width": 1600, "height": 900}, image=decoded.image,
                    workdir=work)
    out = run("thumbnail", inp)
    assert out["file"] == "thumbnail.webp" and out["mimetype"] == "image/webp"
    assert (out["width"], out["height"]) == (256, 144)
    assert out["source"] == {"width": 1600, "height": 900}
    with Image.open(work / "thumbnail.webp") as thumb:
        assert thumb.format == "WEBP" and thumb.size == (256, 144)
        r, g, b = thumb.convert("RGB").getpixel((128, 72))
        assert abs(r - 20) < 12 and abs(g - 120) < 12 and abs(b - 220) < 12
    assert out["size"] == (work / "thumbnail.webp").stat().st_size
    smaller = run("thumbnail", inp, {"max_side": 64, "quality": 50})
    assert (smaller["width"], smaller["height"]) == (64, 36)


def test_image_thumbnail_needs_an_image(tmp_path: Path) -> None:
    with pytest.raises(ProcessorError):
        run("thumbnail", TaskInput(properties={}, workdir=tmp_path))


def _clip(path: Path, size: str, seconds: float) -> Path:
    # the first 10 % is red, then blue: the thumbnail is taken at 10 %, so it shows blue
    red, blue = seconds * 0.05, seconds * 0.95
    cmd = [fu.ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", "-y",
           "-f", "lavfi", "-i", f"color=c=red:size={size}:rate=25:duration={red}",
           "-f", "lavfi", "-i", f"color=c=blue:size={size}:rate=25:duration={blue}",
           "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True, timeout=60)
    return path


def test_video_thumbnail_is_a_frame_at_ten_percent(tmp_path: Path) -> None:
    clip = _clip(tmp_path / "c.mp4", "640x360", 4.0)
    work = tmp_path / "work"
    work.mkdir()
    out = run("video-thumbnail", TaskInput(properties={}, path=clip, workdir=work))
    assert (out["width"], out["height"]) == (256, 144)
    assert out["source"]["position_s"] == pytest.approx(0.4, abs=0.01)
    assert sorted(p.name for p in work.iterdir()) == ["thumbnail.webp"]  # nothing else stored
    with Image.open(work / "thumbnail.webp") as thumb:
        r, g, b = thumb.convert("RGB").getpixel((128, 72))
    assert b > 180 and r < 60, (r, g, b)


def test_video_thumbnail_of_a_portrait_video(tmp_path: Path) -> None:
    clip = _clip(tmp_path / "p.mp4", "180x320", 2.0)
    work = tmp_path / "work"
    work.mkdir()
    out = run("video-thumbnail", TaskInput(properties={}, path=clip, workdir=work),
              {"max_side": 128})
    assert (out["width"], out["height"]) == (72, 128)


def test_video_thumbnail_of_a_non_video_is_permanent(tmp_path: Path) -> None:
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ProcessorError) as err:
        run("video-thumbnail", TaskInput(properties={}, path=bad, workdir=tmp_path))
    assert err.value.permanent
