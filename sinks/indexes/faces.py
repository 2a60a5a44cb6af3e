"""The face-cluster index: every face ``index-faces`` found, grouped by identity.

Persisted in the metadata database (tables on :data:`sinks.store.metadata`, so
``MetadataStore`` creates them; :class:`FaceIndex` also creates them itself if missing):

* ``faces``: one row per face, keyed by (asset, post-process, face number): box, confidence,
  the 128-d embedding (float32 bytes) and its cluster;
* ``face_clusters``: cluster id, size and centroid (mean embedding);
* ``face_index_state``: one row, a generation counter and the next cluster id. Every writer
  updates it first, which serialises writers across threads *and* processes on SQLite (the
  write lock) and PostgreSQL (the row lock), and tells a process whether its in-memory copy of
  the centroids is still current (nobody else wrote since its own last write).

Assignment (incremental, :meth:`FaceIndex.add`): a face joins the cluster whose centroid is
nearest if that distance is below :data:`THRESHOLD`, else it founds a new cluster. A re-add of
the same (asset, post-process) replaces its faces (identical faces: nothing changes at all), so
replays never duplicate. :meth:`FaceIndex.recluster` regroups everything from scratch with dlib's
Chinese whispers over the graph of faces closer than :data:`THRESHOLD`, keeping for each new
group the id of the old cluster that gave it most members.

Threshold 0.5: dlib's encoder separates people at 0.6 on LFW (pairs of faces). Measured here,
the same person under resizing, JPEG q40 and mirroring lies 0.05-0.35 away (models.md:
0.18-0.33), different people 0.53-0.92 (0.84 between astronaut and cameraman; the 0.53-0.6 pairs
are low-resolution greyscale LFW faces, the hardest case). 0.5 keeps 0.15 of margin above every
same-person distance seen and stays below every different-person one: a wrong merge (two
people in one cluster) is worse for a face index than a split, which a later recluster or a
more frontal photo can mend.

Cost: an add is O(clusters) (one distance per centroid, centroids cached in memory while this
process is the only writer); a recluster is O(faces^2) distances in dlib's C++ (seconds at 10^4
faces).
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sinks.store.metadata import Row, asset_tasks, metadata, now_ms

if TYPE_CHECKING:
    from processors.registry import ResultEvent

log = logging.getLogger("darkroom.faces")

#: Euclidean distance below which a face belongs with a cluster (see the module docstring).
THRESHOLD = 0.5
DIM = 128
#: The task whose results feed the index.
TASK = "index-faces"

Vec = npt.NDArray[np.float32]

faces_table = sa.Table(
    "faces",
    metadata,
    sa.Column("asset_id", sa.String(200), primary_key=True),
    sa.Column("postprocess", sa.String(200), primary_key=True),
    sa.Column("face_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("box_json", sa.Text, nullable=False),
    sa.Column("confidence", sa.Float, nullable=False, default=0.0),
    sa.Column("embedding", sa.LargeBinary, nullable=False),
    sa.Column("cluster_id", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index("ix_faces_cluster", "cluster_id"),
)

face_clusters = sa.Table(
    "face_clusters",
    metadata,
    sa.Column("cluster_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("centroid", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index("ix_face_clusters_size", "size"),
)

face_index_state = sa.Table(
    "face_index_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("next_cluster_id", sa.BigInteger, nullable=False),
)

TABLES = (faces_table, face_clusters, face_index_state)


# ---------------------------------------------------------------------------- vectors helpers
def _to_bytes(v: Vec) -> bytes:
    return np.asarray(v, dtype="<f4").tobytes()


def _from_bytes(b: bytes) -> Vec:
    return np.frombuffer(b, dtype="<f4").astype(np.float32)


@dataclass
class _NewFace:
    box: list[int]
    confidence: float
    embedding: Vec

    @property
    def box_json(self) -> str:
        return json.dumps(self.box, separators=(",", ":"))


def _parse_faces(faces: Sequence[Mapping[str, Any]]) -> list[_NewFace]:
    out = []
    for i, f in enumerate(faces):
        try:
            emb = np.asarray(f["embedding"], dtype=np.float32)
            box = [round(float(x)) for x in f.get("box", [])]
            conf = float(f.get("confidence", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"face {i}: malformed ({exc})") from exc
        if emb.shape != (DIM,) or not np.all(np.isfinite(emb)):
            raise ValueError(f"face {i}: embedding must be {DIM} finite numbers")
        if len(box) != 4:
            raise ValueError(f"face {i}: box must be [x, y, w, h]")
        out.append(_NewFace(box, conf, emb))
    return out


@dataclass
class _Centroids:
    """Cluster centroids in memory: ids, a growable matrix, sizes (0 = deleted)."""

    ids: list[int] = field(default_factory=list)
    pos: dict[int, int] = field(default_factory=dict)
    mat: Vec = field(default_factory=lambda: np.zeros((0, DIM), dtype=np.float32))
    sizes: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def _grow(self) -> None:
        cap = max(16, 2 * len(self.ids))
        mat = np.zeros((cap, DIM), dtype=np.float32)
        mat[: len(self.ids)] = self.mat[: len(self.ids)]
        sizes = np.zeros(cap, dtype=np.int64)
        sizes[: len(self.ids)] = self.sizes[: len(self.ids)]
        self.mat, self.sizes = mat, sizes

    def put(self, cid: int, centroid: Vec, size: int) -> None:
        i = self.pos.get(cid)
        if i is None:
            if len(self.ids) >= self.mat.shape[0]:
                self._grow()
            i = len(self.ids)
            self.ids.append(cid)
            self.pos[cid] = i
        self.mat[i] = centroid
        self.sizes[i] = size

    def get(self, cid: int) -> tuple[Vec, int] | None:
        i = self.pos.get(cid)
        if i is None or self.sizes[i] <= 0:
            return None
        return self.mat[i].copy(), int(self.sizes[i])

    def nearest(self, v: Vec) -> tuple[int, float] | None:
        n = len(self.ids)
        if n == 0:
            return None
        d = np.linalg.norm(self.mat[:n] - v, axis=1)
        d[self.sizes[:n] <= 0] = np.inf
        i = int(np.argmin(d))
        if not np.isfinite(d[i]):
            return None
        return self.ids[i], float(d[i])

    def add_member(self, cid: int, v: Vec) -> None:
        got = self.get(cid)
        if got is None:
            self.put(cid, v.astype(np.float32), 1)
        else:
            c, n = got
            self.put(cid, ((c * n + v) / (n + 1)).astype(np.float32), n + 1)

    def remove_member(self, cid: int, v: Vec) -> None:
        got = self.get(cid)
        if got is None:
            return
        c, n = got
        if n <= 1:
            self.put(cid, np.zeros(DIM, dtype=np.float32), 0)
        else:
            self.put(cid, ((c * n - v) / (n - 1)).astype(np.float32), n - 1)


class FaceIndex:
    """The face-cluster index over a metadata database (SQLite or PostgreSQL).

    Thread-safe: writers are serialised by a lock here and by the state row in the database
    (other processes); each :meth:`add`, :meth:`remove` and :meth:`recluster` is one
    transaction. Readers (:meth:`clusters`, :meth:`cluster`) never block writers for long.
    """

    def __init__(self, engine: Engine, threshold: float = THRESHOLD) -> None:
        self.engine = engine
        self.threshold = threshold
        self._lock = threading.Lock()
        self._cache: _Centroids | None = None
        self._cache_generation = -1
        metadata.create_all(engine, tables=list(TABLES))
        try:
            with engine.begin() as conn:
                if conn.execute(sa.select(face_index_state.c.id)).first() is None:
                    conn.execute(sa.insert(face_index_state).values(
                        id=1, generation=0, next_cluster_id=1))
        except sa.exc.IntegrityError:
            pass  # another process inserted it first

    # ------------------------------------------------------------------ writers
    def add(self, asset_id: str, postprocess: str,
            faces: Sequence[Mapping[str, Any]]) -> list[int]:
        """Index the faces of one (asset, post-process) result, replacing what it had.

        ``faces`` are ``index-faces`` result entries (``box``, ``confidence``, ``embedding``).
        Returns each face's cluster id, in order. Re-adding identical faces changes nothing.
        Raises ValueError on malformed faces (before touching the database).
        """
        new = _parse_faces(faces)
        with self._lock:
            try:
                with self.engine.begin() as conn:
                    gen, next_id = self._bump(conn)
                    cents = self._centroids(conn, gen)
                    old = conn.execute(
                        sa.select(faces_table)
                        .where(faces_table.c.asset_id == asset_id,
                               faces_table.c.postprocess == postprocess)
                        .order_by(faces_table.c.face_no)
                    ).mappings().all()
                    if _same(old, new):
                        ids = [int(r["cluster_id"]) for r in old]
                    else:
                        ids, next_id = self._replace(conn, cents, asset_id, postprocess, old,
                                                     new, next_id)
                        conn.execute(sa.update(face_index_state)
                                     .where(face_index_state.c.id == 1)
                                     .values(next_cluster_id=next_id))
            except BaseException:
                self._invalidate()
                raise
            self._cache_generation = gen
            return ids

    def remove(self, asset_id: str, postprocess: str | None = None) -> int:
        """Forget the faces of an asset (of one post-process, or all); returns how many."""
        with self._lock:
            try:
                with self.engine.begin() as conn:
                    gen, _ = self._bump(conn)
                    cents = self._centroids(conn, gen)
                    q = sa.select(faces_table).where(faces_table.c.asset_id == asset_id)
                    if postprocess is not None:
                        q = q.where(faces_table.c.postprocess == postprocess)
                    old = conn.execute(q).mappings().all()
                    touched: set[int] = set()
                    for r in old:
                        cid = int(r["cluster_id"])
                        cents.remove_member(cid, _from_bytes(r["embedding"]))
                        touched.add(cid)
                    d = sa.delete(faces_table).where(faces_table.c.asset_id == asset_id)
                    if postprocess is not None:
                        d = d.where(faces_table.c.postprocess == postprocess)
                    conn.execute(d)
                    self._write_clusters(conn, cents, touched, created=set())
            except BaseException:
                self._invalidate()
                raise
            self._cache_generation = gen
            return len(old)

    def recluster(self) -> int:
        """Regroup every face from scratch (Chinese whispers); returns the number of clusters.

        New groups keep the id of the old cluster that contributes most of their members (each
        old id to one group at most, largest overlaps first); other groups get fresh ids.
        """
        import dlib  # type: ignore[import-untyped,unused-ignore]

        with self._lock:
            try:
                with self.engine.begin() as conn:
                    gen, next_id = self._bump(conn)
                    rows = conn.execute(
                        sa.select(faces_table.c.asset_id, faces_table.c.postprocess,
                                  faces_table.c.face_no, faces_table.c.embedding,
                                  faces_table.c.cluster_id)
                        .order_by(faces_table.c.asset_id, faces_table.c.postprocess,
                                  faces_table.c.face_no)
                    ).mappings().all()
                    vecs = [_from_bytes(r["embedding"]) for r in rows]
                    labels: list[int] = []
                    if vecs:
                        labels = [int(x) for x in dlib.chinese_whispers_clustering(
                            [dlib.vector(v.astype(np.float64).tolist()) for v in vecs],
                            self.threshold)]
                    old_ids = [int(r["cluster_id"]) for r in rows]
                    mapping, next_id = _stable_ids(labels, old_ids, next_id)
                    new_ids = [mapping[lab] for lab in labels]
                    changed = [
                        {"a": r["asset_id"], "p": r["postprocess"], "n": r["face_no"], "c": c}
                        for r, c, o in zip(rows, new_ids, old_ids, strict=True) if c != o]
                    if changed:
                        conn.execute(
                            sa.update(faces_table)
                            .where(faces_table.c.asset_id == sa.bindparam("a"),
                                   faces_table.c.postprocess == sa.bindparam("p"),
                                   faces_table.c.face_no == sa.bindparam("n"))
                            .values(cluster_id=sa.bindparam("c")),
                            changed)
                    conn.execute(sa.delete(face_clusters))
                    cents = _Centroids()
                    groups: dict[int, list[Vec]] = {}
                    for c, v in zip(new_ids, vecs, strict=True):
                        groups.setdefault(c, []).append(v)
                    ts = now_ms()
                    cluster_rows = []
                    for c, members in sorted(groups.items()):
                        centroid = np.mean(np.stack(members), axis=0).astype(np.float32)
                        cents.put(c, centroid, len(members))
                        cluster_rows.append({"cluster_id": c, "size": len(members),
                                             "centroid": _to_bytes(centroid), "updated_at": ts})
                    if cluster_rows:
                        conn.execute(sa.insert(face_clusters), cluster_rows)
                    conn.execute(sa.update(face_index_state).where(face_index_state.c.id == 1)
                                 .values(next_cluster_id=next_id))
            except BaseException:
                self._invalidate()
                raise
            self._cache = cents
            self._cache_generation = gen
            return len(groups)

    # ------------------------------------------------------------------ readers
    def cluster_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(face_clusters))
                       .scalar_one())

    def clusters(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Clusters, largest first: ``cluster_id``, ``size`` and a ``representative`` face
        (the member with the highest detection confidence)."""
        with self.engine.connect() as conn:
            page = conn.execute(
                sa.select(face_clusters.c.cluster_id, face_clusters.c.size)
                .order_by(face_clusters.c.size.desc(), face_clusters.c.cluster_id)
                .limit(limit).offset(offset)
            ).all()
            ids = [int(r[0]) for r in page]
            best: dict[int, dict[str, Any]] = {}
            if ids:
                rows = conn.execute(
                    sa.select(faces_table.c.cluster_id, faces_table.c.asset_id,
                              faces_table.c.postprocess, faces_table.c.face_no,
                              faces_table.c.box_json, faces_table.c.confidence)
                    .where(faces_table.c.cluster_id.in_(ids))
                    .order_by(faces_table.c.cluster_id, faces_table.c.confidence.desc(),
                              faces_table.c.asset_id, faces_table.c.postprocess,
                              faces_table.c.face_no)
                ).mappings()
                for r in rows:
                    best.setdefault(int(r["cluster_id"]), _face_out(r))
        return [{"cluster_id": cid, "size": int(size), "representative": best.get(cid)}
                for cid, size in ((int(r[0]), r[1]) for r in page)]

    def cluster(self, cluster_id: int, limit: int | None = None) -> dict[str, Any] | None:
        """One cluster and its faces (``asset_id``, ``postprocess``, ``face_no``, ``box``,
        ``confidence``), or None when there is no such cluster."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(face_clusters.c.size)
                               .where(face_clusters.c.cluster_id == cluster_id)).first()
            if row is None:
                return None
            q = (sa.select(faces_table.c.asset_id, faces_table.c.postprocess,
                           faces_table.c.face_no, faces_table.c.box_json,
                           faces_table.c.confidence)
                 .where(faces_table.c.cluster_id == cluster_id)
                 .order_by(faces_table.c.asset_id, faces_table.c.postprocess,
                           faces_table.c.face_no))
            if limit is not None:
                q = q.limit(limit)
            faces = [_face_out(r) for r in conn.execute(q).mappings()]
        return {"cluster_id": cluster_id, "size": int(row[0]), "faces": faces}

    def faces_of(self, asset_id: str) -> list[dict[str, Any]]:
        """The indexed faces of an asset with their cluster ids."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(faces_table).where(faces_table.c.asset_id == asset_id)
                .order_by(faces_table.c.postprocess, faces_table.c.face_no)).mappings().all()
        return [{**_face_out(r), "cluster_id": int(r["cluster_id"])} for r in rows]

    # ------------------------------------------------------------------ internals
    def _invalidate(self) -> None:
        self._cache = None
        self._cache_generation = -1

    def _bump(self, conn: Connection) -> tuple[int, int]:
        """Take the writer lock (the state row) and return (new generation, next cluster id)."""
        conn.execute(sa.update(face_index_state).where(face_index_state.c.id == 1)
                     .values(generation=face_index_state.c.generation + 1))
        row = conn.execute(sa.select(face_index_state.c.generation,
                                     face_index_state.c.next_cluster_id)
                           .where(face_index_state.c.id == 1)).one()
        return int(row[0]), int(row[1])

    def _centroids(self, conn: Connection, generation: int) -> _Centroids:
        """The centroids: the cached ones if this instance made the previous write."""
        if self._cache is not None and self._cache_generation == generation - 1:
            return self._cache
        cents = _Centroids()
        for r in conn.execute(sa.select(face_clusters).order_by(face_clusters.c.cluster_id)):
            cents.put(int(r.cluster_id), _from_bytes(r.centroid), int(r.size))
        self._cache = cents
        return cents

    def _replace(self, conn: Connection, cents: _Centroids, asset_id: str, postprocess: str,
                 old: Sequence[Row], new: list[_NewFace], next_id: int,
                 ) -> tuple[list[int], int]:
        touched: set[int] = set()
        created: set[int] = set()
        for r in old:
            cid = int(r["cluster_id"])
            cents.remove_member(cid, _from_bytes(r["embedding"]))
            touched.add(cid)
        conn.execute(sa.delete(faces_table).where(faces_table.c.asset_id == asset_id,
                                                  faces_table.c.postprocess == postprocess))
        ids: list[int] = []
        ts = now_ms()
        rows = []
        for no, f in enumerate(new):
            hit = cents.nearest(f.embedding)
            if hit is not None and hit[1] < self.threshold:
                cid = hit[0]
            else:
                cid = next_id
                next_id += 1
                created.add(cid)
            cents.add_member(cid, f.embedding)
            touched.add(cid)
            ids.append(cid)
            rows.append({"asset_id": asset_id, "postprocess": postprocess, "face_no": no,
                         "box_json": f.box_json, "confidence": f.confidence,
                         "embedding": _to_bytes(f.embedding), "cluster_id": cid,
                         "created_at": ts})
        if rows:
            conn.execute(sa.insert(faces_table), rows)
        self._write_clusters(conn, cents, touched, created)
        return ids, next_id

    @staticmethod
    def _write_clusters(conn: Connection, cents: _Centroids, touched: set[int],
                        created: set[int]) -> None:
        ts = now_ms()
        for cid in sorted(touched):
            got = cents.get(cid)
            if got is None:
                conn.execute(sa.delete(face_clusters).where(face_clusters.c.cluster_id == cid))
                continue
            centroid, size = got
            values = {"size": size, "centroid": _to_bytes(centroid), "updated_at": ts}
            if cid in created:
                conn.execute(sa.insert(face_clusters).values(cluster_id=cid, **values))
            else:
                conn.execute(sa.update(face_clusters)
                             .where(face_clusters.c.cluster_id == cid).values(**values))


