"""The README's first command and the other CLI entry points, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def darkroom(*args: str, data_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(DARKROOM_DATA_DIR=str(data_dir), DARKROOM_SESSION_TIMEOUT_S="6")
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_process_samples_on_embedded_defaults(tmp_path: Path) -> None:
    out = darkroom("process", "samples/", "--json", data_dir=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert {line["filename"] for line in lines} == {"photo.jpg", "rotated.jpg", "logo.png"}
    for line in lines:
        assert line["status"] == "complete"
        assert set(line["results"]) == {
            "blurhash", "dominant-colors", "thumbnail", "validate-image"}
        assert all(r["status"] == "ok" and r["data"] for r in line["results"].values())
    rotated = next(line for line in lines if line["filename"] == "rotated.jpg")
    # EXIF orientation 6: stored 480x320, displayed 320x480
    assert rotated["results"]["validate-image"]["data"]["width"] == 320
    shown = darkroom("asset", lines[0]["asset_id"], data_dir=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "complete"


@pytest.mark.integration
def test_process_exits_nonzero_when_an_asset_fails(tmp_path: Path) -> None:
    out = darkroom("process", "tests/data/corrupt.jpg", data_dir=tmp_path)
    assert out.returncode == 1, out.stderr + out.stdout
    assert "corrupt or truncated image" in out.stdout


def test_config_check(tmp_path: Path) -> None:
    ok = darkroom("config", "check", "agents/policy/default_postprocess.yaml", data_dir=tmp_path)
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = darkroom("config", "check", "tests/fixtures/pp_errors.yaml", data_dir=tmp_path)
    assert bad.returncode == 1
    assert "pp_errors.yaml:" in bad.stderr and "unknown task" in bad.stderr


def test_missing_asset_is_a_clear_error(tmp_path: Path) -> None:
    out = darkroom("asset", "nope", data_dir=tmp_path)
    assert out.returncode == 1 and "no asset nope" in out.stderr


@pytest.mark.integration
def test_process_refuses_what_the_api_refuses(tmp_path: Path) -> None:
    """`process` ingests like POST /v1/assets: an empty file and a decompression bomb are
    refused before anything is stored, reported, and make the exit status 1."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    files = tmp_path / "in"
    files.mkdir()
    (files / "empty.jpg").write_bytes(b"")
    (files / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 12001)) + chunk(b"IEND", b""))
    out = darkroom("process", str(files), "--json", data_dir=tmp_path / "data")
    assert out.returncode == 1, out.stderr + out.stdout
    lines = {line["filename"]: line for line in map(json.loads, out.stdout.splitlines())}
    assert lines["empty.jpg"]["status"] == "refused"
    assert lines["empty.jpg"]["error"] == "the uploaded file is empty"
    assert "decompression bomb guard" in lines["bomb.png"]["error"]
    assert "not uploaded" in out.stderr
    objects = tmp_path / "data" / "objects"
    assert not objects.exists() or not any(p.is_file() for p in objects.rglob("*"))


def test_process_with_an_unknown_name_fails_before_uploading(tmp_path: Path) -> None:
    out = darkroom("process", "samples/", "-p", "tagg", data_dir=tmp_path, timeout=60)
    assert out.returncode != 0
    assert "unknown post-process name: tagg; known: " in out.stderr
    assert "blurhash" in out.stderr
    assert not (tmp_path / "objects").exists()  # nothing stored, no broker started
