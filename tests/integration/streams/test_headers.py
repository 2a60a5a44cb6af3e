"""Every message Darkroom writes carries its headers (content type, schema and fingerprint, asset
id, W3C traceparent), read here with a raw confluent-kafka consumer; a trace id given to the API
comes back in the webhook request's headers."""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

import schemas
from schemas import history
from tests.conftest import TopicReader, WorkerEnv, start_worker, stop_worker
from tests.integration.api.test_api import Api
from tests.integration.streams.test_notifications import Receiver

pytestmark = pytest.mark.integration

PREFIX = "hdr"
ENV = {"DARKROOM_TOPIC_PREFIX": PREFIX, "DARKROOM_WORKER_ID": "darkroom-hdr",
       "DARKROOM_WEBHOOK_SECRET": "hdr-secret", "DARKROOM_WEBHOOK_ALLOW": '["127.0.0.1"]'}


@pytest.fixture(scope="module")
def hstack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[WorkerEnv, Api, Receiver]]:
    w = start_worker(kafka_bootstrap, tmp_path_factory.mktemp("hdr"), extra_env=ENV)
    api = Api(w, "hdr-api")
    rec = Receiver()
    yield w, api, rec
    rec.server.shutdown()
    api.stop()
    stop_worker(w)


def headers_of(msg: Any) -> dict[str, bytes]:
    return {k: v for k, v in (msg.headers() or [])}


def test_every_topic_carries_headers_and_the_trace_reaches_the_webhook(
        hstack: tuple[WorkerEnv, Api, Receiver]) -> None:
    w, api, rec = hstack
    trace_id = secrets.token_hex(16)
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (20, 90, 200)).save(buf, "JPEG")
    resp = api.client.post(
        "/v1/assets", files={"file": ("t.jpg", buf.getvalue())},
        data={"mode": "sync", "notification_url": rec.url + "/trace"},
        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert resp.status_code == 201, resp.text
    asset_id = resp.json()["asset_id"]
    hook = rec.wait("/trace", 1)[-1]
    assert hook["headers"]["traceparent"].split("-")[1] == trace_id

    topics = ["uploads", "tasks.validate-image", "results.validate-image", "tasks.blurhash",
              "results.blurhash", "assets", "webhooks", "replies.hdr-api"]
    for suffix in topics:
        reader = TopicReader(w.bootstrap, f"{PREFIX}.{suffix}")
        try:
            msgs = reader.read_until(lambda ms: any(m.key() == asset_id.encode() for m in ms))
        finally:
            reader.close()
        for m in (m for m in msgs if m.key() == asset_id.encode()):
            h = headers_of(m)
            assert h["content-type"] == b"application/vnd.apache.avro", suffix
            name = schemas.schema_name_of(m.value())
            assert h["darkroom-schema"].decode() == name, suffix
            fp = h["darkroom-schema-fingerprint"].decode()
            assert (name, fp) in history.manifest(), suffix
            assert h["darkroom-asset-id"] == asset_id.encode(), suffix
            assert h["traceparent"].decode().split("-")[1] == trace_id, suffix
    # consumers keep working on messages without headers: the test suite produces those
    # everywhere else (tests/integration/streams/test_pipeline.py)
    assert json.loads(hook["body"])["asset_id"] == asset_id