def _same(old: Sequence[Row], new: list[_NewFace]) -> bool:
    if len(old) != len(new) or not old:
        return False
    return all(
        r["box_json"] == f.box_json and float(r["confidence"]) == f.confidence
        and bytes(r["embedding"]) == _to_bytes(f.embedding)
        for r, f in zip(old, new, strict=True))


def _stable_ids(labels: list[int], old_ids: list[int], next_id: int
                ) -> tuple[dict[int, int], int]:
    """Map new group labels to cluster ids, reusing the old id with the largest overlap."""
    overlap: dict[tuple[int, int], int] = {}
    for lab, old in zip(labels, old_ids, strict=True):
        overlap[(lab, old)] = overlap.get((lab, old), 0) + 1
    mapping: dict[int, int] = {}
    used: set[int] = set()
    for (lab, old), _n in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0])):
        if lab in mapping or old in used:
            continue
        mapping[lab] = old
        used.add(old)
    for lab in sorted(set(labels)):
        if lab not in mapping:
            mapping[lab] = next_id
            next_id += 1
    return mapping, next_id


def _face_out(r: Row) -> dict[str, Any]:
    return {"asset_id": r["asset_id"], "postprocess": r["postprocess"],
            "face_no": int(r["face_no"]), "box": json.loads(r["box_json"]),
            "confidence": float(r["confidence"])}


