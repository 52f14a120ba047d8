"""Remember the results of slow model work by key, in memory or in a SQLite file.

The eval suite and `assistant fit` score the same questions over and over while only the ranker
and gate change; a key names everything the result depends on (model file, prompts, question,
evidence, search settings), so a refit reads every score back in milliseconds. Does not know
what it stores beyond JSON.
"""

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from assistant.errors import AssistantError


def key_of(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, default=str).encode()).hexdigest()


class Memo:
    """A dict of JSON values; kept in `path` (created when missing) when one is given."""

    def __init__(self, path: Path | None = None) -> None:
        self._seen: dict[str, Any] = {}
        self._db = None
        if path is not None:
            self._db = _open(path)

    def get(self, key: str) -> Any | None:
        if key not in self._seen and self._db is not None:
            row = self._db.execute("SELECT value FROM memo WHERE key = ?", (key,)).fetchone()
            if row is not None:
                self._seen[key] = json.loads(row[0])
        return self._seen.get(key)

    def put(self, key: str, value: Any) -> None:
        self._seen[key] = value
        if self._db is not None:
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO memo VALUES (?, ?)", (key, json.dumps(value)))


def _open(path: Path) -> sqlite3.Connection:
    """The SQLite file at `path`, made when missing; one line when it is something else."""
    fix = "give another --score-cache path, or delete that file"
    if path.exists() and not path.is_file():
        raise AssistantError(f"the score cache {path} is not a regular file; {fix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False)
        db.execute("CREATE TABLE IF NOT EXISTS memo (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    except (OSError, sqlite3.Error) as e:
        raise AssistantError(f"cannot use the score cache {path} ({e}); {fix}") from None
    return db
