"""The one way an upload enters the pipeline: :func:`ingest`, used by the HTTP API
(``POST /v1/assets``) and the command line (``darkroom process``).

Nothing is half-written. In order: the fields are checked against :mod:`agents.policy.limits`
(:class:`UploadFields`); the file must not be empty nor over ``DARKROOM_MAX_UPLOAD_BYTES`` and
its name must be storable; its content type is taken from its magic bytes (never from the name,
unless the caller gives a fallback for bytes that say nothing); an image's header is probed
(no pixel decode) and refused over ``DARKROOM_MAX_IMAGE_PIXELS`` (decompression bombs); then the
object is stored, the asset's placeholder written and the UploadEvent published. If the
placeholder or the publishing fails, the object and the placeholder are removed again.

Failures are typed, never HTTP: :class:`InvalidUpload` (the request is wrong),
:class:`UploadTooLarge`, :class:`UnprocessableUpload` (not a readable image, too many pixels) and
:class:`IngestUnavailable` (storage, database or broker trouble; nothing was kept). The API maps
them to 400 / 413 / 422 / 503; the CLI prints them and exits non-zero.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from agents.policy import limits
from processors.media.sniff import OCTET, sniff
from schemas.records import UploadEvent, now_ms
from sinks.objects.base import normalize_folder, safe_filename
from sinks.store.metadata import UploadRecord

if TYPE_CHECKING:
    from agents.composition import Runtime
    from agents.policy.postprocess import PostProcessConfig

log = logging.getLogger("darkroom.ingest")


# ---------------------------------------------------------------------------------- errors
class IngestError(Exception):
    """An upload that was not accepted; ``detail`` says why (nothing was kept)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidUpload(IngestError):
    """A field, the file name or the (empty) file is refused, or the storage refuses the key."""


class UploadTooLarge(IngestError):
    """The file is larger than ``DARKROOM_MAX_UPLOAD_BYTES``."""


class UnprocessableUpload(IngestError):
    """An image whose header does not parse, or that claims too many pixels."""


class IngestUnavailable(IngestError):
    """Storage, database or broker trouble: try again later."""


