"""Searching for secrets where they must never be: files (logs, SQLite databases), strings and Kafka headers.

A plain byte grep would miss what Dagster stores compressed (job snapshots, with every resource's config defaults,
are zlib blobs in runs.db), so SQLite files are also read cell by cell, each blob decompressed when it can be.
Every search also reports which of a set of known-present markers it found: a sweep that finds neither a
secret nor its marker has read nothing and proves nothing.
"""

import sqlite3
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass
class Hits:
    """Where each searched string was found (a description of the place per hit)."""

    found: dict[str, list[str]] = field(default_factory=dict)

    def add(self, needle: str, where: str) -> None:
        self.found.setdefault(needle, []).append(where)

    def places(self, needle: str) -> list[str]:
        return self.found.get(needle, [])

    def merge(self, other: "Hits") -> "Hits":
        for needle, places in other.found.items():
            for place in places:
                self.add(needle, place)
        return self


def _decoded(blob: bytes) -> bytes:
    try:
        return zlib.decompress(blob)
    except zlib.error:
        return blob


def sqlite_cells(path: Path) -> Iterator[tuple[str, bytes]]:
    """(table.column, bytes) of every cell of every table, blobs decompressed when they are zlib streams."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cursor = db.execute(f'SELECT * FROM "{table}"')
            columns = [d[0] for d in cursor.description]
            for row in cursor:
                for column, value in zip(columns, row, strict=True):
                    if isinstance(value, bytes):
                        yield f"{table}.{column}", _decoded(value)
                    elif value is not None:
                        yield f"{table}.{column}", str(value).encode()
    finally:
        db.close()


def search_bytes(data: bytes, needles: Iterable[str], where: str, hits: Hits) -> None:
    for needle in needles:
        if needle.encode() in data:
            hits.add(needle, where)


def search_files(root: Path, needles: list[str]) -> Hits:
    """Every regular file under `root` (or `root` itself), raw, and SQLite databases cell by cell."""
    hits = Hits()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        data = path.read_bytes()
        search_bytes(data, needles, str(path), hits)
        if data.startswith(SQLITE_MAGIC):
            for column, cell in sqlite_cells(path):
                search_bytes(cell, needles, f"{path}:{column}", hits)
    return hits


def search_text(text: str, needles: list[str], where: str) -> Hits:
    hits = Hits()
    search_bytes(text.encode(), needles, where, hits)
    return hits
