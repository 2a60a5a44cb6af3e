"""The image-similarity index: every ``index-similarity`` embedding, searchable by cosine.

**The database is the truth.** Tables on :data:`sinks.store.metadata` (so ``MetadataStore``
creates them; :class:`SimilarityIndex` also creates them if missing):

* ``image_similarity``: one row per (asset, post-process): the L2-normalised 1280-d embedding
  (float32 little-endian bytes), the 64-bit perceptual hash (hex), the model that made it, and
  ``seq``, the generation of the write that last touched the row. A removal keeps the row as a
  *tombstone* (embedding NULL) so other processes learn about it incrementally;
* ``similarity_state``: one row: ``generation`` (bumped by every write, first thing in the
  transaction: this serialises writers across threads and processes, on SQLite by the write lock
  and on PostgreSQL by the row lock, so commit order = generation order) and ``epoch`` (random,
  set when the tables are created: a cache built from another database is never used).

**Each process keeps a copy in memory** (a faiss index + the vectors, hashes and keys) and
before every read checks the state row (one primary-key SELECT). When the database is ahead it
applies only the rows with ``seq`` greater than what it has (inserts, updates, tombstones); a
first use loads the on-disk cache (see below) and then catches up the same way, or builds from the
table. So the API process and the sink/worker processes all answer from their own copy, never
older than the last committed write when the query starts.

**faiss.** ``IndexFlatIP`` (exact cosine on normalised vectors) up to :data:`HNSW_ABOVE`
(200k) live vectors, ``IndexHNSWFlat`` (M=32, efConstruction 80, efSearch >= 128, inner product)
above. Measured by ``benchmarks/similarity.py`` on 2 cores at 10.2k random 1280-d vectors: flat
p50 2.9 ms / p99 6 ms per query, recall@10 1.0, built from the database in 0.4 s; HNSW p50 3.3 ms,
recall@10 0.77 (random vectors are HNSW's worst case; real embeddings cluster) and 13 s to build.
A flat scan grows linearly (~60 ms at 200k), which is where the approximate index starts to pay.
Updates append a new position and mark the old one dead; dead positions are filtered out of
results and compacted away (full rebuild) when they exceed a quarter of the index. faiss runs
single-threaded unless the composition root says otherwise (``DARKROOM_INDEX_THREADS``, passed to
:func:`set_threads`).

**Cache file.** ``<data_dir>/index/similarity.cache.npz``: ONE file (serialised faiss index,
vectors, hashes, keys, generation, epoch, model), written atomically (temp + rename) after a
full build and then every :data:`SAVE_EVERY` applied changes, so any process reading it sees a
consistent snapshot (two files, index + id map, could be torn between two writers). A cache
whose epoch or model differs from the database's is ignored; a stale one is caught up from the
database. Deleting it is always safe.

**Near-duplicates** (:meth:`SimilarityIndex.near_duplicates`, returned by :func:`on_result`):
pHash Hamming distance <= :data:`PHASH_MAX` (6 of 64 bits) OR cosine >= :data:`COSINE_MIN`
(0.95). Measured here on skimage's photos: re-encoding (JPEG q30, q10), halving, a 128 px
thumbnail, brightness +30 % and greyscale keep the pHash within 0-4 bits (cosine 0.82-1.0:
recompression moves the embedding more than the hash), while unrelated pictures are >= 20 bits
apart; a 90 % crop or a mirror image changes the hash (8-32 bits) but keeps cosine 0.95-0.99,
while unrelated photos score <= 0.64 (mean 0.41). Each criterion alone misses one family of
copies; both thresholds keep a wide margin from every unrelated pair seen. Consecutive shots of
one scene (bursts) will also pass cosine 0.95: they are near-duplicates for a photo library.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import threading
import uuid
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from processors.registry import HookOutcome, ResultEvent
from sinks.store.metadata import asset_tasks, metadata, now_ms

log = logging.getLogger("darkroom.similarity")

#: The task whose results feed the index.
TASK: Final = "index-similarity"
DIM: Final = 1280
#: The only model whose vectors are comparable with each other: "<model>:<model_version>".
MODEL_KEY: Final = "mobilenet_v2:torchvision-b0353104"
PHASH_MAX: Final = 6
COSINE_MIN: Final = 0.95
HNSW_ABOVE: Final = 200_000
HNSW_M: Final = 32
HNSW_EF_CONSTRUCTION: Final = 80
HNSW_EF_SEARCH: Final = 128
SAVE_EVERY: Final = 1000
CACHE_NAME: Final = "similarity.cache.npz"
CACHE_FORMAT: Final = 1

Vec = npt.NDArray[np.float32]

similarity_table = sa.Table(
    "image_similarity",
    metadata,
    sa.Column("asset_id", sa.String(200), primary_key=True),
    sa.Column("postprocess", sa.String(200), primary_key=True),
    sa.Column("embedding", sa.LargeBinary, nullable=True),  # NULL: removed (tombstone)
    sa.Column("phash", sa.String(16), nullable=True),
    sa.Column("model", sa.String(100), nullable=False, default=""),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index("ix_image_similarity_seq", "seq"),
)

similarity_state = sa.Table(
    "similarity_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("epoch", sa.String(32), nullable=False),
)

TABLES: Final = (similarity_table, similarity_state)

Key = tuple[str, str]  # (asset_id, postprocess)


# ---------------------------------------------------------------------------- helpers
def _to_bytes(v: Vec) -> bytes:
    return np.asarray(v, dtype="<f4").tobytes()


def _from_bytes(b: bytes) -> Vec:
    return np.frombuffer(b, dtype="<f4").astype(np.float32)


def _hash_int(h: str | None) -> int:
    """The pHash as an unsigned 64-bit int; 0 for none (``_NO_HASH`` marks it separately)."""
    if not h:
        return 0
    return int(h, 16) & 0xFFFFFFFFFFFFFFFF


def parse_vector(v: Any) -> Vec:
    """A ``DIM``-vector from a list or the task's base64 string, L2-normalised; ValueError if
    malformed."""
    if isinstance(v, str):
        from processors.tasks.index_similarity import decode_embedding

        arr = decode_embedding(v, DIM)
    else:
        try:
            arr = np.asarray(v, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"embedding is not a vector: {exc}") from exc
    if arr.shape != (DIM,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"embedding must be {DIM} finite numbers")
    n = float(np.linalg.norm(arr))
    if n <= 0:
        raise ValueError("embedding is all zeros")
    return (arr / n).astype(np.float32)


def _check_phash(h: Any) -> str | None:
    if h is None or h == "":
        return None
    if not isinstance(h, str) or len(h) != 16:
        raise ValueError("phash must be 16 hex digits")
    try:
        int(h, 16)
    except ValueError as exc:
        raise ValueError("phash must be 16 hex digits") from exc
    return h.lower()


class _Threads:
    """faiss's OpenMP thread count for this process (an OpenMP setting: process-wide by
    nature): ``wanted`` is what :func:`set_threads` asked for, ``applied`` what faiss was told."""

    wanted: int = 1
    applied: int | None = None


def set_threads(n: int) -> None:
    """faiss's OpenMP threads for this process, applied before the next index is built (faiss is
    not imported here). The composition root passes ``DARKROOM_INDEX_THREADS`` (default 1).
    One query is a single scan; measured on 2 cores at 10k vectors, a flat search took 17 ms with
    2 OpenMP threads and 4 ms with 1 (fork/join overhead and contention with the task threads)."""
    _Threads.wanted = max(1, int(n))


def _set_threads() -> None:
    if _Threads.applied != _Threads.wanted:
        import faiss

        faiss.omp_set_num_threads(_Threads.wanted)
        _Threads.applied = _Threads.wanted


def clear_indexes() -> None:
    """Forget the in-memory indexes (the next use reloads from the cache file / database) and
    the applied thread count (``agents.composition.reset_caches``)."""
    with _INDEXES_LOCK:
        _INDEXES.clear()
    _Threads.applied = None


# ---------------------------------------------------------------------------- in memory
class _Memory:
    """Vectors by position + a faiss index over the positions (faiss label = position)."""

    def __init__(self, hnsw_above: int) -> None:
        self.hnsw_above = hnsw_above
        self.keys: list[Key | None] = []
        self.pos: dict[Key, int] = {}
        self.by_asset: dict[str, dict[str, int]] = {}  # asset -> {post-process: position}
        self.vecs = np.zeros((0, DIM), dtype=np.float32)
        self.hashes = np.zeros(0, dtype=np.uint64)
        self.has_hash = np.zeros(0, dtype=bool)
        self.alive = np.zeros(0, dtype=bool)
        self.dead = 0
        self.index: Any = self._new_index(0)

    # -- construction
    def _new_index(self, n_alive: int) -> Any:
        import faiss

        _set_threads()
        if n_alive > self.hnsw_above:
            idx = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            idx.hnsw.efSearch = HNSW_EF_SEARCH
            return idx
        return faiss.IndexFlatIP(DIM)

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def live(self) -> int:
        return len(self.pos)

    @property
    def kind(self) -> str:
        return "flat" if type(self.index).__name__ == "IndexFlatIP" else "hnsw"

    def _grow(self, need: int) -> None:
        cap = self.vecs.shape[0]
        if need <= cap:
            return
        new_cap = max(need, 2 * cap, 64)
        vecs = np.zeros((new_cap, DIM), dtype=np.float32)
        vecs[: self.n] = self.vecs[: self.n]
        hashes = np.zeros(new_cap, dtype=np.uint64)
        hashes[: self.n] = self.hashes[: self.n]
        has = np.zeros(new_cap, dtype=bool)
        has[: self.n] = self.has_hash[: self.n]
        alive = np.zeros(new_cap, dtype=bool)
        alive[: self.n] = self.alive[: self.n]
        self.vecs, self.hashes, self.has_hash, self.alive = vecs, hashes, has, alive

    def load_rows(self, keys: Sequence[Key], vecs: Vec, hashes: Sequence[str | None]) -> None:
        """Replace everything with these rows (a full build)."""
        self.keys, self.pos, self.by_asset, self.dead = [], {}, {}, 0
        self.vecs = np.zeros((0, DIM), dtype=np.float32)
        self.hashes = np.zeros(0, dtype=np.uint64)
        self.has_hash = np.zeros(0, dtype=bool)
        self.alive = np.zeros(0, dtype=bool)
        self.index = self._new_index(len(keys))
        self._append(list(keys), vecs, hashes)

    def _append(self, keys: list[Key], vecs: Vec, hashes: Sequence[str | None]) -> None:
        if not keys:
            return
        start = self.n
        self._grow(start + len(keys))
        self.vecs[start : start + len(keys)] = vecs
        for j, (k, h) in enumerate(zip(keys, hashes, strict=True)):
            old = self.pos.get(k)
            if old is not None:
                self._kill(old)
            self.pos[k] = start + j
            self.by_asset.setdefault(k[0], {})[k[1]] = start + j
            self.hashes[start + j] = np.uint64(_hash_int(h))
            self.has_hash[start + j] = h is not None
            self.alive[start + j] = True
        self.keys.extend(keys)
        self.index.add(np.ascontiguousarray(vecs, dtype=np.float32))

    def _kill(self, p: int) -> None:
        if self.alive[p]:
            self.alive[p] = False
            self.dead += 1
            key = self.keys[p]
            if key is not None and self.pos.get(key) == p:
                del self.pos[key]
                mine = self.by_asset.get(key[0], {})
                mine.pop(key[1], None)
                if not mine:
                    self.by_asset.pop(key[0], None)
            self.keys[p] = None
            self.vecs[p] = 0.0  # a removed vector leaves nothing in the cache file either

    def upsert(self, key: Key, vec: Vec, h: str | None) -> None:
        self._append([key], vec[np.newaxis, :], [h])

    def remove(self, key: Key) -> None:
        p = self.pos.get(key)
        if p is not None:
            self._kill(p)

    def maybe_compact(self) -> bool:
        """Rebuild without dead positions when they are many, or when the index kind should
        change (flat <-> HNSW across ``hnsw_above``)."""
        want_hnsw = self.live > self.hnsw_above
        if self.dead > max(256, self.n // 4) or want_hnsw != (self.kind == "hnsw"):
            self.compact()
            return True
        return False

    def compact(self) -> None:
        live = np.flatnonzero(self.alive[: self.n])
        keys = [self.keys[int(p)] for p in live]
        hashes = [format(int(self.hashes[p]), "016x") if self.has_hash[p] else None
                  for p in live]
        vecs = self.vecs[live].copy()
        self.load_rows([k for k in keys if k is not None], vecs, hashes)

    # -- reading
    def vectors_of(self, asset_id: str) -> list[tuple[Key, int]]:
        """The asset's (key, position) pairs, by post-process name."""
        return [((asset_id, pp), p) for pp, p in sorted(self.by_asset.get(asset_id, {}).items())]

    def search(self, q: Vec, k: int) -> list[tuple[int, float]]:
        """Up to ``k`` live (position, cosine), best first (may hold several per asset)."""
        if self.live == 0 or k <= 0:
            return []
        kk = min(self.n, k + self.dead)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, kk)
        scores, labels = self.index.search(np.ascontiguousarray(q[np.newaxis, :]), kk)
        out = []
        for s, p in zip(scores[0], labels[0], strict=True):
            if p >= 0 and self.alive[int(p)]:
                out.append((int(p), float(s)))
        return out[:k]

    # -- persistence
    def to_npz(self, generation: int, epoch: str) -> bytes:
        import faiss

        keys = [k if k is not None else ("", "") for k in self.keys]
        buf = io.BytesIO()
        np.savez(
            buf,
            format=np.array(CACHE_FORMAT),
            generation=np.array(generation, dtype=np.int64),
            epoch=np.array(epoch),
            model=np.array(MODEL_KEY),
            assets=np.array([k[0] for k in keys], dtype=np.str_),
            postprocesses=np.array([k[1] for k in keys], dtype=np.str_),
            vecs=self.vecs[: self.n],
            hashes=self.hashes[: self.n],
            has_hash=self.has_hash[: self.n],
            alive=self.alive[: self.n],
            # a flat index is the vectors themselves: rebuilt on load (a memcpy), not stored twice
            index=(faiss.serialize_index(self.index) if self.kind == "hnsw"
                   else np.zeros(0, dtype=np.uint8)),
        )
        return buf.getvalue()

    def from_npz(self, z: Mapping[str, Any]) -> None:
        import faiss

        keys = list(zip((str(a) for a in z["assets"]), (str(p) for p in z["postprocesses"]),
                        strict=True))
        n = len(keys)
        if z["vecs"].shape != (n, DIM):
            raise ValueError("inconsistent cache file")
        raw = np.asarray(z["index"], dtype=np.uint8)
        if raw.size:
            index = faiss.deserialize_index(raw)
        else:
            index = faiss.IndexFlatIP(DIM)
            index.add(np.ascontiguousarray(z["vecs"], dtype=np.float32))
        if index.ntotal != n or index.d != DIM:
            raise ValueError("inconsistent cache file")
        alive = np.array(z["alive"], dtype=bool)
        if alive.shape != (n,):
            raise ValueError("inconsistent cache file")
        self.keys = [k if alive[i] else None for i, k in enumerate(keys)]
        self.pos, self.by_asset = {}, {}
        for i, k in enumerate(self.keys):
            if k is not None:
                if k in self.pos:
                    raise ValueError("duplicate keys in cache file")
                self.pos[k] = i
                self.by_asset.setdefault(k[0], {})[k[1]] = i
        self.vecs = np.array(z["vecs"], dtype=np.float32)
        self.hashes = np.array(z["hashes"], dtype=np.uint64)
        self.has_hash = np.array(z["has_hash"], dtype=bool)
        self.alive = alive
        self.dead = int(n - alive.sum())
        self.index = index


