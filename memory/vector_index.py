"""The in-memory FAISS index of composite documents, updated by lore entry id.

One ``IndexIDMap2(IndexFlatIP(dim))`` per scope (``world:{id}`` for base lore shared by a
world's sessions, ``session:{id}`` for a session's composite documents, ``evidence:{id}`` for
a session's evidence items, ``memory.evidence``); ids are lore entry ids (evidence: item
ids), vectors are L2-normalised so inner product is cosine similarity (faiss: HNSW cannot
remove ids, IndexIDMap2 can). A session search looks in the session scope and in the world
scope minus the entries the session has its own document for.

The stored vectors (``stored_vectors`` table) are the source of truth; ``load_from_db``
rebuilds an index from them and ``VectorSync`` keeps it current from the ``vectors:updates``
Redis stream that ``embed`` workers append to.

Several embedders can have stored vectors side by side (switching from the 384-d local
MiniLM to the 1024-d ``mistral-embed`` re-embeds into a new index, ``npc-memory reindex``). An
index belongs to one embedder: it loads, and takes from the stream, only that embedder's
vectors of its dimension. Every embedder's rows use the plain scope names; the table's unique
key is (scope, lore entry, embedder) (migration 0008).

Large scopes are searched approximately: once a scope holds ``ann.min_size`` vectors, an
inverted-file index (IVF: k-means cells, a query scans the ``nprobe`` nearest cells; Jégou et
al. 2011, ``faiss.IndexIVFFlat``) is trained on its vectors beside the exact index and answers
its searches. The exact index stays the store that upserts and removes go to; a write marks
the IVF index stale, searches fall back to the exact index until a background thread has
rebuilt it, and a scope only grows that large for a world's base lore, which changes on
import or reindex. Session and evidence scopes stay exact in practice (they are far smaller),
so scoping is never approximate: a search only ever looks in the scopes it names.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import faiss
import numpy as np

from memory import keys as rkeys

log = logging.getLogger(__name__)

STREAM_MAXLEN = 100_000


DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
"""The name of the default embedder (``EMBEDDER=minilm``, the local MiniLM)."""


def world_scope(world_id: int) -> str:
    """Scope name of a world's base lore."""
    return f"world:{world_id}"


def session_scope(session_id: str) -> str:
    """Scope name of a session's documents."""
    return f"session:{session_id}"


def evidence_scope(session_id: str) -> str:
    """Scope name of a session's evidence items (ids: ``seq * 2 + part``, ``memory.evidence``)."""
    return f"evidence:{session_id}"


@dataclass(frozen=True)
class Hit:
    """One search result: lore entry id, cosine score in [-1, 1], and the scope it came from."""

    lore_entry_id: int
    score: float
    scope: str


