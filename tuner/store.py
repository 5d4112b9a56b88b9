"""Embedded time-series store on SQLite (WAL): append, window reads, retention, size bound.

Layout (schema version 1):

* ``series(id, name, labels)`` — one row per series; ``labels`` is canonical JSON of the
  sorted label pairs without ``__name__``.
* ``samples(series_id, ts, value)`` — ``WITHOUT ROWID`` keyed by (series, ts in ms). SQLite
  turns NaN into NULL, so NULL means NaN; Prometheus's *stale marker* is stored as the text
  ``'stale'`` (the column's affinity keeps text that is not a number as text).
* ``scrapes(target, ts, up, duration, samples, error_kind, error)`` — the scrape log.
* ``documents(kind, key, ts, body)`` — JSON documents other modules keep (alert state,
  suggest reports, tuning trials).

Every append is one transaction, so a process killed mid-write leaves the store holding
everything committed before the kill (WAL, ``synchronous=NORMAL``). Each thread gets its
own connection; the series-id cache is shared under a lock.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuner.errors import StoreError
from tuner.exposition import Labels, Sample

SCHEMA_VERSION = 1
# Prometheus's stale marker: a NaN with a specific bit pattern (value.StaleNaN).
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]


def is_stale(value: float) -> bool:
    """True for Prometheus's stale-marker NaN (not for an ordinary NaN)."""
    return bool(struct.pack("<d", value) == struct.pack("<Q", 0x7FF0000000000002))


@dataclass(frozen=True)
class Matcher:
    """A label matcher as in PromQL: ``op`` is one of ``= != =~ !~``; ``__name__`` is a label."""

    name: str
    op: str
    value: str

    def matches(self, actual: str) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        anchored = re.fullmatch(self.value, actual, re.DOTALL) is not None
        return anchored if self.op == "=~" else not anchored


@dataclass(frozen=True)
class SeriesData:
    """One series' samples in a window; ``timestamps`` in ms (int64), ``values`` float64.

    Stale markers appear as ``STALE_NAN`` in ``values`` (test with ``is_stale``).
    """

    name: str
    labels: Mapping[str, str]
    timestamps: np.ndarray
    values: np.ndarray

    @property
    def metric(self) -> dict[str, str]:
        """Labels including ``__name__``, as a PromQL selector returns them."""
        return {"__name__": self.name, **self.labels}