# ---------------------------------------------------------------------------- the index
class SimilarityIndex:
    """Image embeddings of one metadata database, searchable by cosine (see the module doc).

    Thread-safe (one lock around the in-memory copy; queries take milliseconds); safe across
    processes (the database is the truth, each process refreshes its copy when it is behind).
    ``data_dir``: where the cache file lives (``<data_dir>/index/``); None = no cache file.
    """

    def __init__(self, engine: Engine, data_dir: Path | str | None = None, *,
                 hnsw_above: int = HNSW_ABOVE, save_every: int = SAVE_EVERY) -> None:
        self.engine = engine
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.save_every = save_every
        self._lock = threading.RLock()
        self._mem = _Memory(hnsw_above)
        self._generation = -1
        self._epoch: str | None = None
        self._unsaved = 0
        metadata.create_all(engine, tables=list(TABLES))
        try:
            with engine.begin() as conn:
                if conn.execute(sa.select(similarity_state.c.id)).first() is None:
                    conn.execute(sa.insert(similarity_state).values(
                        id=1, generation=0, epoch=uuid.uuid4().hex))
        except sa.exc.IntegrityError:
            pass  # another process inserted it first

    @property
    def cache_path(self) -> Path | None:
        return self.data_dir / "index" / CACHE_NAME if self.data_dir is not None else None

    # ------------------------------------------------------------------ writers
    def add(self, asset_id: str, postprocess: str, embedding: Any, phash: str | None = None,
            model: str = MODEL_KEY) -> bool:
        """Index (or replace) the vector of one (asset, post-process). Returns False when the
        stored row is already identical (nothing written). Raises ValueError when malformed."""
        vec = parse_vector(embedding)
        h = _check_phash(phash)
        blob = _to_bytes(vec)
        key = (asset_id, postprocess)
        with self._lock:
            with self.engine.connect() as conn:
                old = conn.execute(
                    sa.select(similarity_table.c.embedding, similarity_table.c.phash,
                              similarity_table.c.model)
                    .where(similarity_table.c.asset_id == asset_id,
                           similarity_table.c.postprocess == postprocess)).first()
            if (old is not None and old.embedding is not None and bytes(old.embedding) == blob
                    and old.phash == h and old.model == model):
                return False
            ts = now_ms()
            with self.engine.begin() as conn:
                gen = self._bump(conn)
                values = {"embedding": blob, "phash": h, "model": model, "seq": gen,
                          "updated_at": ts}
                updated = conn.execute(
                    sa.update(similarity_table)
                    .where(similarity_table.c.asset_id == asset_id,
                           similarity_table.c.postprocess == postprocess)
                    .values(**values)).rowcount
                if not updated:
                    conn.execute(sa.insert(similarity_table).values(
                        asset_id=asset_id, postprocess=postprocess, created_at=ts, **values))
            # our own write: apply it without a round trip when we were current before it
            if self._generation == gen - 1 and model == MODEL_KEY:
                self._mem.upsert(key, vec, h)
                self._after_change(gen, 1)
            return True

    def remove(self, asset_id: str, postprocess: str | None = None) -> int:
        """Forget the vectors of an asset (one post-process, or all); returns how many."""
        with self._lock:
            q = sa.select(similarity_table.c.postprocess).where(
                similarity_table.c.asset_id == asset_id,
                similarity_table.c.embedding.is_not(None))
            if postprocess is not None:
                q = q.where(similarity_table.c.postprocess == postprocess)
            with self.engine.connect() as conn:
                pps = [str(r[0]) for r in conn.execute(q)]
            if not pps:
                return 0
            with self.engine.begin() as conn:
                gen = self._bump(conn)
                conn.execute(
                    sa.update(similarity_table)
                    .where(similarity_table.c.asset_id == asset_id,
                           similarity_table.c.postprocess.in_(pps))
                    .values(embedding=None, phash=None, seq=gen, updated_at=now_ms()))
            if self._generation == gen - 1:
                for pp in pps:
                    self._mem.remove((asset_id, pp))
                self._after_change(gen, len(pps))
            return len(pps)

    # ------------------------------------------------------------------ readers
    def refresh(self) -> None:
        """Bring the in-memory copy up to the database (cheap when nothing changed)."""
        with self._lock, self.engine.connect() as conn:
            gen, epoch = self._state(conn)
            if epoch == self._epoch and gen == self._generation:
                return
            if epoch != self._epoch or self._generation < 0:
                self._epoch = epoch
                if not self._load_cache(epoch, gen):
                    self._full_build(conn)
                    return
            self._catch_up(conn, gen)

    def count(self) -> int:
        """Indexed vectors (live rows)."""
        with self._lock:
            self.refresh()
            return self._mem.live

    def is_indexed(self, asset_id: str) -> bool:
        with self._lock:
            self.refresh()
            return bool(self._mem.vectors_of(asset_id))

    def vector(self, asset_id: str) -> Vec | None:
        """The asset's vector (its first post-process by name), or None when not indexed."""
        with self._lock:
            self.refresh()
            got = self._mem.vectors_of(asset_id)
            return self._mem.vecs[got[0][1]].copy() if got else None

    def query(self, embedding: Any, k: int = 10, exclude: str | None = None,
              ) -> list[dict[str, Any]]:
        """The ``k`` most similar assets to ``embedding``: ``[{asset_id, score}]`` (cosine),
        best first, one entry per asset; ``exclude`` (an asset id) is left out."""
        q = parse_vector(embedding)
        with self._lock:
            self.refresh()
            return self._query(q, k, exclude)

    def similar(self, asset_id: str, k: int = 10) -> list[dict[str, Any]] | None:
        """The ``k`` assets most similar to ``asset_id`` (itself excluded), or None when it is
        not indexed."""
        with self._lock:
            self.refresh()
            got = self._mem.vectors_of(asset_id)
            if not got:
                return None
            return self._query(self._mem.vecs[got[0][1]].copy(), k, asset_id)

    def near_duplicates(self, asset_id: str, *, phash_max: int = PHASH_MAX,
                        cosine_min: float = COSINE_MIN, limit: int = 100,
                        ) -> list[dict[str, Any]]:
        """Other assets within ``phash_max`` bits of pHash OR ``cosine_min`` cosine of any of
        the asset's vectors: ``[{asset_id, score, phash_distance}]``, most similar first
        (empty when the asset is not indexed)."""
        with self._lock:
            self.refresh()
            mem = self._mem
            best: dict[str, tuple[float, int | None]] = {}
            n = mem.n
            for (_a, _pp), p in mem.vectors_of(asset_id):
                v = mem.vecs[p]
                cand: set[int] = {q for q, s in mem.search(v, limit + 8) if s >= cosine_min}
                if mem.has_hash[p]:
                    dist = np.bitwise_count(mem.hashes[:n] ^ mem.hashes[p]).astype(np.int64)
                    ok = (dist <= phash_max) & mem.has_hash[:n] & mem.alive[:n]
                    cand.update(int(i) for i in np.flatnonzero(ok))
                for q in cand:
                    key = mem.keys[q]
                    if key is None or key[0] == asset_id:
                        continue
                    score = float(mem.vecs[q] @ v)
                    hd = (int(np.bitwise_count(mem.hashes[q] ^ mem.hashes[p]))
                          if mem.has_hash[p] and mem.has_hash[q] else None)
                    prev = best.get(key[0])
                    if prev is None or score > prev[0]:
                        best[key[0]] = (score, hd if prev is None or hd is not None
                                        else prev[1])
            ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
            return [{"asset_id": a, "score": round(s, 6), "phash_distance": hd}
                    for a, (s, hd) in ranked]

    def save(self) -> Path | None:
        """Write the cache file now (atomically); returns its path (None without a data dir)."""
        with self._lock:
            self.refresh()
            return self._save()

    # ------------------------------------------------------------------ internals
    def _query(self, q: Vec, k: int, exclude: str | None) -> list[dict[str, Any]]:
        mem = self._mem
        # several rows may belong to one asset (several post-processes): ask for a margin,
        # and for more when the margin was not enough
        kk = 2 * k + 4
        while True:
            hits = mem.search(q, kk)
            out: list[dict[str, Any]] = []
            seen: set[str] = set()
            for p, s in hits:
                key = mem.keys[p]
                if key is None or key[0] == exclude or key[0] in seen:
                    continue
                seen.add(key[0])
                out.append({"asset_id": key[0], "score": round(s, 6)})
                if len(out) >= k:
                    return out
            if len(hits) < kk or kk >= mem.live:
                return out
            kk *= 4

    @staticmethod
    def _state(conn: Connection) -> tuple[int, str]:
        row = conn.execute(sa.select(similarity_state.c.generation, similarity_state.c.epoch)
                           .where(similarity_state.c.id == 1)).one()
        return int(row[0]), str(row[1])

    @staticmethod
    def _bump(conn: Connection) -> int:
        """Take the writer lock (the state row) and return the new generation."""
        conn.execute(sa.update(similarity_state).where(similarity_state.c.id == 1)
                     .values(generation=similarity_state.c.generation + 1))
        return int(conn.execute(sa.select(similarity_state.c.generation)
                                .where(similarity_state.c.id == 1)).scalar_one())

    def _after_change(self, gen: int, changes: int) -> None:
        self._generation = gen
        self._unsaved += changes
        # saving costs O(size): every max(save_every, size/4) changes keeps it O(1) per change
        if (self._mem.maybe_compact()
                or self._unsaved >= max(self.save_every, self._mem.live // 4)):
            self._save()

    def _full_build(self, conn: Connection) -> None:
        gen, _ = self._state(conn)
        rows = conn.execute(
            sa.select(similarity_table.c.asset_id, similarity_table.c.postprocess,
                      similarity_table.c.embedding, similarity_table.c.phash,
                      similarity_table.c.seq)
            .where(similarity_table.c.embedding.is_not(None),
                   similarity_table.c.model == MODEL_KEY)
            .order_by(similarity_table.c.asset_id, similarity_table.c.postprocess)).all()
        keys = [(str(r.asset_id), str(r.postprocess)) for r in rows]
        vecs = (np.stack([_from_bytes(r.embedding) for r in rows]) if rows
                else np.zeros((0, DIM), dtype=np.float32))
        self._mem.load_rows(keys, vecs, [r.phash for r in rows])
        # rows committed after the state read may be in the result: never go backwards
        self._generation = max([gen, *(int(r.seq) for r in rows)])
        self._unsaved = 0
        log.info("similarity index built from the database: %d vectors (%s)", len(keys),
                 self._mem.kind)
        if rows:
            self._save()

    def _catch_up(self, conn: Connection, gen: int) -> None:
        """Apply the rows written after our generation. ``gen`` was read BEFORE this select, so
        every row with seq <= gen is visible to it (writers commit in generation order)."""
        rows = conn.execute(
            sa.select(similarity_table.c.asset_id, similarity_table.c.postprocess,
                      similarity_table.c.embedding, similarity_table.c.phash,
                      similarity_table.c.model, similarity_table.c.seq)
            .where(similarity_table.c.seq > self._generation)
            .order_by(similarity_table.c.seq)).all()
        for r in rows:
            key = (str(r.asset_id), str(r.postprocess))
            if r.embedding is None or r.model != MODEL_KEY:
                self._mem.remove(key)
            else:
                self._mem.upsert(key, _from_bytes(r.embedding), r.phash)
        seqs = [int(r.seq) for r in rows]
        self._after_change(max([gen, self._generation, *seqs]), len(rows))

    def _load_cache(self, epoch: str, db_generation: int) -> bool:
        path = self.cache_path
        if path is None or not path.is_file():
            return False
        try:
            with np.load(path, allow_pickle=False) as z:
                if (int(z["format"]) != CACHE_FORMAT or str(z["epoch"]) != epoch
                        or str(z["model"]) != MODEL_KEY
                        or int(z["generation"]) > db_generation):
                    log.info("similarity cache %s is for another database or model: ignored",
                             path)
                    return False
                self._mem.from_npz(z)
                self._generation = int(z["generation"])
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("similarity cache %s unreadable (%s): rebuilding", path, exc)
            self._mem = _Memory(self._mem.hnsw_above)
            return False
        self._unsaved = 0
        return True

    def _save(self) -> Path | None:
        path = self.cache_path
        if path is None or self._epoch is None:
            return None
        data = self._mem.to_npz(self._generation, self._epoch)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".similarity-", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(tmp, 0o644)  # mkstemp makes it 0600
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("cannot write the similarity cache %s: %s", path, exc)
            return None
        self._unsaved = 0
        return path


# ------------------------------------------------------------------------- the sink's hooks
_INDEXES: weakref.WeakKeyDictionary[Engine, SimilarityIndex] = weakref.WeakKeyDictionary()
_INDEXES_LOCK = threading.Lock()


def index_for(engine: Engine, data_dir: Path | str | None = None) -> SimilarityIndex:
    """The process-wide :class:`SimilarityIndex` of ``engine`` (the first call's ``data_dir``
    decides where its cache file lives)."""
    with _INDEXES_LOCK:
        idx = _INDEXES.get(engine)
        if idx is None:
            idx = _INDEXES[engine] = SimilarityIndex(engine, data_dir)
        elif idx.data_dir is None and data_dir is not None:
            idx.data_dir = Path(data_dir)
        return idx


def on_result(engine: Engine, asset_id: str, postprocess: str,
              data: Mapping[str, Any] | None, data_dir: Path | str | None = None) -> list[str]:
    """Bring the index in line with the merged result of an ``index-similarity`` post-process;
    returns the asset's near-duplicates (other asset ids, most similar first).

    The stored result (``asset_tasks``) is authoritative: if it is ``ok`` its vector is
    indexed, if it is anything else that (asset, post-process) is dropped; only when the store
    has no such row is ``data`` used. Calling this again (duplicate, replay) changes nothing.
    A malformed result is logged and skipped.
    """
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(asset_tasks.c.status, asset_tasks.c.data_json, asset_tasks.c.task)
            .where(asset_tasks.c.asset_id == asset_id,
                   asset_tasks.c.postprocess == postprocess)).first()
    idx = index_for(engine, data_dir)
    current: Mapping[str, Any] | None = data
    if row is not None:
        current = None
        if row.status == "ok" and row.task == TASK:
            current = json.loads(row.data_json) if row.data_json else data
    if current is None:
        idx.remove(asset_id, postprocess)
        return []
    model = f"{current.get('model', '')}:{current.get('model_version', '')}"
    try:
        idx.add(asset_id, postprocess, current.get("embedding"), current.get("phash"), model)
    except ValueError as exc:
        log.warning("similarity index: %s/%s not indexed: %s", asset_id, postprocess, exc)
        return []
    if model != MODEL_KEY:
        log.warning("similarity index: %s/%s made by %s, not %s: stored, not searchable",
                    asset_id, postprocess, model, MODEL_KEY)
        return []
    return [d["asset_id"] for d in idx.near_duplicates(asset_id)]


def result_hook(event: ResultEvent) -> HookOutcome | None:
    """The result hook ``index-similarity`` declares (:func:`processors.registry.register`):
    after the sink merged a result, index its vector; near-duplicates are flagged on the asset
    as a notice (in GET, AssetUpdates and webhooks)."""
    svc = event.services
    dups = on_result(svc.engine, event.asset_id, event.postprocess, event.data, svc.data_dir)
    if not dups:
        return None
    return HookOutcome(notices=("near-duplicate of: " + ", ".join(sorted(dups)),))


def forget(engine: Engine, asset_id: str, data_dir: Path | str | None = None) -> int:
    """Drop every vector of a deleted asset from the index; returns how many. The row stays as
    a tombstone without vector or hash (other processes' copies learn the removal from it);
    this process's copy is compacted and its cache file rewritten without the asset."""
    idx = index_for(engine, data_dir)
    n = idx.remove(asset_id)
    if n:
        with idx._lock:
            idx._mem.compact()
            idx._save()
    return n

