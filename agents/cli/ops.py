"""Operations commands: ``dlq`` (list, show, requeue, purge), ``replay``, ``status`` and
``webhooks replay``. Topics are read with :mod:`agents.kafka.reading` (to the end by idleness,
never by end offsets)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from agents.cli.common import cluster_settings
from agents.composition import Runtime
from agents.settings import Settings


# ------------------------------------------------------------------------------ webhooks
@click.group()
def webhooks() -> None:
    """Webhook deliveries."""


@webhooks.command("replay")
@click.option("--idle", default=3.0, show_default=True,
              help="stop after this many seconds without a new dead letter")
@click.option("--dry-run", is_flag=True, help="list what would be re-sent")
def webhooks_replay(idle: float, dry_run: bool) -> None:
    """Re-send the dead letters of darkroom.dlq.webhooks (each once: progress is committed)."""
    from agents.kafka.broker import kafka_cluster
    from agents.kafka.reading import read_committed
    from schemas.records import DeadLetter, WebhookDelivery

    settings = cluster_settings()
    with kafka_cluster(settings) as bootstrap, Runtime.open(settings, bootstrap) as root:
        store = root.store
        sent = skipped = 0
        for msg in read_committed(bootstrap, settings.topic("dlq", "webhooks"),
                                  "darkroom-replay-webhooks", idle_s=idle, commit=not dry_run,
                                  session_timeout_s=settings.session_timeout_s):
            value = msg.value()
            if value is None:
                continue
            letter = DeadLetter.from_bytes(value)
            d = WebhookDelivery.from_bytes(letter.original)
            row = store.delivery(d.delivery_id)
            if row is not None and row["state"] in ("delivered", "refused"):
                skipped += 1
                continue
            click.echo(f"{'would re-send' if dry_run else 're-sent'} {d.asset_id} -> {d.url} "
                       f"(was: {letter.error})")
            if not dry_run:
                fresh = WebhookDelivery(**{**d.to_dict(), "attempt": 1, "due_at": 0})
                root.producer.send(settings.topic("webhooks"), d.asset_id, fresh.to_bytes())
                store.mark_delivery(d.delivery_id, "queued", 0, None, "replayed")
            sent += 1
        if root.built("producer"):
            root.producer.flush_sync()
    click.echo(f"{sent} dead letter(s) {'to re-send' if dry_run else 're-sent'}, "
               f"{skipped} already settled")


# ------------------------------------------------------------------------------ replay
@click.command()
@click.option("--from", "from_", help="uploads written at/after this time (ISO 8601 or epoch)")
@click.option("--to", help="uploads written at/before this time")
@click.option("--from-offset", multiple=True, help="PARTITION:OFFSET of darkroom.uploads")
@click.option("--asset", "assets", multiple=True, help="asset id (repeatable)")
@click.option("--folder", help="folder prefix")
@click.option("--task", "tasks", multiple=True, help="only these post-processes/tasks")
@click.option("--missing", help="assets that never got a result for this post-process/task")
@click.option("--dry-run", is_flag=True, help="print what would run")
@click.option("--max-rate", type=float, help="events per second at most")
@click.option("--name", help="replay name (resume key); default: derived from the selectors")
@click.option("--restart", is_flag=True, help="ignore saved progress of this replay")
def replay(from_: str | None, to: str | None, from_offset: tuple[str, ...],
           assets: tuple[str, ...], folder: str | None, tasks: tuple[str, ...],
           missing: str | None, dry_run: bool, max_rate: float | None, name: str | None,
           restart: bool) -> None:
    """Re-run post-processing for chosen uploads (resumable; results overwrite idempotently)."""
    from agents.replay import Selector, parse_time, run_replay
    from sinks.objects.base import normalize_folder

    settings = cluster_settings()
    offsets = {}
    for item in from_offset:
        part, _, off = item.partition(":")
        if not part.isdigit() or not off.isdigit():
            raise click.BadParameter(f"--from-offset {item!r}: expected PARTITION:OFFSET")
        offsets[int(part)] = int(off)
    sel = Selector(assets=list(assets), folder=normalize_folder(folder) if folder else None,
                   tasks=list(tasks), missing=missing,
                   from_ms=parse_time(from_) if from_ else None,
                   to_ms=parse_time(to) if to else None, from_offsets=offsets)
    started = time.monotonic()
    last_print = [0.0]

    def progress(ev: Any, n: int) -> None:
        if dry_run:
            click.echo(f"would replay {ev.asset_id} {ev.folder}/{ev.filename} "
                       f"tasks={ev.replay_tasks or 'all'}")
            return
        now = time.monotonic()
        if now - last_print[0] >= 1.0:
            last_print[0] = now
            rate = n / max(now - started, 1e-6)
            click.echo(f"\rreplayed {n} ({rate:.1f}/s)", nl=False, err=True)

    with Runtime.open(settings) as root:
        try:
            replay_name, sent = run_replay(root, sel, name=name, dry_run=dry_run,
                                           max_rate=max_rate, restart=restart,
                                           on_event=progress)
        except KeyboardInterrupt as exc:
            click.echo(f"\n{exc}", err=True)
            sys.exit(130)
    rate = sent / max(time.monotonic() - started, 1e-6)
    verb = "would replay" if dry_run else "replayed"
    click.echo(f"\n{replay_name}: {verb} {sent} upload(s) ({rate:.1f}/s)", err=not dry_run)


# ------------------------------------------------------------------------------ dlq
@click.group()
def dlq() -> None:
    """Dead letters per task (darkroom.dlq.<task>): list, show, requeue, purge."""


def _dead_letters(settings: Settings, name: str) -> list[tuple[int, int, Any]]:
    """Every dead letter of darkroom.dlq.<name> (read to the end by idleness, never by end
    offsets), with its partition and offset (:func:`agents.operations.read_dead_letters`)."""
    from agents.kafka.reading import TopicMissing
    from agents.operations import read_dead_letters

    def skipped(part: int, off: int, why: str) -> None:
        click.echo(f"skipping {part}:{off}: {why}", err=True)

    try:
        return list(read_dead_letters(settings.kafka_bootstrap or "",
                                      settings.topic("dlq", name), on_skip=skipped))
    except TopicMissing as exc:
        raise click.ClickException(str(exc)) from exc


def _original_of(settings: Settings, dl: Any) -> bytes | None:
    """The original value of a dead letter (:func:`agents.operations.original_of`)."""
    from agents.operations import original_of

    return original_of(settings.kafka_bootstrap or "", dl)


def _letter_ref(ref: str) -> tuple[int, int]:
    part, _, off = ref.partition(":")
    if not part.isdigit() or not off.isdigit():
        raise click.BadParameter(f"{ref!r}: expected PARTITION:OFFSET (see `darkroom dlq list`)")
    return int(part), int(off)


@dlq.command("list")
@click.argument("task")
@click.option("--all", "show_all", is_flag=True, help="include requeued and purged ones")
def dlq_list(task: str, show_all: bool) -> None:
    """Dead letters of TASK ('uploads' and 'webhooks' work too)."""
    settings = cluster_settings()
    with Runtime.open(settings) as root:
        marks = root.store.dlq_marks(settings.topic("dlq", task))
    shown = 0
    for part, off, dl in _dead_letters(settings, task):
        mark = marks.get((part, off))
        if mark and not show_all:
            continue
        shown += 1
        click.echo(f"{part}:{off}  {dl.asset_id or '-':<20} attempts={dl.attempts} "
                   f"{dl.error_kind:<9} {mark or ''} {dl.error[:100]}")
    click.echo(f"{shown} dead letter(s)", err=True)


@dlq.command("show")
@click.argument("task")
@click.argument("ref")
def dlq_show(task: str, ref: str) -> None:
    """One dead letter (PARTITION:OFFSET) with its original message decoded."""
    import schemas

    settings = cluster_settings()
    want = _letter_ref(ref)
    for part, off, dl in _dead_letters(settings, task):
        if (part, off) == want:
            original: Any
            raw = _original_of(settings, dl) or b""
            kind = schemas.schema_name_of(raw)
            try:
                original = schemas.decode(kind, raw) if kind else raw.hex()[:200]
            except schemas.SchemaError:
                original = raw.hex()[:200]
            body = {**dl.to_dict(), "original": original, "original_schema": kind,
                    "original_key": dl.original_key.decode(errors="replace")
                    if dl.original_key else None}
            click.echo(json.dumps(body, indent=2, default=str, sort_keys=True))
            return
    raise click.ClickException(f"no dead letter {ref} in {settings.topic('dlq', task)}")


@dlq.command("requeue")
@click.argument("task")
@click.argument("refs", nargs=-1)
@click.option("--all", "every", is_flag=True, help="every dead letter not yet requeued/purged")
def dlq_requeue(task: str, refs: tuple[str, ...], every: bool) -> None:
    """Send dead letters back through the normal path (their source topic)."""
    from agents.operations import requeue_letter

    settings = cluster_settings()
    if not refs and not every:
        raise click.UsageError("name dead letters (PARTITION:OFFSET) or use --all")
    topic = settings.topic("dlq", task)
    with Runtime.open(settings) as root:
        marks = root.store.dlq_marks(topic)
        wanted = {_letter_ref(r) for r in refs}
        n = 0
        for part, off, dl in _dead_letters(settings, task):
            if (wanted and (part, off) not in wanted) or (every and (part, off) in marks):
                continue
            if not requeue_letter(root, settings.kafka_bootstrap or "", topic, part, off, dl):
                click.echo(f"skipped {part}:{off}: its original ({dl.original_kind}) cannot be "
                           "requeued", err=True)
                continue
            n += 1
            click.echo(f"requeued {part}:{off} ({dl.asset_id}) -> {dl.source_topic}")
    click.echo(f"{n} dead letter(s) requeued", err=True)


@dlq.command("purge")
@click.argument("task")
@click.argument("refs", nargs=-1)
@click.option("--all", "every", is_flag=True)
def dlq_purge(task: str, refs: tuple[str, ...], every: bool) -> None:
    """Mark dead letters as handled (hidden from `list`; the log itself is append-only)."""
    settings = cluster_settings()
    if not refs and not every:
        raise click.UsageError("name dead letters (PARTITION:OFFSET) or use --all")
    topic = settings.topic("dlq", task)
    wanted = {_letter_ref(r) for r in refs}
    n = 0
    with Runtime.open(settings) as root:
        for part, off, _dl in _dead_letters(settings, task):
            if wanted and (part, off) not in wanted:
                continue
            root.store.mark_dead_letter(topic, part, off, "purged")
            n += 1
    click.echo(f"{n} dead letter(s) purged")


# ------------------------------------------------------------------------------ status
@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--window", default=60.0, show_default=True, help="seconds for the rate")
def status(as_json: bool, window: float) -> None:
    """Per task: pending, in flight, done, failed, dead letters, rate (from the store and the
    consumer group's committed offsets; never from end offsets)."""
    from agents.operations import task_status

    settings = cluster_settings()
    with Runtime.open(settings) as root:
        figures = task_status(root, window)
    rows, stalled = figures["tasks"], figures["stalled"]
    if as_json:
        click.echo(json.dumps({"tasks": rows, "stalled": stalled}, sort_keys=True))
        return
    cols = ["task", "pending", "in_flight", "done", "failed", "dead_letters", "rate_per_s",
            "committed_requests"]
    click.echo("  ".join(f"{c:>12}" if c != "task" else f"{c:<18}" for c in cols))
    for r in rows:
        click.echo("  ".join(f"{r[c]!s:>12}" if c != "task" else f"{r[c]:<18}" for c in cols))
    for st in stalled:
        click.echo(f"STALLED {st['worker']} {st['agent']} on {st['topic']}[{st['partition']}]@"
                   f"{st['offset']}: {st['attempts']} attempts, last error: {st['error']}")


COMMANDS = (dlq, replay, status, webhooks)
