"""The whole path on S3 storage (moto's server): API stores in S3, workers read through the
cache, a refusal deletes the object from the bucket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from minio import Minio

from tests.conftest import ROOT, WorkerEnv, start_worker, stop_worker
from tests.integration.api.test_api import Api, jpeg

pytestmark = pytest.mark.integration

BUCKET = "darkroom-e2e"


@pytest.fixture(scope="module")
def s3_stack(kafka_bootstrap: str, moto_endpoint: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerEnv, Api]]:
    env = {"DARKROOM_TOPIC_PREFIX": "s3test", "DARKROOM_WORKER_ID": "darkroom-s3test",
           "DARKROOM_STORAGE_BACKEND": "s3", "DARKROOM_S3_ENDPOINT": moto_endpoint,
           "DARKROOM_S3_BUCKET": BUCKET, "DARKROOM_S3_ACCESS_KEY": "test",
           "DARKROOM_S3_SECRET_KEY": "test-secret"}
    wenv = start_worker(kafka_bootstrap, tmp_path_factory.mktemp("s3"),
                        config=ROOT / "tests/fixtures/pp_api.yaml", extra_env=env)
    api = Api(wenv, "s3-api")
    yield wenv, api
    api.stop()
    stop_worker(wenv)


def bucket_keys(endpoint: str) -> set[str]:
    client = Minio(endpoint.split("//", 1)[1], access_key="test", secret_key="test-secret",
                   secure=False)
    return {o.object_name for o in client.list_objects(BUCKET, recursive=True)}


def test_sync_upload_on_s3(s3_stack: tuple[WorkerEnv, Api], moto_endpoint: str) -> None:
    _wenv, api = s3_stack
    ok = api.upload(jpeg(640, 480), name="wide.jpg", folder="/notice/s3", mode="sync")
    assert ok.status_code == 201, ok.text
    body = ok.json()
    assert body["asset"]["uri"].startswith(f"s3://{BUCKET}/originals/notice/s3/")
    assert body["asset"]["results"]["colors"]["status"] == "ok"  # read from S3 by the worker
    assert f"originals/notice/s3/{body['asset_id']}/wide.jpg" in bucket_keys(moto_endpoint)

    refused = api.upload(jpeg(100, 100), name="small.jpg", folder="/refuse", mode="sync")
    assert refused.status_code == 422, refused.text
    gone = refused.json()["asset_id"]
    assert not [k for k in bucket_keys(moto_endpoint) if gone in k]
