"""The sink merges the results of one asset that arrive in one batch together: one
transaction, one version for all they change, each version on ``darkroom.assets`` once; a
redelivered batch changes nothing. On the real broker and a real SQLite store."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.composition import Runtime
from agents.kafka.topics import ensure_topics
from agents.settings import Settings
from agents.streams.poison import Msg
from agents.streams.sink import merge_batch
from schemas.records import AssetUpdate, TaskResult, now_ms
from tests.conftest import TopicReader
from tests.unit.sinks.store.test_store import upload

pytestmark = pytest.mark.integration


@pytest.fixture
def rt(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Runtime]:
    prefix = f"grp{uuid.uuid4().hex[:6]}"
    root = Runtime(Settings(kafka_bootstrap=kafka_bootstrap, data_dir=tmp_path,
                            topic_prefix=prefix))
    ensure_topics(kafka_bootstrap, [root.settings.topic("assets")], 1, 1)
    yield root
    root.close()


def result_msg(rt: Runtime, asset_id: str, task: str, data: dict[str, object],
               offset: int) -> Msg:
    res = TaskResult(request_id=f"{asset_id}-{task}-k1", asset_id=asset_id, task=task,
                     postprocess=task, status="ok", data_json=json.dumps(data),
                     verdicts_json="[]", error=None, error_kind=None, attempts=1,
                     duration_ms=1.0, processor_version="1", worker="test",
                     finished_at=now_ms(), replay=False)
    return Msg(rt.settings.topic("results", task), 0, offset, asset_id.encode(),
               res.to_bytes())


def versions_on_topic(rt: Runtime, asset_id: str, until: int) -> list[int]:
    reader = TopicReader(rt.bootstrap, rt.settings.topic("assets"))
    try:
        msgs = reader.read_until(lambda ms: any(
            m.key() == asset_id.encode() and AssetUpdate.from_bytes(m.value()).version >= until
            for m in ms))
        return [AssetUpdate.from_bytes(m.value()).version for m in msgs
                if m.key() == asset_id.encode()]
    finally:
        reader.close()


def test_an_assets_results_in_one_batch_make_one_version(rt: Runtime) -> None:
    aid = f"g-{uuid.uuid4().hex[:8]}"
    rt.store.register_uploads([upload(aid, tasks=("blurhash", "dominant-colors"))])
    registered = rt.store.get_asset(aid)
    assert registered is not None
    batch = [result_msg(rt, aid, "blurhash", {"blurhash": "LKO2?U%2Tw=w"}, 0),
             result_msg(rt, aid, "dominant-colors", {"colors": [["#ffffff", 1.0]]}, 0)]
    assert merge_batch(rt, batch) == 1
    merged = rt.store.get_asset(aid)
    assert merged is not None and merged.status == "complete"
    assert set(merged.results) == {"blurhash", "dominant-colors"}
    # one version for both results (one result after the other would make two; the
    # completion adds none here: no on_success updates)
    assert merged.version == registered.version + 1
    assert merged.finalized_version == merged.version
    # the same batch again (a redelivery): nothing changes, nothing is sent again
    assert merge_batch(rt, batch) == 0
    again = rt.store.get_asset(aid)
    assert again is not None and again.version == merged.version
    got = versions_on_topic(rt, aid, merged.version)
    assert got == sorted(set(got)) and got[-1] == merged.version  # each version once
