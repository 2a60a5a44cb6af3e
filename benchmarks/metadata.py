"""extract-metadata: ms per 12 MP JPEG for the task and for the libraries it was chosen against.

    uv run python benchmarks/metadata.py
    uv run --with exifread --with piexif --with pyexiv2 python benchmarks/metadata.py  # all

The file: 4000x3000, quality 90 (~3.4 MB), with EXIF (IFD0, Exif IFD, GPS IFD), XMP, IPTC-IIM
and an sRGB ICC profile (``tests/unit/processors/tasks/metadata_samples.py``). Each reader gets
the file's bytes and reads everything it can; what it found is printed next to its time.
Libraries that are not installed are skipped (they are not dependencies of the project).
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from processors.registry import TaskInput  # noqa: E402
from processors.tasks import extract_metadata as em  # noqa: E402
from tests.unit.processors.tasks import metadata_samples as ms  # noqa: E402


def timed(fn: Callable[[], Any], n: int = 50) -> tuple[float, Any]:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        out = fn()
    return (time.perf_counter() - t0) / n * 1000, out


def main() -> None:
    data = ms.tagged_jpeg(ms.picture((4000, 3000)), quality=90)
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "photo.jpg"
    path.write_bytes(data)
    print(f"12 MP JPEG: {len(data) / 1e6:.1f} MB")

    def task(strip: bool) -> Callable[[], Any]:
        def go() -> Any:
            work = Path(tempfile.mkdtemp(dir=tmp))
            r = em.extract_metadata(TaskInput(properties={}, path=path, workdir=work),
                                    em.ExtractMetadataParams(strip=strip))
            return {k: bool(v) for k, v in r["sources"].items()} | {"gps": r["has_gps"]}
        return go

    readers: list[tuple[str, Callable[[], Any]]] = [
        ("extract-metadata (Pillow)", task(False)),
        ("extract-metadata, strip", task(True)),
    ]
    try:
        import exifread

        def exif_read() -> Any:
            tags = exifread.process_file(io.BytesIO(data), details=True)
            return {"tags": len(tags), "gps": sum(k.startswith("GPS") for k in tags)}

        readers.append((f"exifread {exifread.__version__}", exif_read))
    except ImportError:
        pass
    try:
        import piexif

        def pie() -> Any:
            d = piexif.load(data)
            return {k: len(v) for k, v in d.items() if isinstance(v, dict)}

        readers.append((f"piexif {piexif.VERSION}", pie))
    except ImportError:
        pass
    try:
        import pyexiv2

        def exiv2(src: Any) -> Callable[[], Any]:
            def go() -> Any:
                img = pyexiv2.ImageData(data) if src is None else pyexiv2.Image(str(src))
                with img:
                    e, i, x, c = img.read_exif(), img.read_iptc(), img.read_xmp(), img.read_icc()
                return {"exif": len(e), "iptc": len(i), "xmp": len(x), "icc": len(c)}
            return go

        readers.append((f"pyexiv2 {pyexiv2.__version__} (bytes)", exiv2(None)))
        readers.append((f"pyexiv2 {pyexiv2.__version__} (file)", exiv2(path)))
    except ImportError:
        pass
    for name, fn in readers:
        ms_, found = timed(fn)
        print(f"{name:34s} {ms_:7.2f} ms  {found}")


if __name__ == "__main__":
    main()
