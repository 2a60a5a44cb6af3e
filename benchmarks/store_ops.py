"""Store cost of one asset's lifecycle, and of one statement built per call vs prebuilt.

    uv run python benchmarks/store_ops.py [--assets 300] [--db sqlite,postgres]

(a) **lifecycle**: CPU ms per asset (this process: SQLAlchemy, the driver, the store's own
    Python; PostgreSQL's server time is not in it) of what a worker does to the store for an
    upload with the three default image tasks: register (batches of 20, as the router),
    ``start_task`` x3, ``merge_result`` x3, ``finalize``.
(b) **statements**: µs per execution of a one-asset SELECT of its task rows and of a one-row
    UPDATE, each (1) built for every call as ``sa.select(...).where(...)`` and (2) prebuilt once
    with bound parameters (:mod:`sinks.store.statements`), in the same run: the ratio is what
    the store's hot paths gained by (2).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from benchmarks.pipeline import database  # noqa: E402
from sinks.store import statements as st  # noqa: E402
from sinks.store.metadata import (  # noqa: E402
    MetadataStore,
    PlannedTask,
    ResultRecord,
    UploadRecord,
    asset_tasks,
    registered_info,
)

TASKS = ("validate-image", "blurhash", "dominant-colors")


def upload(asset_id: str) -> UploadRecord:
    return UploadRecord(
        asset_id=asset_id, upload_key="k1", uri=f"file:///x/{asset_id}", filename="x.jpg",
        folder="/f", content_type="image/jpeg", size_bytes=10, mode="async",
        notification_url=None, on_success=None, properties={"width": 5, "height": 4},
        tags=["a"], context={}, uploaded_at=1,
        tasks=[PlannedTask(t, t, f"{asset_id}-{t}", "async") for t in TASKS])


def result(asset_id: str, task: str) -> ResultRecord:
    return ResultRecord(
        asset_id=asset_id, postprocess=task, task=task, request_id=f"{asset_id}-{task}",
        status="ok", data={"value": 1}, error=None, error_kind=None, verdicts=[],
        processor_version="1", attempts=1, duration_ms=1.0, finished_at=5)


def lifecycle(store: MetadataStore, n: int) -> dict[str, float]:
    ids = [f"a{i}" for i in range(n)]
    clock = time.process_time
    t0 = clock()
    for i in range(0, n, 20):
        store.register_uploads_and_updates([upload(a) for a in ids[i:i + 20]])
    t1 = clock()
    for a in ids:
        for t in TASKS:
            store.start_task(a, t, f"{a}-{t}")
    t2 = clock()
    last = {}
    for a in ids:
        for t in TASKS:
            last[a] = store.merge_result(result(a, t))
    t3 = clock()
    for a in ids:
        version = last[a].version  # type: ignore[union-attr]
        assert store.finalize(a, version, None, None, lambda _asset: []) is not None
    t4 = clock()
    per = 1000.0 / n
    return {"register": (t1 - t0) * per, "start_x3": (t2 - t1) * per,
            "merge_x3": (t3 - t2) * per, "finalize": (t4 - t3) * per,
            "total": (t4 - t0) * per}


def per_call(store: MetadataStore, fn: Callable[[Any, int], None], n: int = 3000) -> float:
    with store.engine.begin() as conn:
        start = time.process_time()
        for i in range(n):
            fn(conn, i)
        return (time.process_time() - start) * 1e6 / n


def statements(store: MetadataStore) -> dict[str, float]:
    store.register_uploads([upload("s1")])
    t = asset_tasks

    def select_built(conn: Any, _i: int) -> None:
        conn.execute(sa.select(t).where(t.c.asset_id == "s1")).mappings().all()

    def select_prebuilt(conn: Any, _i: int) -> None:
        st.rows(conn, t, asset_id="s1")

    def update_built(conn: Any, i: int) -> None:
        conn.execute(sa.update(t).where(t.c.asset_id == "s1", t.c.postprocess == "blurhash")
                     .values({"status": "pending", "attempts": i, "error": None}))

    def update_prebuilt(conn: Any, i: int) -> None:
        st.update(conn, t, {"asset_id": "s1", "postprocess": "blurhash"},
                  {"status": "pending", "attempts": i, "error": None})

    out = {"select_built_us": per_call(store, select_built),
           "select_prebuilt_us": per_call(store, select_prebuilt),
           "update_built_us": per_call(store, update_built),
           "update_prebuilt_us": per_call(store, update_prebuilt)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--assets", type=int, default=300)
    ap.add_argument("--db", default="sqlite,postgres")
    args = ap.parse_args()
    registered_info()  # the task registry's import: once, outside the timings
    report: dict[str, Any] = {"assets": args.assets}
    for kind in args.db.split(","):
        with tempfile.TemporaryDirectory() as tmp, database(kind) as url:
            store = MetadataStore(url or f"sqlite:///{tmp}/bench.db",
                                  encode_update=lambda a: b"u" * 200)
            try:
                life = lifecycle(store, args.assets)
                stm = statements(store)
            finally:
                store.close()
        report[kind] = {**life, **stm}
        print(f"{kind}: per asset (ms CPU) register {life['register']:.2f}, start x3 "
              f"{life['start_x3']:.2f}, merge x3 {life['merge_x3']:.2f}, finalize "
              f"{life['finalize']:.2f} = {life['total']:.2f}")
        print(f"{kind}: select built per call {stm['select_built_us']:.0f} us vs prebuilt "
              f"{stm['select_prebuilt_us']:.0f} us "
              f"({stm['select_built_us'] / stm['select_prebuilt_us']:.1f}x); update "
              f"{stm['update_built_us']:.0f} vs {stm['update_prebuilt_us']:.0f} us "
              f"({stm['update_built_us'] / stm['update_prebuilt_us']:.1f}x)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
