"""The public contract: a client with only fastavro, confluent-kafka and schemas/*.avsc."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "tests" / "integration" / "raw_client" / "raw_client.py"


def run_client(*args: str) -> str:
    # -I: isolated mode, so neither the repo root nor PYTHONPATH is on sys.path.
    out = subprocess.run([sys.executable, "-I", str(SCRIPT), *args], capture_output=True,
                         text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_raw_producer_and_consumer(worker) -> None:  # type: ignore[no-untyped-def]
    img = worker.inbox / "raw.png"
    Image.radial_gradient("L").convert("RGB").resize((300, 200)).save(img)
    uri = "file://" + str(img)
    schema_dir = str(ROOT / "schemas")
    run_client("produce", worker.bootstrap, schema_dir, "raw-asset-1", uri, "raw.png")
    out = json.loads(run_client("consume", worker.bootstrap, schema_dir, "raw-asset-1", "90"))
    assert out["darkroom_modules"] == []
    assert out["final"] is not None and out["final"]["status"] == "complete"
    assert out["results"]["blurhash"]["status"] == "ok"
    assert out["results"]["validate-image"]["data"]["width"] == 300
    assert json.loads(out["final"]["info_json"])["format"] == "PNG"