# ---------------------------------------------------------------------------------- fields
def split_list(values: list[str] | None) -> list[str]:
    """Repeatable and/or comma-separated form values -> clean list."""
    out: list[str] = []
    for v in values or []:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def parse_context(raw: str | None) -> dict[str, str]:
    """A flat JSON object of strings, or Cloudinary's ``key=value|key2=value2``, within the
    limits of :func:`agents.policy.limits.context` (raises
    :class:`agents.policy.limits.LimitError`)."""
    if not raw:
        return {}
    limits.raw_bytes(len(raw.encode("utf-8", "surrogatepass")), "context",
                     limits.MAX_CONTEXT_RAW_BYTES)
    raw = raw.strip()
    if raw.startswith("{"):
        return limits.context_json(raw)
    pairs = {}
    for part in raw.split("|"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise limits.LimitError(f"context entry {part[:40]!r} is not key=value")
        pairs[key.strip()] = value
    return limits.context(pairs)


def notification_url(value: str | None, allow: Sequence[str],
                     field: str = "notification_url") -> str | None:
    """:func:`agents.policy.limits.url`, and at once what the delivery's SSRF guard would refuse
    without a DNS query: IP literals that are not public (loopback, private, metadata, ...)
    and localhost names, unless DARKROOM_WEBHOOK_ALLOW exempts them. Other names are resolved
    and checked when the webhook is delivered."""
    url = limits.url(value, field)
    if url is None:
        return None
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    exempt = {a.strip().strip("[]").rstrip(".").lower() for a in allow}
    if host in ("localhost",) or host.endswith(".localhost"):
        if host not in exempt:
            raise limits.LimitError(f"{field} host {host!r} is a loopback name")
        return url
    if not _ip_literal(host):
        return url
    from sinks.webhooks import HostResolutionError, UnsafeURLError, check_url

    try:
        check_url(url, allow)  # an IP literal: getaddrinfo parses it, no DNS query
    except UnsafeURLError as exc:
        raise limits.LimitError(f"{field} {exc}") from exc
    except HostResolutionError:
        pass
    return url


def _ip_literal(host: str) -> bool:
    """An IP address, also in the legacy IPv4 forms resolvers accept (``0x7f000001``,
    ``2130706433``, ``127.1``): none of them needs a DNS query to be checked."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
        return True
    except OSError:
        return False


@dataclass
class UploadFields:
    """The fields of an upload besides the file, each checked with :mod:`agents.policy.limits`:
    :meth:`add` takes one as it arrives (the API's form parser: a bad field is refused before
    the file after it is read); :meth:`checked` checks all of them (what :func:`ingest` does, so
    fields set directly are held to the same limits). Unknown names are ignored; a repeated
    single-valued field keeps its last value."""

    folder: str = "/"
    postprocess: list[str] = field(default_factory=list)
    mode: Literal["async", "sync"] = "async"
    notification_url: str | None = None
    eager_notification_url: str | None = None
    on_success: str | None = None
    tags: list[str] = field(default_factory=list)
    context: dict[str, str] = field(default_factory=dict)
    moderation: str | None = None  # 'manual' or a post-process name (checked by ingest)
    webhook_allow: tuple[str, ...] = ()  # DARKROOM_WEBHOOK_ALLOW, for notification_url
    #: a preset's name (agents.presets): its post-processes and defaults apply
    upload_preset: str | None = None
    #: the fields :meth:`add` took (a preset's defaults never replace them)
    given: set[str] = field(default_factory=set)

    def add(self, name: str, value: str) -> None:
        """Take one field (raises ValueError naming the limit)."""
        self.given.add(name)
        if name == "upload_preset":
            self.upload_preset = limits.names([value], "upload_preset")[0] if value else None
        elif name == "folder":
            self.folder = normalize_folder(limits.folder(value))
        elif name == "postprocess":
            self.postprocess = limits.names([*self.postprocess, *split_list([value])])
        elif name == "tags":
            self.tags = limits.tags([*self.tags, *split_list([value])])
        elif name == "mode":
            limits.one_of(value, "mode", ("async", "sync"))
            self.mode = "sync" if value == "sync" else "async"
        elif name == "notification_url":
            self.notification_url = notification_url(value or None, self.webhook_allow)
        elif name == "eager_notification_url":
            self.eager_notification_url = notification_url(value or None, self.webhook_allow,
                                                           name)
        elif name == "on_success":
            self.on_success = limits.script(value or None)
        elif name == "context":
            self.context = parse_context(value)
        elif name == "moderation":
            self.moderation = limits.moderation(value or None)

    def checked(self) -> UploadFields:
        """A copy with every field checked and normalised (raises ValueError naming the limit;
        checking a checked copy changes nothing)."""
        limits.one_of(self.mode, "mode", ("async", "sync"))
        return dataclasses.replace(
            self,
            folder=normalize_folder(limits.folder(self.folder)),
            postprocess=limits.names(self.postprocess),
            tags=limits.tags(self.tags),
            notification_url=notification_url(self.notification_url, self.webhook_allow),
            eager_notification_url=notification_url(self.eager_notification_url,
                                                    self.webhook_allow,
                                                    "eager_notification_url"),
            on_success=limits.script(self.on_success),
            context=limits.context(self.context),
            moderation=limits.moderation(self.moderation),
        )


def stored_filename(raw: str | None) -> str:
    """The stored file name: the client's base name without control characters, short enough
    for the object stores to write (:func:`agents.policy.limits.stored_filename`)."""
    return limits.stored_filename(safe_filename(raw or "upload"))


# ---------------------------------------------------------------------------------- ingest
@dataclass(frozen=True)
class Ingested:
    """An accepted upload: its event (published) and where its object is."""

    event: UploadEvent
    uri: str

    @property
    def asset_id(self) -> str:
        return self.event.asset_id


def new_asset_id() -> str:
    return uuid.uuid4().hex[:20]


def inspect(path: Path, max_pixels: int) -> tuple[str, dict[str, Any]]:
    """Content type by magic bytes; an image's header probe (no pixel decode) within
    ``max_pixels`` (:class:`UnprocessableUpload` otherwise). Blocking."""
    from processors.media.imaging import probe_header
    from processors.registry import ProcessorError

    with open(path, "rb") as f:
        head = f.read(512)
    ctype = sniff(head)
    props: dict[str, Any] = {}
    if ctype.startswith("image/"):
        try:
            props = probe_header(path)
        except ProcessorError as exc:
            raise UnprocessableUpload(f"not a readable image: {exc}") from exc
        pixels = int(props["width"]) * int(props["height"])
        if pixels > max_pixels:
            raise UnprocessableUpload(
                f"image is {props['width']}x{props['height']} = {pixels} pixels, over the "
                f"limit of {max_pixels} (decompression bomb guard)")
    return ctype, props


def placeholder(ev: UploadEvent) -> UploadRecord:
    """The asset's row before the router has seen its event (status pending, no tasks)."""
    return UploadRecord(
        asset_id=ev.asset_id, upload_key="", uri=ev.uri, filename=ev.filename,
        folder=ev.folder, content_type=ev.content_type, size_bytes=ev.size_bytes, mode=ev.mode,
        notification_url=ev.notification_url, on_success=ev.on_success,
        eager_notification_url=ev.eager_notification_url, properties=ev.properties(),
        tags=ev.tags, context=ev.context,
        uploaded_at=ev.uploaded_at, tasks=[], reply_to=ev.reply_to, requested=list(ev.postprocess),
        moderation=ev.moderation,
    )


def ingest(root: Runtime, path: Path, filename: str | None, fields: UploadFields, *,
           asset_id: str | None = None, reply_to: str | None = None,
           fallback_type: str | None = None) -> Ingested:
    """Store, record and publish one upload (blocking; see the module docstring).

    ``path``: the file (left where it is); ``filename``: the client's name for it;
    ``asset_id``: the id to use (default: a new one; the API picks it first to await replies);
    ``reply_to``: the reply topic of a sync upload; ``fallback_type``: the content type to
    record when the bytes are not a known media type (the CLI's guess from the name; the API
    gives none). Raises an :class:`IngestError`."""
    s = root.settings
    if fields.upload_preset:
        from agents.presets import apply_preset

        fields = apply_preset(root, fields)  # (the API applied it already: then a no-op)
    try:
        f = fields.checked()
    except ValueError as exc:
        raise InvalidUpload(str(exc)) from exc
    # the definitions this upload is accepted under: a router holding older ones reloads
    try:
        definitions_version = root.definitions.accepting_version()
    except Exception as exc:
        log.exception("reading the post-process definitions failed")
        raise IngestUnavailable("the post-process definitions cannot be read") from exc
    config = root.definitions.config
    unknown = config.unknown_names(f.postprocess)
    if unknown:
        raise InvalidUpload(config.unknown_message(unknown))
    f = _with_moderation(config, f)
    size = path.stat().st_size
    if size == 0:
        raise InvalidUpload("the uploaded file is empty")
    if size > s.max_upload_bytes:
        raise UploadTooLarge(f"upload larger than {s.max_upload_bytes} bytes")
    try:
        name = stored_filename(filename)
    except limits.LimitError as exc:
        raise InvalidUpload(str(exc)) from exc
    ctype, props = inspect(path, s.max_image_pixels)
    if ctype == OCTET and fallback_type:
        ctype = fallback_type
    asset_id = asset_id or new_asset_id()
    uri = _store(root, path, asset_id, f.folder, name, ctype or OCTET)
    ev = UploadEvent(
        asset_id=asset_id, uri=uri, filename=name, folder=f.folder, content_type=ctype,
        size_bytes=size, uploaded_at=now_ms(), postprocess=f.postprocess, mode=f.mode,
        notification_url=f.notification_url, on_success=f.on_success, tags=f.tags,
        eager_notification_url=f.eager_notification_url,
        context=f.context, width=props.get("width"), height=props.get("height"),
        format=props.get("format"), reply_to=reply_to, moderation=f.moderation,
        definitions_version=definitions_version,
    )
    try:
        root.store.create_placeholder(placeholder(ev))
        root.producer.send(s.topic("uploads"), ev.asset_id, ev.to_bytes())
        root.producer.flush_sync(timeout=10)
    except Exception as exc:
        log.exception("publishing upload %s failed", asset_id)
        _roll_back(root, asset_id, uri)
        raise IngestUnavailable("the upload could not be queued; nothing was kept") from exc
    return Ingested(ev, uri)


def _with_moderation(config: PostProcessConfig, f: UploadFields) -> UploadFields:
    """``moderation`` names ``manual`` or a post-process with a ``moderate`` rule; the
    deciding post-process is added to the upload's (it runs even when not enabled)."""
    if f.moderation is None or f.moderation == "manual":
        return f
    pp = config.get(f.moderation)
    if pp is None or not any(v.action == "moderate" for v in pp.validation):
        raise InvalidUpload(
            f"moderation must be 'manual' or the name of a post-process with a 'moderate' "
            f"validation rule; {f.moderation!r} is not")
    listed = f.postprocess if pp.name in f.postprocess else [*f.postprocess, pp.name]
    return dataclasses.replace(f, moderation=pp.name, postprocess=listed)


def _store(root: Runtime, path: Path, asset_id: str, folder: str, filename: str,
           ctype: str) -> str:
    """Write the object: a key the storage refuses is the upload's fault (InvalidUpload), a
    failed write the service's (IngestUnavailable)."""
    from sinks.objects.base import StorageError

    try:
        key = root.storage.original_key(asset_id, folder, filename)
        uri: str = root.storage.put_file(path, key, ctype)
    except StorageError as exc:
        if exc.permanent:
            raise InvalidUpload(f"the upload cannot be stored: {exc}") from exc
        log.exception("storing upload %s failed", asset_id)
        raise IngestUnavailable("the upload could not be stored; nothing was kept") from exc
    return uri


def _roll_back(root: Runtime, asset_id: str, uri: str) -> None:
    """Remove the object and the placeholder of an upload that could not be queued."""
    try:
        root.storage.delete(uri)
    except Exception:
        log.exception("could not remove the object of unqueued upload %s", asset_id)
    try:
        root.store.delete_asset(asset_id)
    except Exception:
        log.exception("could not remove the placeholder of unqueued upload %s", asset_id)
