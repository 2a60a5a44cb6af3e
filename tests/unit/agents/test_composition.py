"""The composition root: lazy services, one close, settings passed in, one cache reset."""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from agents.composition import Runtime, reset_caches
from agents.settings import Settings
from tests.conftest import ROOT

SERVICES = ("processors", "config", "postprocesses", "handlers", "store", "storage", "producer",
            "lanes", "io_pool", "webhook_pool", "decode_cache", "health",
            "processor_settings")


def test_nothing_is_built_until_used_and_each_service_once(tmp_path: Path) -> None:
    rt = Runtime(Settings(data_dir=tmp_path))
    assert not any(rt.built(name) for name in SERVICES)
    seen: list[Any] = []
    threads = [threading.Thread(target=lambda: seen.append(rt.storage)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(s) for s in seen}) == 1 and rt.built("storage")
    assert rt.store is rt.store
    assert {n for n in SERVICES if rt.built(n)} == {"storage", "store", "processors"}
    rt.close()
    rt.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        _ = rt.lanes  # nothing new after close


def test_bootstrap_comes_from_the_argument_or_the_settings(tmp_path: Path) -> None:
    assert Runtime(Settings(data_dir=tmp_path), "h:1").bootstrap == "h:1"
    assert Runtime(Settings(data_dir=tmp_path, kafka_bootstrap="k:2")).bootstrap == "k:2"
    with pytest.raises(RuntimeError, match="DARKROOM_KAFKA_BOOTSTRAP"):
        _ = Runtime(Settings(data_dir=tmp_path)).bootstrap


def test_environment_settings_reach_processors_and_libraries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.kafka.broker import EmbeddedBroker, tansu_binary
    from sinks.indexes import similarity

    monkeypatch.setenv("DARKROOM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DARKROOM_MODEL_THREADS", "3")
    monkeypatch.setenv("DARKROOM_INDEX_THREADS", "2")
    monkeypatch.setenv("DARKROOM_LOGO_LIBRARY", "/srv/logos")
    monkeypatch.setenv("DARKROOM_TANSU_BIN", "/opt/tansu")
    settings = Settings()
    rt = Runtime(settings)
    given = rt.processor_settings
    assert (given.model_threads, given.data_dir, given.logo_library) == (3, tmp_path,
                                                                        "/srv/logos")
    try:
        _ = rt.store  # the indexes hang off the store: their faiss threads are set with it
        assert similarity._Threads.wanted == 2
    finally:
        similarity.set_threads(1)
        rt.close()
    assert settings.tansu_bin == "/opt/tansu" and tansu_binary(settings.tansu_bin) == "/opt/tansu"
    assert EmbeddedBroker(binary=settings.tansu_bin).binary == "/opt/tansu"


def test_reset_caches_clears_every_process_wide_cache(tmp_path: Path) -> None:
    from agents.streams import router
    from processors.models import loading, mobilenet

    class Cheap(loading.Model):
        name, version, package = "cheap", "1", "none"

        def _load(self) -> None:
            pass

    class PP:
        def __init__(self) -> None:
            self.params = {"a": 1}

    model = loading.get_model(Cheap, 2)
    assert loading.get_model(Cheap, 2) is model
    router.params_json_of(PP())
    router._REPLY_TOPICS[("b", "t")] = (True, 0.0)
    mobilenet.class_names()
    rt = Runtime(Settings(data_dir=tmp_path))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    rt.decode_cache.get_decoded("k", lambda: io.BytesIO(buf.getvalue()), 8)
    assert len(rt.decode_cache) == 1

    reset_caches()

    assert loading.get_model(Cheap, 2) is not model
    assert not router._PARAMS_JSON and not router._REPLY_TOPICS
    assert not mobilenet._NAMES
    assert len(rt.decode_cache) == 0
    rt.close()


ENV_READ = re.compile(r"""(environ\.get\(|getenv\(|environ\[)\s*["']DARKROOM_""")


def test_no_darkroom_variable_is_read_outside_the_settings() -> None:
    """Every DARKROOM_ variable is a field of agents.settings.Settings, passed to where it is
    used (child processes may still be handed an environment)."""
    found = []
    for package in ("agents", "processors", "sinks", "schemas"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "agents" / "settings.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if ENV_READ.search(line) and not re.search(r"environ\[[^]]+\]\s*=[^=]", line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
