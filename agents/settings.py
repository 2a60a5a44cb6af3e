"""Typed settings, read from the environment with the ``DARKROOM_`` prefix (and ``.env``).

Every knob has one name here; the CLI and the agents read nothing else.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_POSTPROCESS_FILE = Path(__file__).with_name("default_postprocess.yaml")

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
    max_message_bytes: int = Field(default=1_000_000, description="largest event we produce")
    fetch_max_wait_ms: int = Field(
        default=10, ge=1,
        description="how long a fetch may wait for data; tansu does not answer a waiting fetch "
        "when data arrives, so every hop costs up to this (Apache Kafka does: 500 is fine there)",
    )
    batch_wait_ms: float = Field(
        default=5.0, ge=0.5, description="how long the router/sink wait to fill a batch"
    )

    # --- storage and metadata ---------------------------------------------------------------
    data_dir: Path = Path(".darkroom")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset = SQLite file in data_dir"
    )
    postprocess_config: Path = DEFAULT_POSTPROCESS_FILE
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
    processor_threads: int = Field(default=2, ge=1)
    agent_concurrency: int = Field(default=2, ge=1)
    preview_side: int = Field(default=512, ge=32, description="shared decode size for cheap tasks")

    # --- upload API ---------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_instance: str | None = Field(
        default=None,
        description="name of this API replica (its reply topic); default host-port",
    )
    api_key_hashes: list[str] = Field(
        default_factory=list,
        description="SHA-256 hex digests of the accepted API keys (JSON list); `darkroom apikey`",
    )
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    sync_timeout_s: float = Field(default=30.0, gt=0)
    sync_timeout_policy: Literal["accept", "refuse"] = "accept"
    refused_objects: Literal["delete", "quarantine"] = "delete"

    # --- worker ------------------------------------------------------------------------------
    agents: list[AgentName] = Field(
        default_factory=lambda: list(ALL_AGENTS),
        description="which agents this worker runs (JSON list), e.g. router-only workers",
    )
    tasks: list[str] | None = Field(
        default=None, description="task agents this worker runs (JSON list); unset = all"
    )
    worker_id: str = "darkroom"
    web_port: int = 0  # 0 = Faust web server off
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

    def topic(self, *parts: str) -> str:
        return ".".join((self.topic_prefix, *parts))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