@dataclass(frozen=True)
class ScrapeRecord:
    """The outcome of one scrape of one target."""

    target: str
    ts: float
    up: bool
    duration: float
    samples: int
    error_kind: str = ""
    error: str = ""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    UNIQUE (name, labels)
);
CREATE TABLE IF NOT EXISTS samples (
    series_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    value REAL,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scrapes (
    target TEXT NOT NULL,
    ts REAL NOT NULL,
    up INTEGER NOT NULL,
    duration REAL NOT NULL,
    samples INTEGER NOT NULL,
    error_kind TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS scrapes_target_ts ON scrapes (target, ts);
CREATE TABLE IF NOT EXISTS documents (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    ts REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
"""


def _encode(value: float) -> float | str | None:
    if math.isnan(value):
        return "stale" if is_stale(value) else None
    return value


def _decode(value: float | int | str | None) -> float:
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        return float(value)
    return STALE_NAN if value == "stale" else math.nan


def _labels_json(labels: Labels) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


class Store:
    """A SQLite-backed time-series store. Open with ``Store(path)``; close with ``close()``."""

    def __init__(
        self,
        path: str | Path,
        retention: float = 7 * 86400.0,
        max_bytes: int = 2 * 1024**3,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.retention = retention
        self.max_bytes = max_bytes
        self.clock = clock
        self.read_only = read_only
        self._local = threading.local()
        self._lock = threading.RLock()
        self._series: dict[tuple[str, str], int] = {}
        self._series_rows: dict[int, tuple[str, dict[str, str]]] = {}
        self._connections: list[sqlite3.Connection] = []
        if read_only:
            if not self.path.exists():
                raise StoreError(f"store {self.path} does not exist (has the daemon run yet?)")
        else:
            parent = self.path.parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"store path {self.path}: cannot create directory {parent}: "
                    f"{exc.strerror or exc}"
                ) from None
        try:
            conn = self._conn()
            if not read_only:
                with conn:
                    conn.executescript(_SCHEMA)
                    conn.execute(
                        "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(
                f"store path {self.path}: cannot open as SQLite store: {exc}"
            ) from None
        if version is None or int(version[0]) != SCHEMA_VERSION:
            self.close()
            raise StoreError(
                f"store {self.path} has schema version {version and version[0]}, "
                f"this tuner needs {SCHEMA_VERSION}"
            )
        self._load_series()

    # -- connections -------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                if self.read_only:
                    uri = f"file:{self.path}?mode=ro"
                    conn = sqlite3.connect(
                        uri, uri=True, timeout=self.busy_timeout, check_same_thread=False
                    )
                else:
                    conn = sqlite3.connect(
                        self.path, timeout=self.busy_timeout, check_same_thread=False
                    )
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            except sqlite3.Error as exc:
                raise StoreError(
                    f"store path {self.path}: cannot open database: {exc} "
                    "(is the directory writable?)"
                ) from None
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                with suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise StoreError(f"store {self.path} is open read-only")
        conn = self._conn()
        with self._lock:
            try:
                with conn:
                    yield conn
            except sqlite3.OperationalError as exc:
                raise StoreError(f"store {self.path}: write failed: {exc}") from None

    # -- series ids ----------------------------------------------------------------------

    def _load_series(self) -> None:
        rows = self._conn().execute("SELECT id, name, labels FROM series").fetchall()
        with self._lock:
            for sid, name, labels in rows:
                self._series[(name, labels)] = sid
                self._series_rows[sid] = (name, json.loads(labels))

    def _series_id(self, conn: sqlite3.Connection, name: str, labels: Labels) -> int:
        key = (name, _labels_json(labels))
        sid = self._series.get(key)
        if sid is None:
            cur = conn.execute("INSERT OR IGNORE INTO series (name, labels) VALUES (?, ?)", key)
            if cur.rowcount:
                sid = int(cur.lastrowid or 0)
            else:
                sid = int(
                    conn.execute("SELECT id FROM series WHERE name=? AND labels=?", key).fetchone()[
                        0
                    ]
                )
            self._series[key] = sid
            self._series_rows[sid] = (name, dict(labels))
        return sid

    # -- writes --------------------------------------------------------------------------

    def append(self, samples: Iterable[Sample], ts_ms: int) -> int:
        """Append samples taken at ``ts_ms`` in one transaction; returns how many were stored.

        A sample for a (series, ts) already present replaces it.
        """
        with self._write() as conn:
            rows = [
                (self._series_id(conn, s.name, s.labels), ts_ms, _encode(s.value)) for s in samples
            ]
            conn.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?)", rows)
        return len(rows)

    def append_points(self, points: Iterable[tuple[str, Labels, int, float]]) -> int:
        """Append ``(name, labels, ts_ms, value)`` points in one transaction (backfill, tests)."""
        with self._write() as conn:
            rows = [(self._series_id(conn, n, lab), ts, _encode(v)) for n, lab, ts, v in points]
            conn.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?)", rows)
        return len(rows)

    def record_scrape(self, record: ScrapeRecord) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO scrapes VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.target,
                    record.ts,
                    int(record.up),
                    record.duration,
                    record.samples,
                    record.error_kind,
                    record.error[:2000],
                ),
            )

    def put_document(self, kind: str, key: str, body: Any, ts: float | None = None) -> None:
        """Insert or replace a JSON document under (kind, key)."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?)",
                (kind, key, self.clock() if ts is None else ts, json.dumps(body, sort_keys=True)),
            )

    def delete_documents(self, kind: str, keys: Iterable[str]) -> None:
        with self._write() as conn:
            conn.executemany(
                "DELETE FROM documents WHERE kind=? AND key=?", [(kind, k) for k in keys]
            )

    # -- reads ---------------------------------------------------------------------------

    def documents(self, kind: str) -> list[tuple[str, float, Any]]:
        """All documents of a kind as (key, ts, body), oldest first."""
        rows = (
            self._conn()
            .execute("SELECT key, ts, body FROM documents WHERE kind=? ORDER BY ts, key", (kind,))
            .fetchall()
        )
        return [(k, ts, json.loads(b)) for k, ts, b in rows]

    def refresh_series(self) -> None:
        """Pick up series another process created since we opened (readers of a live store)."""
        with self._lock:
            known = max(self._series_rows, default=0)
        rows = (
            self._conn()
            .execute("SELECT id, name, labels FROM series WHERE id > ?", (known,))
            .fetchall()
        )
        with self._lock:
            for sid, name, labels in rows:
                self._series[(name, labels)] = sid
                self._series_rows[sid] = (name, json.loads(labels))

    def series_ids(self, matchers: Sequence[Matcher]) -> list[int]:
        """Ids of series whose name and labels satisfy every matcher (missing label = "")."""
        self.refresh_series()
        name_eq = next((m.value for m in matchers if m.name == "__name__" and m.op == "="), None)
        out = []
        with self._lock:
            items = list(self._series_rows.items())
        for sid, (name, labels) in items:
            if name_eq is not None and name != name_eq:
                continue
            if all(
                m.matches(name if m.name == "__name__" else labels.get(m.name, ""))
                for m in matchers
            ):
                out.append(sid)
        return out

    def select(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> list[SeriesData]:
        """Samples with ``start_ms <= ts <= end_ms`` of every matching series, ts ascending.

        Series without samples in the window are omitted.
        """
        ids = self.series_ids(matchers)
        if not ids:
            return []
        conn = self._conn()
        out: list[SeriesData] = []
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start : chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT series_id, ts, value FROM samples WHERE series_id IN ({marks}) "
                "AND ts >= ? AND ts <= ? ORDER BY series_id, ts",
                (*chunk, start_ms, end_ms),
            ).fetchall()
            if not rows:
                continue
            sids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            ts = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
            vals = np.fromiter(
                (
                    r[2]
                    if isinstance(r[2], float)
                    else (
                        float(r[2])
                        if isinstance(r[2], int)
                        else (STALE_NAN if r[2] == "stale" else math.nan)
                    )
                    for r in rows
                ),
                dtype=np.float64,
                count=len(rows),
            )
            bounds = np.flatnonzero(np.diff(sids)) + 1
            starts = np.concatenate(([0], bounds))
            ends = np.concatenate((bounds, [len(rows)]))
            with self._lock:
                for a, b in zip(starts, ends, strict=True):
                    name, labels = self._series_rows[int(sids[a])]
                    out.append(SeriesData(name, dict(labels), ts[a:b].copy(), vals[a:b].copy()))
        return out

    def series_with_samples(self, matchers: Sequence[Matcher], start_ms: int,
                            end_ms: int) -> list[dict[str, str]]:
        """Label sets (``__name__`` included) of matching series with a sample in the window.

        One index probe per candidate series (never a scan of the window's samples): what the
        API's ``/series``, ``/labels`` and ``/label/<name>/values`` read.
        """
        ids = self.series_ids(matchers)
        conn = self._conn()
        found: list[int] = []
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start : chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            found.extend(r[0] for r in conn.execute(
                f"SELECT id FROM series WHERE id IN ({marks}) AND EXISTS (SELECT 1 FROM samples "
                "WHERE series_id = series.id AND ts >= ? AND ts <= ?)",
                (*chunk, start_ms, end_ms)))
        with self._lock:
            rows = [self._series_rows[sid] for sid in found]
        return [{"__name__": name, **labels} for name, labels in rows]

    def time_range(self) -> tuple[int, int] | None:
        """Oldest and newest sample timestamps (ms), or None for an empty store."""
        row = self._conn().execute("SELECT MIN(ts), MAX(ts) FROM samples").fetchone()
        if row is None or row[0] is None:
            return None
        return int(row[0]), int(row[1])

    def last_scrapes(self) -> list[ScrapeRecord]:
        """The newest scrape record of every target."""
        rows = (
            self._conn()
            .execute(
                "SELECT s.target, s.ts, s.up, s.duration, s.samples, s.error_kind, s.error "
                "FROM scrapes s JOIN (SELECT target, MAX(ts) AS ts FROM scrapes GROUP BY target) m "
                "ON s.target = m.target AND s.ts = m.ts ORDER BY s.target"
            )
            .fetchall()
        )
        return [ScrapeRecord(r[0], r[1], bool(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def sample_count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def size_bytes(self) -> int:
        """Bytes in use by the database (excluding free pages) plus the WAL file."""
        conn = self._conn()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        wal = self.path.with_name(self.path.name + "-wal")
        return int((pages - free) * size + (wal.stat().st_size if wal.exists() else 0))

    # -- retention -----------------------------------------------------------------------

    def apply_retention(self, now: float | None = None) -> int:
        """Delete samples older than the retention, then oldest data while over ``max_bytes``.

        Returns the number of samples deleted.
        """
        now = self.clock() if now is None else now
        cutoff = int((now - self.retention) * 1000)
        deleted = self._delete_before(cutoff)
        with self._write() as conn:
            conn.execute("DELETE FROM scrapes WHERE ts < ?", (now - self.retention,))
        rng = self.time_range()
        while rng is not None and self._db_bytes() > self.max_bytes:
            oldest, newest = rng
            if newest - oldest < 1000:
                break
            step = max(1000, (newest - oldest) // 10)
            deleted += self._delete_before(oldest + step)
            rng = self.time_range()
        return deleted

    def _db_bytes(self) -> int:
        conn = self._conn()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * conn.execute("PRAGMA page_size").fetchone()[0])

    def _delete_before(self, cutoff_ms: int) -> int:
        with self._lock:
            ids = list(self._series_rows)
        total = 0
        with self._write() as conn:
            for sid in ids:
                total += conn.execute(
                    "DELETE FROM samples WHERE series_id=? AND ts < ?", (sid, cutoff_ms)
                ).rowcount
        return total

    def checkpoint(self) -> None:
        """Fold the WAL into the main file (cheap; keeps the WAL from growing)."""
        if not self.read_only:
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")
