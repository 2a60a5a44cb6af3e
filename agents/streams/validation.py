"""Messages read from Kafka, decoded and validated with the same limits as the HTTP API.

Any producer can write to any topic, so an event is trusted no more than an HTTP request: each
function decodes one message and checks every field against :mod:`agents.policy.limits`, raising
:class:`~agents.streams.poison.Poison` with a reason a producer can act on. Media properties
declared by
an upload event are *hints*: the router probes the file and the file wins.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from agents.policy import limits
from agents.policy.limits import LimitError
from agents.streams.poison import Msg, Poison
from schemas.records import (
    AssetCommand,
    AvroRecord,
    TaskRequest,
    TaskResult,
    UploadEvent,
    WebhookDelivery,
)

R = TypeVar("R", bound=AvroRecord)

MODES = ("async", "sync")
RESULT_STATUSES = ("ok", "error")
MAX_PARAMS_JSON = 64 * 1024
MAX_REQUEST_ID = 64
MAX_BUNDLE = 16  # requests travelling with one (agents.streams.bundles)
BUNDLE_KEYS = frozenset({"request_id", "task", "postprocess", "params_json"})
TASK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # a member's task names a topic


def _decode(cls: type[R], msg: Msg, what: str) -> R:
    """Decode or say why not: an undecodable value is *malformed*, one outside the limits
    *invalid* (both are dead-lettered with that reason)."""
    from schemas import SchemaError

    try:
        return cls.from_bytes(_body(msg, what))
    except SchemaError as exc:
        raise Poison(f"malformed {what}: {exc}") from exc


def _body(msg: Msg, what: str) -> bytes:
    if msg.value is None:
        raise Poison(f"malformed {what}: a tombstone (null value)")
    if not msg.value:
        raise Poison(f"malformed {what}: an empty value")
    return msg.value


def _key_is(msg: Msg, asset_id: str) -> None:
    if not msg.key:
        raise Poison("the message has no key (the key must be the asset id)")
    if msg.key != asset_id.encode("utf-8"):
        raise Poison(f"the key {msg.key[:60]!r} is not the asset id {asset_id!r}")


def _checked(what: str, check: Any, *args: Any) -> None:
    try:
        check(*args)
    except LimitError as exc:
        raise Poison(f"invalid {what}: {exc}") from exc


def upload_event(msg: Msg, reply_prefix: str) -> UploadEvent:
    """Decode and validate an upload event (``reply_prefix``: ``<prefix>.replies.``)."""
    ev = _decode(UploadEvent, msg, "upload event")
    _checked("upload event", _check_upload, ev, reply_prefix)
    _key_is(msg, ev.asset_id)
    return ev


def _check_upload(ev: UploadEvent, reply_prefix: str) -> None:
    from sinks.objects.base import normalize_folder

    limits.asset_id(ev.asset_id)
    limits.uri(ev.uri)
    limits.filename(ev.filename)
    limits.folder(ev.folder)
    try:
        normalize_folder(ev.folder)
    except ValueError as exc:
        raise LimitError(str(exc)) from exc
    limits.bounded_text(ev.content_type, "content_type", limits.MAX_CONTENT_TYPE)
    if ev.size_bytes < -1 or ev.uploaded_at < 0:
        raise LimitError("size_bytes must be >= -1 and uploaded_at >= 0")
    limits.names(ev.postprocess)
    limits.names(ev.replay_tasks, "replay_tasks")
    limits.one_of(ev.mode, "mode", MODES)
    limits.url(ev.notification_url)
    limits.url(ev.eager_notification_url, "eager_notification_url")
    if ev.reprocess_id is not None:
        limits.asset_id(ev.reprocess_id, "reprocess_id")
    limits.script(ev.on_success)
    limits.tags(ev.tags)
    limits.context(ev.context)
    limits.dimension(ev.width, "width")
    limits.dimension(ev.height, "height")
    if ev.format is not None:
        limits.bounded_text(ev.format, "format", limits.MAX_FORMAT)
    limits.finite(ev.duration, "duration")
    if ev.bitrate is not None and ev.bitrate < 0:
        raise LimitError("bitrate must be >= 0")
    if ev.definitions_version < 0:
        raise LimitError("definitions_version must be >= 0")
    if ev.reply_to is not None:
        limits.topic_name(ev.reply_to)
        if not ev.reply_to.startswith(reply_prefix) or len(ev.reply_to) == len(reply_prefix):
            raise LimitError(f"reply_to must be a {reply_prefix}<instance> topic")


def task_request(msg: Msg, task: str) -> TaskRequest:
    req = _decode(TaskRequest, msg, "task request")
    _checked("task request", _check_request, req, task)
    _key_is(msg, req.asset_id)
    return req


def _check_request(req: TaskRequest, task: str) -> None:
    _ids(req.request_id, req.asset_id, req.postprocess)
    if req.task != task:
        raise LimitError(f"a {req.task[:40]!r} request on the {task!r} task topic")
    limits.uri(req.uri)
    limits.one_of(req.mode, "mode", MODES)
    limits.filename(req.filename)
    limits.folder(req.folder)
    limits.dimension(req.width, "width")
    limits.dimension(req.height, "height")
    limits.finite(req.duration, "duration")
    if len(req.params_json) > MAX_PARAMS_JSON:
        raise LimitError(f"params_json is longer than {MAX_PARAMS_JSON} bytes")
    if not isinstance(strict_json(req.params_json, "params_json"), dict):
        raise LimitError("params_json must be a JSON object")
    if req.attempt < 1:
        raise LimitError("attempt must be >= 1")
    if req.definitions_version < 0:
        raise LimitError("definitions_version must be >= 0")
    _check_bundle(req)


def _check_bundle(req: TaskRequest) -> None:
    """``bundle_json``: at most MAX_BUNDLE whole requests of other post-processes (each
    checked as a request of its own; none twice, none the carrier's)."""
    if len(req.bundle_json) > MAX_BUNDLE * (MAX_PARAMS_JSON // 4):
        raise LimitError("bundle_json is too long")
    members = strict_json(req.bundle_json, "bundle_json")
    if not isinstance(members, list) or len(members) > MAX_BUNDLE:
        raise LimitError(f"bundle_json must be a JSON list of at most {MAX_BUNDLE} requests")
    seen = {req.postprocess}
    for m in members:
        if not isinstance(m, dict) or set(m) != BUNDLE_KEYS or not all(
                isinstance(v, str) for v in m.values()):
            raise LimitError("each bundle_json entry must hold exactly request_id, task, "
                             "postprocess and params_json, as strings")
        if m["postprocess"] in seen:
            raise LimitError(f"post-process {m['postprocess'][:40]!r} twice in one bundle")
        seen.add(m["postprocess"])
        member = req.member(m)
        if not TASK_NAME.fullmatch(member.task):
            raise LimitError(f"bundle_json names the task {member.task[:40]!r}, not a task name")
        _check_request(member, member.task)


def task_result(msg: Msg) -> TaskResult:
    return parsed_result(msg)[0]


def parsed_result(msg: Msg) -> tuple[TaskResult, dict[str, Any]]:
    """The result and its data, parsed once (the sink's only parse of ``data_json``)."""
    res = _decode(TaskResult, msg, "task result")
    data: dict[str, Any] = {}
    _checked("task result", _check_result, res, data)
    _key_is(msg, res.asset_id)
    return res, data


def _check_result(res: TaskResult, data_out: dict[str, Any]) -> None:
    _ids(res.request_id, res.asset_id, res.postprocess)
    limits.bounded_text(res.task, "task", limits.MAX_NAME)
    limits.one_of(res.status, "status", RESULT_STATUSES)
    data = strict_json(res.data_json, "data_json")
    if not isinstance(data, dict):
        raise LimitError("data_json must be a JSON object")
    data_out.update(data)
    verdicts = strict_json(res.verdicts_json, "verdicts_json")
    if not isinstance(verdicts, list) or not all(isinstance(v, dict) for v in verdicts):
        raise LimitError("verdicts_json must be a JSON list of objects")
    limits.finite(res.duration_ms, "duration_ms")


#: every command kind the sink applies (agents.streams.commands.HANDLERS has one handler each)
COMMANDS = ("refuse", "notice", "moderate", "moderation", "delete", "patch", "reprocess")
#: commands whose message is their whole content (the others carry a JSON ``payload``)
MESSAGE_COMMANDS = ("refuse", "notice", "moderate")
MAX_COMMAND_PAYLOAD = 256 * 1024


def command_payload(cmd: AssetCommand) -> dict[str, Any]:
    """The command's JSON arguments (an empty object when it has none)."""
    if not cmd.payload:
        return {}
    value = strict_json(cmd.payload, "payload")
    if not isinstance(value, dict):
        raise LimitError("payload must be a JSON object")
    return value


def asset_command(msg: Msg) -> AssetCommand:
    cmd = _decode(AssetCommand, msg, "asset command")
    _checked("asset command", _check_command, cmd)
    _key_is(msg, cmd.asset_id)
    return cmd


def _check_command(cmd: AssetCommand) -> None:
    limits.asset_id(cmd.asset_id)
    limits.one_of(cmd.command, "command", COMMANDS)
    limits.bounded_text(cmd.message, "message", 2000, controls=True)
    if cmd.command in MESSAGE_COMMANDS and not cmd.message.strip():
        raise LimitError("message must not be empty")
    limits.bounded_text(cmd.issued_by, "issued_by", 200)
    if len(cmd.payload) > MAX_COMMAND_PAYLOAD:
        raise LimitError(f"payload is larger than {MAX_COMMAND_PAYLOAD} bytes")
    command_payload(cmd)


def webhook_delivery(msg: Msg, max_payload: int) -> WebhookDelivery:
    d = _decode(WebhookDelivery, msg, "webhook delivery")
    _checked("webhook delivery", _check_delivery, d, max_payload)
    return d


def _check_delivery(d: WebhookDelivery, max_payload: int) -> None:
    limits.bounded_text(d.delivery_id, "delivery_id", MAX_REQUEST_ID)
    if not d.delivery_id:
        raise LimitError("delivery_id must not be empty")
    limits.asset_id(d.asset_id)
    limits.url(d.url, "url")
    limits.bounded_text(d.event, "event", limits.MAX_NAME)
    if len(d.payload) > max_payload:
        raise LimitError(f"payload is larger than {max_payload} bytes")
    if d.attempt < 1 or d.version < 0:
        raise LimitError("attempt must be >= 1 and version >= 0")


def _ids(request_id: str, asset_id: str, postprocess: str) -> None:
    if not request_id or len(request_id) > MAX_REQUEST_ID:
        raise LimitError(f"request_id must be 1-{MAX_REQUEST_ID} characters")
    limits.bounded_text(request_id, "request_id", MAX_REQUEST_ID)
    limits.asset_id(asset_id)
    limits.names([postprocess], "postprocess")


def _refuse_constant(name: str) -> Any:
    raise LimitError(f"{name} is not valid JSON (JSON has no NaN or Infinity)")


def strict_json(text: str, field: str) -> Any:
    """JSON as the RFC defines it: no NaN/Infinity (Python's json accepts them; receivers of
    our webhooks and updates would not)."""
    try:
        return json.loads(text or "null", parse_constant=_refuse_constant)
    except LimitError as exc:
        raise LimitError(f"{field}: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise LimitError(f"{field} is not valid JSON: {str(exc)[:200]}") from exc