# ------------------------------------------------------------------------- the sink's hooks
_INDEXES: weakref.WeakKeyDictionary[Engine, FaceIndex] = weakref.WeakKeyDictionary()
_INDEXES_LOCK = threading.Lock()


def clear_indexes() -> None:
    """Forget the in-memory face indexes (``agents.composition.reset_caches``)."""
    with _INDEXES_LOCK:
        _INDEXES.clear()


def index_for(engine: Engine) -> FaceIndex:
    """The process-wide :class:`FaceIndex` of ``engine`` (one lock and centroid cache each)."""
    with _INDEXES_LOCK:
        idx = _INDEXES.get(engine)
        if idx is None:
            idx = _INDEXES[engine] = FaceIndex(engine)
        return idx


def on_result(engine: Engine, asset_id: str, postprocess: str,
              data: Mapping[str, Any] | None) -> list[int]:
    """Bring the index in line with the merged result of an ``index-faces`` post-process.

    The stored result (``asset_tasks``) is authoritative: if it is ``ok`` its faces are
    indexed (``data`` is what the sink just merged, normally the same), otherwise the faces of
    that (asset, post-process) are dropped. So calling this again for a duplicate, a replay or a
    stale result is harmless. Malformed faces are logged and skipped. Returns the cluster ids.
    """
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(asset_tasks.c.status, asset_tasks.c.data_json, asset_tasks.c.task)
            .where(asset_tasks.c.asset_id == asset_id,
                   asset_tasks.c.postprocess == postprocess)).first()
    idx = index_for(engine)
    current: Mapping[str, Any] | None = None
    if row is not None and row.status == "ok" and row.task == TASK:
        current = json.loads(row.data_json) if row.data_json else data
    if current is None:
        idx.remove(asset_id, postprocess)
        return []
    faces = current.get("faces") or []
    try:
        return idx.add(asset_id, postprocess, faces)
    except ValueError as exc:
        log.warning("face index: %s/%s not indexed: %s", asset_id, postprocess, exc)
        return []


def result_hook(event: ResultEvent) -> None:
    """The result hook ``index-faces`` declares (:func:`processors.registry.register`): after
    the sink merged a result, the face-cluster index follows the stored result (idempotent;
    heals on replay)."""
    on_result(event.services.engine, event.asset_id, event.postprocess, event.data)


def forget(engine: Engine, asset_id: str) -> int:
    """Drop every face of a deleted asset from the index; returns how many."""
    return index_for(engine).remove(asset_id)
