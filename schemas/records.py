"""Typed records for the Avro contracts in ``schemas/``.

Field names and defaults mirror the ``.avsc`` files exactly (a test checks it), so
``Record.from_bytes(Record(...).to_bytes())`` round-trips and raw clients see the same data.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import schemas

R = TypeVar("R", bound="AvroRecord")


def now_ms() -> int:
    return int(time.time() * 1000)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return names


@dataclass
class AvroRecord:
    SCHEMA: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        # A shallow dict: asdict() deep-copies every list and costs ~10x on the router's hot path.
        return {name: getattr(self, name) for name in _field_names(type(self))}

    def to_bytes(self) -> bytes:
        return schemas.encode(self.SCHEMA, self.to_dict())

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        names = _field_names(cls)
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_bytes(cls: type[R], data: bytes) -> R:
        return cls.from_dict(schemas.decode(cls.SCHEMA, data))


@dataclass
class UploadEvent(AvroRecord):
    SCHEMA: ClassVar[str] = "UploadEvent"
    asset_id: str
    uri: str
    filename: str
    folder: str = "/"
    content_type: str = ""
    size_bytes: int = -1
    uploaded_at: int = 0
    postprocess: list[str] = field(default_factory=list)
    mode: str = "async"
    notification_url: str | None = None
    on_success: str | None = None
    tags: list[str] = field(default_factory=list)
    context: dict[str, str] = field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    format: str | None = None
    duration: float | None = None
    bitrate: int | None = None
    replay: bool = False
    reply_to: str | None = None
    replay_tasks: list[str] = field(default_factory=list)
    moderation: str | None = None
    definitions_version: int = 0
    eager_notification_url: str | None = None
    reprocess_id: str | None = None

    def properties(self) -> dict[str, Any]:
        """Trigger-rule properties (canonical names); absent values are left out."""
        props: dict[str, Any] = {"folder": self.folder}
        if self.size_bytes >= 0:
            props["file_size"] = self.size_bytes
        for name in ("width", "height", "format", "duration", "bitrate"):
            value = getattr(self, name)
            if value is not None:
                props[name] = value
        return props


@dataclass
class TaskRequest(AvroRecord):
    SCHEMA: ClassVar[str] = "TaskRequest"
    request_id: str
    asset_id: str
    task: str
    postprocess: str
    uri: str
    mode: str = "async"
    filename: str = ""
    folder: str = "/"
    content_type: str = ""
    size_bytes: int = -1
    width: int | None = None
    height: int | None = None
    format: str | None = None
    duration: float | None = None
    bitrate: int | None = None
    params_json: str = "{}"
    attempt: int = 1
    requested_at: int = 0
    replay: bool = False
    definitions_version: int = 0
    bundle_json: str = "[]"

    def members(self) -> list[TaskRequest]:
        """The requests that travel with this one (``bundle_json``), each a whole request
        (validated by agents.streams.validation.task_request)."""
        return [self.member(m) for m in json.loads(self.bundle_json or "[]")]

    def member(self, entry: dict[str, str]) -> TaskRequest:
        """The request one ``bundle_json`` entry names: this one's fields, its own identity."""
        return dataclasses.replace(self, request_id=entry["request_id"], task=entry["task"],
                                   postprocess=entry["postprocess"],
                                   params_json=entry["params_json"], bundle_json="[]")

    def as_entry(self) -> dict[str, str]:
        """This request as a ``bundle_json`` entry (what :meth:`member` reads back)."""
        return {"request_id": self.request_id, "task": self.task,
                "postprocess": self.postprocess, "params_json": self.params_json}

    def properties(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "folder": self.folder,
            "filename": self.filename,
            "content_type": self.content_type,
        }
        if self.size_bytes >= 0:
            props["file_size"] = self.size_bytes
        for name in ("width", "height", "format", "duration", "bitrate"):
            value = getattr(self, name)
            if value is not None:
                props[name] = value
        return props

    @property
    def params(self) -> dict[str, Any]:
        value = json.loads(self.params_json or "{}")
        return value if isinstance(value, dict) else {}


@dataclass
class TaskResult(AvroRecord):
    SCHEMA: ClassVar[str] = "TaskResult"
    request_id: str
    asset_id: str
    task: str
    postprocess: str
    status: str
    data_json: str = "{}"
    verdicts_json: str = "[]"
    error: str | None = None
    error_kind: str | None = None
    attempts: int = 1
    duration_ms: float = 0.0
    processor_version: str = ""
    worker: str = ""
    finished_at: int = 0
    replay: bool = False

    @property
    def data(self) -> dict[str, Any]:
        value = json.loads(self.data_json or "{}")
        return value if isinstance(value, dict) else {}

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        value = json.loads(self.verdicts_json or "[]")
        return value if isinstance(value, list) else []


@dataclass
class AssetUpdate(AvroRecord):
    SCHEMA: ClassVar[str] = "AssetUpdate"
    asset_id: str
    version: int
    status: str
    uri: str = ""
    filename: str = ""
    folder: str = "/"
    content_type: str = ""
    size_bytes: int = -1
    info_json: str = "{}"
    tags: list[str] = field(default_factory=list)
    context: dict[str, str] = field(default_factory=dict)
    metadata_json: str = "{}"
    results_json: str = "{}"
    notices: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    updated_at: int = 0


@dataclass
class DeadLetter(AvroRecord):
    SCHEMA: ClassVar[str] = "DeadLetter"
    source_topic: str
    error: str
    original: bytes
    asset_id: str | None = None
    task: str | None = None
    error_kind: str = "permanent"
    attempts: int = 1
    failed_at: int = 0
    original_key: bytes | None = None
    source_partition: int = -1
    source_offset: int = -1
    original_kind: str = "embedded"
    original_size: int = -1
    original_sha256: str | None = None


@dataclass
class WebhookDelivery(AvroRecord):
    SCHEMA: ClassVar[str] = "WebhookDelivery"
    delivery_id: str
    asset_id: str
    version: int
    event: str
    url: str
    payload: bytes
    attempt: int = 1
    due_at: int = 0
    created_at: int = 0


@dataclass
class AssetCommand(AvroRecord):
    SCHEMA: ClassVar[str] = "AssetCommand"
    asset_id: str
    command: str
    message: str = ""
    issued_by: str = ""
    issued_at: int = 0
    command_id: str = ""
    payload: str = ""


ALL_RECORDS: tuple[type[AvroRecord], ...] = (
    UploadEvent,
    TaskRequest,
    TaskResult,
    AssetUpdate,
    DeadLetter,
    WebhookDelivery,
    AssetCommand,
)
