"""``remove-artifacts``: reduce JPEG compression artifacts (blocking, ringing) of a picture.

No learned model ships in an installable package (shared/reference/models.md: waifu2x-ncnn gave
+0.9 dB in 1.9 s), so this is a classical method, measured: **re-application of JPEG** to shifted
copies (Nosratinia, "Enhancement of JPEG-compressed images by re-application of JPEG", 2001).
The picture is shifted by ``(dx, dy)`` over the 8x8 grid, JPEG-compressed again *at its own
quality*, decoded, shifted back, and the copies are averaged. Each pass keeps what the original
quantisation kept (the DCT coefficients of the true picture survive) while the blocking and ringing
noise, tied to one grid position, averages out. ``passes`` 16 (shifts in steps of 2 px) is the
default; 64 (every shift) gains another 0.05-0.1 dB for 4x the time; 4 about half the gain.

The quality comes from the file's **quantisation tables** when it is a JPEG
(:mod:`processors.media.jpeg_quality`, shared with ``analyze-quality``: the header's tables
against libjpeg's standard tables scaled by quality, exact for libjpeg-family encoders; only the
header is read) and the round trips then use *exactly those tables* (a camera's own tables are
no libjpeg quality). Only a picture without tables (a PNG that was once a JPEG, or pixels handed
in without their file) falls back to the pixels ("JPEG ghosts", :func:`estimate_quality`): a
256 px crop aligned to the picture's MCU grid is recompressed at every quality 1-100 (libjpeg's
standard tables, 4:2:0 and 4:4:4 chroma); at the quality it was saved with the error has a
sharp local minimum. The ghost method alone read photos saved at quality 85 and ~92 as 100 (no
dip that high up) and so skipped them; the tables read both exactly. The grid
(:func:`grid_phase`) is where luma steps between neighbouring columns/rows peak modulo 8 and
chroma steps modulo 16, so a cropped JPEG is handled (its grid is only shifted). When no
quality is found, or it is above ``max_quality`` (default 70, measured below), nothing is
done and **nothing is written** (``method: "none"``, ``output: null``, ``reason`` says why): the
upload itself is the best version. ``quality`` overrides the estimate. On 14 photos x 11
qualities (5-90) x 2 grid offsets the ghost estimate was exact from q5 to q50 except on the
retina photo (q23 read as q20, q50 not found); misses above q50 gave no estimate or one above
90 (nothing done); never-compressed photos gave 94-100 (nothing done).

Measured (``benchmarks/artifacts.py``: scikit-image photos saved by Pillow, PSNR against the
clean original, quality estimated, 16 passes), gain in dB at quality 10: astronaut +0.62, coffee
+0.53, chelsea +0.67, rocket +0.35, camera +0.44, immunohistochemistry +0.64 (mean +0.54); at
q20 +0.22 to +0.61 (mean +0.42); at q40 +0.13 to +0.63 (mean +0.35); 200-280 ms per 512 px
picture, ~150 ms of it the ghost estimate (the tables cost ~0.5 ms). Above q50, measured
with the exact (table) estimate on the same six photos: mean gain +0.29 dB at q60 (all positive),
+0.24 at q70 (worst -0.05, rocket), +0.20 at q75 (worst -0.13), +0.14 at q80 (three of six lose,
up to -0.26), and at q85-90 astronaut and coffee lose 0.16-0.47 dB: at high qualities the
averaging blurs more detail than it removes artifacts, hence ``max_quality`` 70 (it was 90 while
the ghost estimate could not see qualities above ~50 anyway). Non-local means
(``cv2.fastNlMeansDenoisingColored``) was measured too: +0.0 to +0.6 dB at q10 but negative on
several pictures from q20 up, and 5-10x slower, so it is not used.

Output (only when something was done): ``deblocked.png`` (lossless: recompressing the result as
JPEG would add new artifacts) in the task's workdir, or ``deblocked.jpg`` at quality 95, 4:4:4
chroma (``format: jpeg``; keeps most of the gain). The picture is upright and carries no
metadata. The agent adds its URI under ``derived``.

Input size: ``max_side=None`` (full size): the output replaces the upload, and the 8x8 grid only
exists at the picture's own size (any resize destroys it). Cost is ``passes`` JPEG round trips of
the whole picture: 5.7 s for 12 MP at 16 passes on this 2-core box, PNG writing included.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from processors.media import jpeg_quality
from processors.registry import Deadline, InputSpec, ProcessorError, TaskInput, register

VERSION: Final = "1.1"
OUTPUT_STEM: Final = "deblocked"
ESTIMATE_CROP: Final = 256
#: How far (x) a quality's recompression error must dip below its neighbours' to be the one.
GHOST_DIP: Final = 3.0
#: Qualities on each side whose median error is the baseline a dip is measured against.
GHOST_WINDOW: Final = 5
#: Pillow's ``subsampling`` values tried by the estimate: 2 = 4:2:0, 0 = 4:4:4.
SUBSAMPLINGS: Final = (2, 0)

_PIXEL_ERRORS: Final = (OSError, SyntaxError, ValueError, IndexError, EOFError)

U8 = npt.NDArray[np.uint8]


class RemoveArtifactsParams(BaseModel):
    """``quality``: the JPEG quality the picture was saved with (default: estimated);
    ``max_quality``: above this estimate nothing is done; ``passes``: shifted recompressions
    averaged (4, 16 or 64); ``format``: ``png`` (lossless) or ``jpeg`` (quality 95, 4:4:4)."""

    model_config = ConfigDict(extra="forbid")

    quality: int | None = Field(default=None, ge=1, le=100)
    max_quality: int = Field(default=70, ge=1, le=100)
    passes: Literal[4, 16, 64] = 16
    format: Literal["png", "jpeg"] = "png"


def _roundtrip(arr: U8, quality: int, subsampling: int,
               qtables: Mapping[int, Sequence[int]] | None = None) -> U8:
    buf = io.BytesIO()
    if qtables is not None:  # exactly these tables (Pillow scales them when given a quality)
        Image.fromarray(arr).save(buf, format="JPEG", qtables=dict(qtables),
                                  subsampling=subsampling)
    else:
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _edge_strength(channel: npt.NDArray[np.float32], axis: int, period: int) -> np.ndarray:
    """Mean absolute step into each position modulo ``period`` along ``axis`` (index p: the step
    between p - 1 and p)."""
    diff = np.abs(np.diff(channel, axis=axis)).mean(axis=1 - axis)
    n = len(diff) // period * period
    if n < 2 * period:
        return np.zeros(period, dtype=np.float32)
    by_phase = diff[:n].reshape(-1, period).mean(axis=0)
    return np.roll(by_phase, 1)  # diff[i] is the step between i and i + 1


def grid_phase(arr: U8) -> tuple[int, int]:
    """``(px, py)``: where the picture's JPEG MCU grid lies (MCU edges at x = px + 16k,
    y = py + 16k; 8x8 luma blocks at px + 8k).

    The luma block phase is where the steps between neighbouring columns (rows) are largest
    modulo 8; which of the two 8-phases is the 16 px MCU edge (4:2:0 chroma blocks cover 16 luma
    pixels) is where the chroma steps are larger. A never-compressed picture gets an arbitrary
    phase, which does no harm (its quality estimate finds no JPEG ghost).
    """
    ycc = np.asarray(Image.fromarray(arr).convert("YCbCr"), dtype=np.float32)
    chroma = np.abs(ycc[..., 1] - 128) + np.abs(ycc[..., 2] - 128)
    phases = []
    for axis in (1, 0):
        p8 = int(np.argmax(_edge_strength(ycc[..., 0], axis, 8)))
        c16 = _edge_strength(chroma, axis, 16)
        phases.append(p8 if c16[p8] >= c16[p8 + 8] else p8 + 8)
    return phases[0], phases[1]


def estimate_quality(arr: U8, phase: tuple[int, int]) -> tuple[int | None, int, float]:
    """``(quality, subsampling, mse)`` the picture was saved with, by its JPEG ghost.

    A crop aligned to the MCU grid is recompressed at every quality 1-100 with 4:2:0 and 4:4:4
    chroma. Recompressing at the quality it was saved with (same tables) changes almost nothing:
    the error has a sharp local minimum (measured: 0.0-0.4 against 17-30 at the neighbouring
    qualities for q10; 0.06 against 0.24 / 1.27 for q40, whose neighbours' tables share many
    entries). The lowest quality that is a local minimum at least ``GHOST_DIP`` x below the median
    error of the ``GHOST_WINDOW`` qualities on each side wins (qualities whose tables divide the
    true ones dip too, but they are all higher). No dip: ``None`` (never JPEG-compressed, or
    compressed with non-standard tables).
    """
    h, w = arr.shape[:2]
    px, py = phase
    side = min(ESTIMATE_CROP, (w - px) // 16 * 16, (h - py) // 16 * 16)
    if side < 16:
        return None, 2, 0.0
    x0 = px + max(0, (w - px - side) // 2) // 16 * 16
    y0 = py + max(0, (h - py - side) // 2) // 16 * 16
    crop = np.ascontiguousarray(arr[y0:y0 + side, x0:x0 + side])
    ref = crop.astype(np.float32)
    best: tuple[int, int, float] | None = None
    for sub in SUBSAMPLINGS:
        errs = [float(np.mean((_roundtrip(crop, q, sub).astype(np.float32) - ref) ** 2))
                for q in range(1, 101)]
        for i, err in enumerate(errs):
            if not all(err < errs[j] for j in (i - 1, i + 1) if 0 <= j < len(errs)):
                continue  # not a local minimum
            window = [errs[j] for j in range(i - GHOST_WINDOW, i + GHOST_WINDOW + 1)
                      if 0 <= j < len(errs) and j != i]
            if float(np.median(window)) >= GHOST_DIP * (err + 0.05):
                if best is None or i + 1 < best[0] or (i + 1 == best[0] and err < best[2]):
                    best = (i + 1, sub, err)
                break
    return best if best is not None else (None, 2, 0.0)


def reapply_jpeg(arr: U8, quality: int, subsampling: int, passes: int,
                 phase: tuple[int, int] = (0, 0),
                 qtables: Mapping[int, Sequence[int]] | None = None,
                 deadline: Deadline | None = None) -> U8:
    """Mean of ``passes`` shifted JPEG round trips at ``quality`` (shifts over the 8x8 grid);
    with ``qtables``, round trips through exactly those quantisation tables. ``deadline`` is
    checked before each pass, so a timed-out attempt stops within one pass."""
    step = {4: 4, 16: 2, 64: 1}[passes]
    h, w = arr.shape[:2]
    acc = np.zeros(arr.shape, dtype=np.float32)
    n = 0
    for dy in range(0, 8, step):
        for dx in range(0, 8, step):
            if deadline is not None:
                deadline.check()
            # Pad so that the recompression grid sits (dx, dy) off the picture's own grid.
            oy, ox = (dy - phase[1]) % 8, (dx - phase[0]) % 8
            padded = np.pad(arr, ((oy, 8), (ox, 8), (0, 0)), mode="reflect")
            acc += _roundtrip(padded, quality, subsampling, qtables)[oy:oy + h, ox:ox + w]
            n += 1
    return np.clip(acc / n + 0.5, 0, 255).astype(np.uint8)


def _file_tables(inp: TaskInput) -> jpeg_quality.JpegQuality | None:
    """The quality estimate from the upload's own quantisation tables: the file the agent
    decoded (``inp.path``), else the image when Pillow opened it as a JPEG itself."""
    if inp.path is not None:
        found = jpeg_quality.estimate(inp.path)
        if found is not None:
            return found
    return jpeg_quality.from_image(inp.image) if isinstance(inp.image, Image.Image) else None


@register(
    "remove-artifacts",
    outputs=True,
    lane="long",  # seconds to minutes: its own lane (DARKROOM_LONG_TASK_CONCURRENCY)
    version=VERSION,
    media=("image",),
    input=InputSpec(kind="image", max_side=None, mode="RGB"),
    params=RemoveArtifactsParams,
)
def remove_artifacts(inp: TaskInput, params: RemoveArtifactsParams) -> dict[str, Any]:
    """Reduce JPEG blocking/ringing (shifted JPEG re-application at the estimated quality)."""
    img = inp.image
    if not isinstance(img, Image.Image):
        raise ProcessorError("remove-artifacts needs a decoded image input", permanent=True)
    if inp.workdir is None:
        raise ProcessorError("remove-artifacts needs a workdir for its output", permanent=True)
    try:
        img.load()
        arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    except _PIXEL_ERRORS as exc:
        raise ProcessorError(
            f"remove-artifacts: unreadable image: {type(exc).__name__}: {exc}"
        ) from exc
    phase = grid_phase(arr)
    inp.deadline.check()  # between the steps (see reapply_jpeg)
    tables = _file_tables(inp)
    est_err = 0.0
    if tables is not None:
        est_q: int | None = tables.quality
        subsampling, source = tables.pillow_subsampling, "quantisation tables"
    else:
        est_q, subsampling, est_err = estimate_quality(arr, phase)
        source = "pixels"
    quality = params.quality or est_q
    reason: str | None = None
    if quality is None:
        reason = "no JPEG compression found (no quantisation tables, no JPEG ghost)"
    elif quality > params.max_quality:
        reason = (f"quality {quality} is above max_quality {params.max_quality}: "
                  "re-application would blur more than it removes")
    name: str | None = None
    if quality is None or reason is not None:
        method = "none"  # nothing done, so nothing written: the upload is the best version
    else:
        # The file's own tables when it has them (a camera's are not libjpeg's at any quality);
        # the standard ones at the given or estimated quality otherwise.
        own = tables.tables if tables is not None and params.quality is None else None
        out = reapply_jpeg(arr, quality, subsampling, params.passes, phase, qtables=own,
                           deadline=inp.deadline)
        method = "jpeg-reapply"
        if params.format == "jpeg":
            name = f"{OUTPUT_STEM}.jpg"
            Image.fromarray(out).save(inp.workdir / name, format="JPEG", quality=95,
                                      subsampling=0)
        else:
            name = f"{OUTPUT_STEM}.png"
            Image.fromarray(out).save(inp.workdir / name, format="PNG", compress_level=3)
    return {
        "output": name,
        "method": method,
        "reason": reason,
        "params": {
            "quality": quality,
            "estimated_quality": est_q,
            "estimated_from": source if est_q is not None else None,
            "tables_exact": tables.exact if tables is not None else None,
            "estimate_error": round(est_err, 3),
            "subsampling": {2: "4:2:0", 1: "4:2:2", 0: "4:4:4"}[subsampling],
            "grid_phase": list(phase),
            "passes": params.passes,
            "format": params.format,
        },
        "width": int(arr.shape[1]),
        "height": int(arr.shape[0]),
    }
