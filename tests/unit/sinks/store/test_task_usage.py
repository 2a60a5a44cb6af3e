"""task_usage: the tasks a router sent requests for (what the workers consume)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from sinks.store.metadata import MetadataStore, task_usage
from tests.unit.sinks.store.test_store import upload


def test_marking_is_idempotent_and_remembered(store: MetadataStore) -> None:
    assert store.used_tasks() == set()
    store.mark_tasks_used({"blurhash", "nsfw"})
    store.mark_tasks_used({"blurhash"})
    store.mark_tasks_used(set())
    assert store.used_tasks() == {"blurhash", "nsfw"}
    # another process (a second router) sees them and adds its own without conflict
    other = MetadataStore(store.url)
    other.mark_tasks_used({"nsfw", "ocr"})
    assert store.used_tasks() == {"blurhash", "nsfw", "ocr"}


def test_a_database_from_before_task_usage_is_seeded_from_its_task_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = MetadataStore(url)
    old.register_uploads([upload("a1", tasks=("dominant-colors", "ocr"))])
    old.engine.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # as a database written before the table existed
        task_usage.drop(conn)
    engine.dispose()
    assert MetadataStore(url).used_tasks() == {"dominant-colors", "ocr"}