@dataclass(frozen=True)
class AnnParams:
    """When and how a scope gets an approximate (IVF) index.

    ``min_size``: vectors a scope must hold before one is built (0: never, all exact);
    ``nlist``: k-means cells (0: ``2 * sqrt(n)``); ``nprobe``: cells a query scans (larger:
    better recall, slower). Settings ``VECTOR_ANN_MIN``, ``VECTOR_IVF_NLIST``,
    ``VECTOR_IVF_NPROBE`` (faiss ``IndexIVF`` parameters).
    """

    min_size: int = 0
    nlist: int = 0
    nprobe: int = 24

    @classmethod
    def from_settings(cls) -> "AnnParams":
        """The parameters configured in ``settings``."""
        from settings import get_settings

        s = get_settings()
        return cls(s.vector_ann_min, s.vector_ivf_nlist, s.vector_ivf_nprobe)

    def cells(self, n: int) -> int:
        """The number of k-means cells for ``n`` vectors."""
        return max(1, min(n // 39, self.nlist or int(2 * n ** 0.5)))


@dataclass
class _Approx:
    version: int
    index: faiss.IndexIVFFlat


class VectorIndex:
    """Scoped FAISS indexes with upsert/remove by id; thread-safe (writes under a lock).

    Args:
        dim: vector dimension (384 for MiniLM, 1024 for mistral-embed).
        embedder: the embedder whose vectors this index holds (its ``name``); None accepts
            any embedder's vectors of dimension ``dim`` (tests of the index alone).
        ann: when large scopes are searched approximately (default: never).
    """

    def __init__(self, dim: int, embedder: str | None = None, ann: AnnParams | None = None):
        self.dim = dim
        self.embedder = embedder
        self.ann = ann or AnnParams()
        self._scopes: dict[str, faiss.IndexIDMap2] = {}
        self._lock = threading.Lock()
        self._versions: dict[str, int] = {}
        self._approx: dict[str, _Approx] = {}
        self._building: set[str] = set()

    def _index(self, scope: str) -> faiss.IndexIDMap2:
        index = self._scopes.get(scope)
        if index is None:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            self._scopes[scope] = index
        return index

    def upsert(self, scope: str, ids: list[int], vectors: np.ndarray) -> None:
        """Insert or replace ``vectors`` (shape (n, dim), float32) under ``ids`` in ``scope``.

        Raises:
            ValueError: shape mismatch.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(ids) != vectors.shape[0]:
            raise ValueError(f"{len(ids)} ids for {vectors.shape[0]} vectors")
        id_arr = np.asarray(ids, dtype=np.int64)
        with self._lock:
            index = self._index(scope)
            index.remove_ids(faiss.IDSelectorBatch(id_arr))
            index.add_with_ids(vectors, id_arr)
            self._versions[scope] = self._versions.get(scope, 0) + 1

    def remove(self, scope: str, ids: list[int]) -> int:
        """Remove ids from a scope; returns how many were removed."""
        with self._lock:
            index = self._scopes.get(scope)
            if index is None:
                return 0
            removed = int(index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))))
            if removed:
                self._versions[scope] = self._versions.get(scope, 0) + 1
            return removed

    def ids(self, scope: str) -> np.ndarray:
        """The ids stored in a scope (int64 array)."""
        index = self._scopes.get(scope)
        if index is None or index.ntotal == 0:
            return np.zeros(0, dtype=np.int64)
        return faiss.vector_to_array(index.id_map).astype(np.int64)

    def size(self, scope: str | None = None) -> int:
        """Number of vectors in ``scope``, or in every scope."""
        if scope is not None:
            index = self._scopes.get(scope)
            return int(index.ntotal) if index is not None else 0
        return int(sum(i.ntotal for i in self._scopes.values()))

    def search(self, scope: str, query: np.ndarray, k: int, exclude: np.ndarray | None = None,
               include: np.ndarray | None = None) -> list[Hit]:
        """Top-``k`` of one scope for one query vector (shape (dim,)), best first; ids in
        ``exclude`` are skipped and, when ``include`` is given, only its ids are searched
        (FAISS ``IDSelectorBatch``: the top ``k`` of the allowed ids, however many others the
        scope holds; an empty ``include`` finds nothing).

        The search runs single-threaded in the calling thread (OpenMP's thread count is per
        thread): one query gains nothing from a team of threads, and starting one on busy
        cores cost 1.6-7 ms per search of 1,000 x 384 vectors here, against 0.1 ms alone.
        """
        index = self._scopes.get(scope)
        if index is None or index.ntotal == 0 or k <= 0:
            return []
        faiss.omp_set_num_threads(1)
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        sel = None
        keep = []  # the selectors a combined selector points to live until the search ends
        if include is not None:
            if not len(include):
                return []
            sel = faiss.IDSelectorBatch(np.ascontiguousarray(include, dtype=np.int64))
            keep.append(sel)
        if exclude is not None and len(exclude):
            ex = faiss.IDSelectorBatch(exclude.astype(np.int64))
            not_ex = faiss.IDSelectorNot(ex)
            keep += [ex, not_ex]
            sel = not_ex if sel is None else faiss.IDSelectorAnd(sel, not_ex)
        approx = self._fresh_approx(scope, index)
        if approx is not None:
            index = approx
            params = faiss.SearchParametersIVF(nprobe=self.ann.nprobe)
            if sel is not None:
                params.sel = sel
        else:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        scores, ids = index.search(q, min(k, index.ntotal), params=params)
        return [Hit(int(i), float(s), scope) for s, i in zip(scores[0], ids[0]) if i >= 0]

    def approximate(self, scope: str) -> bool:
        """Whether searches of ``scope`` are answered by an up-to-date IVF index now."""
        approx = self._approx.get(scope)
        return approx is not None and approx.version == self._versions.get(scope, 0)

    def build_approximate(self, scope: str, train_max: int = 64) -> bool:
        """Train and fill the IVF index of ``scope`` from its exact index, in the calling
        thread (k-means on at most ``train_max`` vectors per cell, a random sample); returns
        False when the scope is below ``ann.min_size`` (or ANN is off). Writes that land
        while it builds leave the new index stale, so it never answers for vectors it does
        not hold."""
        if not self.ann.min_size:
            return False
        with self._lock:
            flat = self._scopes.get(scope)
            if flat is None or flat.ntotal < self.ann.min_size:
                return False
            version = self._versions.get(scope, 0)
            n = flat.ntotal
            vectors = flat.index.reconstruct_n(0, n)
            ids = faiss.vector_to_array(flat.id_map).astype(np.int64)
        nlist = self.ann.cells(n)
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist,
                                 faiss.METRIC_INNER_PRODUCT)
        sample = vectors
        if n > train_max * nlist:
            rng = np.random.default_rng(0)
            sample = vectors[rng.choice(n, train_max * nlist, replace=False)]
        ivf.train(sample)
        ivf.add_with_ids(vectors, ids)
        with self._lock:
            self._approx[scope] = _Approx(version, ivf)
        log.info("built IVF index of %s: %d vectors, %d cells", scope, n, nlist)
        return True

    def _fresh_approx(self, scope: str, flat: faiss.IndexIDMap2):
        """The scope's IVF index when it is current; starts a rebuild in the background when
        the scope is large enough and the index is missing or stale (the caller searches the
        exact index meanwhile)."""
        if not self.ann.min_size or flat.ntotal < self.ann.min_size:
            return None
        approx = self._approx.get(scope)
        if approx is not None and approx.version == self._versions.get(scope, 0):
            return approx.index
        with self._lock:
            if scope in self._building:
                return None
            self._building.add(scope)

        def rebuild() -> None:
            try:
                self.build_approximate(scope)
            except Exception:
                log.exception("IVF build of %s failed; searches stay exact", scope)
            finally:
                with self._lock:
                    self._building.discard(scope)

        threading.Thread(target=rebuild, name=f"ivf-{scope}", daemon=True).start()
        return None

    def search_session(self, world_id: int, session_id: str, query: np.ndarray, k: int) -> list[Hit]:
        """Top-``k`` documents visible in a session: its own composite documents, and the
        world's base documents for entries it has no document of its own for."""
        s_scope = session_scope(session_id)
        own = self.ids(s_scope)
        hits = self.search(s_scope, query, k) + self.search(world_scope(world_id), query, k, exclude=own)
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits[:k]


def load_from_db(index: VectorIndex, session) -> int:
    """Fill ``index`` from the stored vectors of its embedder (``index.embedder``; any
    embedder when None) and dimension, oldest first so the newest row of a (scope, entry)
    wins, and from the stored evidence vectors (``memory.evidence.load_vectors``); returns
    the count loaded. Vectors of other embedders or dimensions are never loaded."""
    from sqlalchemy import select

    from models import StoredVector

    q = (select(StoredVector.scope, StoredVector.lore_entry_id, StoredVector.vector)
         .where(StoredVector.dim == index.dim)
         .order_by(StoredVector.updated_at, StoredVector.id))
    if index.embedder is not None:
        q = q.where(StoredVector.embedder == index.embedder)
    rows = session.execute(q).all()
    by_scope: dict[str, dict[int, bytes]] = {}
    for scope, entry_id, blob in rows:
        by_scope.setdefault(scope, {})[entry_id] = blob
    for scope, vectors_by_id in by_scope.items():
        vectors = np.frombuffer(b"".join(vectors_by_id.values()),
                                dtype=np.float32).reshape(-1, index.dim)
        index.upsert(scope, list(vectors_by_id), vectors)
    from memory.evidence import load_vectors

    return sum(len(v) for v in by_scope.values()) + load_vectors(index, session)


def publish_upsert(r, scope: str, lore_entry_id: int, vector: np.ndarray,
                   embedder: str | None = None) -> None:
    """Announce a stored vector to every dialogue server (``vectors:updates`` stream):
    ``scope``, lore entry id, float32 bytes and the embedder's name (servers of other
    embedders skip it)."""
    fields = {"scope": scope, "id": str(lore_entry_id),
              "vector": np.asarray(vector, dtype=np.float32).tobytes()}
    if embedder is not None:
        fields["embedder"] = embedder
    r.xadd(rkeys.VECTOR_UPDATES, fields, maxlen=STREAM_MAXLEN, approximate=True)


def publish_remove(r, scope: str, ids: list[int]) -> None:
    """Announce on ``vectors:updates`` that ``ids`` leave ``scope`` (``op=remove``; every
    dialogue server's index drops them, whatever its embedder): a rollback's retracted
    entities and undone evidence items (``memory.timeline``). Nothing is sent for no ids."""
    if ids:
        r.xadd(rkeys.VECTOR_UPDATES,
               {"op": "remove", "scope": scope, "ids": ",".join(str(int(i)) for i in ids)},
               maxlen=STREAM_MAXLEN, approximate=True)


class VectorSync:
    """Keeps a ``VectorIndex`` in step with the ``vectors:updates`` stream, in a thread.

    Call ``start_id()`` before ``load_from_db`` so no update falls between the load and the
    first read; upserts are idempotent, so replaying one already loaded is harmless.
    """

    def __init__(self, index: VectorIndex, r, block_ms: int = 500):
        self.index = index
        self.r = r
        self.block_ms = block_ms
        self.last_id = "0-0"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.applied = 0

    def start_id(self) -> str:
        """Remember the stream's current end as the point to read from."""
        last = self.r.xrevrange(rkeys.VECTOR_UPDATES, count=1)
        self.last_id = last[0][0].decode() if last else "0-0"
        return self.last_id

    def poll(self) -> int:
        """Apply every pending update of the index's embedder and dimension once (others are
        skipped) and every removal (``publish_remove``); returns how many were applied."""
        res = self.r.xread({rkeys.VECTOR_UPDATES: self.last_id}, count=500, block=self.block_ms)
        n = 0
        for _stream, entries in res or []:
            for entry_id, fields in entries:
                if fields.get(b"op") == b"remove":  # publish_remove
                    ids = [int(x) for x in fields[b"ids"].decode().split(",") if x]
                    self.index.remove(fields[b"scope"].decode(), ids)
                    self.last_id = entry_id.decode()
                    n += 1
                    continue
                vec = np.frombuffer(fields[b"vector"], dtype=np.float32)
                other = (self.index.embedder is not None and b"embedder" in fields
                         and fields[b"embedder"].decode() != self.index.embedder)
                if vec.shape[0] == self.index.dim and not other:
                    self.index.upsert(fields[b"scope"].decode(), [int(fields[b"id"])], vec)
                    n += 1
                self.last_id = entry_id.decode()
        self.applied += n
        return n

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # keep syncing across Redis hiccups
                log.exception("vector sync failed; retrying")
                self._stop.wait(1.0)

    def start(self) -> None:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._run, name="vector-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
