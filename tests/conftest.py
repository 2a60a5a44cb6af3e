"""Shared fixtures: a real Kafka-protocol broker (tansu) per test session, a real worker process,
and helpers that read topics with a plain confluent-kafka consumer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from sinks.store.metadata import MetadataStore

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
DEFAULT_CONFIG = ROOT / "agents" / "policy" / "default_postprocess.yaml"


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real broker: tansu on a free loopback port, or Apache Kafka via testcontainers when
    DARKROOM_TEST_KAFKA=testcontainers and a Docker engine answers."""
    if os.environ.get("DARKROOM_TEST_KAFKA") == "testcontainers":
        if not docker_available():
            pytest.skip("DARKROOM_TEST_KAFKA=testcontainers but no Docker engine answers")
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from agents.kafka.broker import EmbeddedBroker

    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap


PG_URL = os.environ.get("DARKROOM_TEST_POSTGRES_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> str | None:
    try:
        eng = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(sa.text("select 1"))
        eng.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "sqlite":
        s = MetadataStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
        yield s
        s.close()
        return
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    schema_db = f"darkroom_test_{uuid.uuid4().hex[:8]}"  # a fresh database per test
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {schema_db}"))
    url = PG_URL.rsplit("/", 1)[0] + "/" + schema_db
    s = MetadataStore(url)
    yield s
    s.close()
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE {schema_db} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 endpoint: moto's threaded server on a free loopback port."""
    from moto.server import ThreadedMotoServer

    from agents.kafka.broker import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class WorkerEnv:
    """A running worker process and the settings it was started with."""

    bootstrap: str
    data_dir: Path
    inbox: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> Any:
        from agents.settings import Settings

        return Settings(
            kafka_bootstrap=self.bootstrap,
            data_dir=Path(self.env["DARKROOM_DATA_DIR"]),
            file_roots=[self.inbox],
            postprocess_config=Path(self.env["DARKROOM_POSTPROCESS_CONFIG"]),
            database_url=self.env.get("DARKROOM_DATABASE_URL"),
        )

    def store(self) -> Any:
        from sinks.store.metadata import MetadataStore

        return MetadataStore(self.settings.sqlalchemy_url)

    def wait_assets(self, ids: list[str], timeout: float = 90.0,
                    done: Callable[[Any], bool] = lambda a: a.status != "pending",
                    ) -> dict[str, Any]:
        store = self.store()
        deadline = time.monotonic() + timeout
        found: dict[str, Any] = {}
        while time.monotonic() < deadline:
            found = store.get_assets(ids)
            if len(found) == len(ids) and all(done(a) for a in found.values()):
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker died:\n{self.log_tail()}")
            time.sleep(0.2)
        raise AssertionError(
            f"assets not done in {timeout}s: "
            f"{ {k: v.status for k, v in found.items()} }\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 60) -> str:
        if self.log and self.log.exists():
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


def start_worker(bootstrap: str, base: Path, config: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> WorkerEnv:
    data_dir = base / "data"
    inbox = base / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DARKROOM_KAFKA_BOOTSTRAP": bootstrap,
        "DARKROOM_DATA_DIR": str(data_dir),
        "DARKROOM_FILE_ROOTS": json.dumps([str(inbox)]),
        "DARKROOM_SESSION_TIMEOUT_S": "6",
        "DARKROOM_RETRY_BACKOFF_S": "0.05",
        "DARKROOM_POSTPROCESS_CONFIG": str(config or DEFAULT_CONFIG),
        "DARKROOM_LOG_LEVEL": "info",
        **(extra_env or {}),
    }
    wenv = WorkerEnv(bootstrap, data_dir, inbox, env, log=base / "worker.log")
    with open(wenv.log, "ab") as out:  # type: ignore[arg-type]
        wenv.proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "worker"], env=env,
                                     cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return wenv


def stop_worker(wenv: WorkerEnv) -> None:
    if wenv.proc and wenv.proc.poll() is None:
        wenv.proc.terminate()
        try:
            wenv.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            wenv.proc.kill()
            wenv.proc.wait()


@pytest.fixture(scope="session")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerEnv]:
    """One worker (router + all processor agents + sink) for the whole session."""
    wenv = start_worker(kafka_bootstrap, tmp_path_factory.mktemp("worker"))
    yield wenv
    stop_worker(wenv)


class TopicReader:
    """Reads a topic from the beginning with a fresh consumer group (no latest-offset lookups)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "log_level": 0,
        })
        md = self.consumer.list_topics(topic, timeout=10)
        parts = md.topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        self.messages: list[Any] = []

    def read_until(self, pred: Callable[[list[Any]], bool], timeout: float = 60.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.messages):
                return self.messages
            for m in self.consumer.consume(500, timeout=0.2):
                if m.error() is None:
                    self.messages.append(m)
        if pred(self.messages):
            return self.messages
        raise AssertionError(f"condition not met on {self.topic} after {timeout}s "
                             f"({len(self.messages)} messages)")

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def read_topic(kafka_bootstrap: str) -> Iterator[Callable[[str], TopicReader]]:
    readers: list[TopicReader] = []

    def make(topic: str) -> TopicReader:
        r = TopicReader(kafka_bootstrap, topic)
        readers.append(r)
        return r

    yield make
    for r in readers:
        r.close()
