"""API keys: the router stores only their SHA-256, with a name, a role and the tasks each may use.

`graduate keys create NAME` prints a new key once. The file (default var/keys.json) is re-read
when it changes, so a new key works without a restart.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.common.contracts import utcnow

Role = Literal["service", "reviewer"]
ALL_TASKS = "*"
KEY_PREFIX = "gr_"


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    sha256: str
    role: Role = "service"
    tasks: tuple[str, ...] = (ALL_TASKS,)
    created: datetime = Field(default_factory=utcnow)

    def may_use(self, task: str) -> bool:
        return ALL_TASKS in self.tasks or task in self.tasks


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[ApiKey] = Field(default_factory=list)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys(path: Path) -> KeyFile:
    try:
        return KeyFile.model_validate_json(Path(path).read_text())
    except FileNotFoundError:
        return KeyFile()


def create_key(path: Path, name: str, role: Role = "service", tasks: tuple[str, ...] = (ALL_TASKS,)) -> str:
    """Add a key named `name` to the file and return it (the only time it is ever shown)."""
    if not name or not all(c.isalnum() or c in "._-" for c in name):
        raise ValueError(f"key name {name!r}: use letters, digits, '.', '_' and '-'")
    keys = read_keys(path)
    if any(k.name == name for k in keys.keys):
        raise ValueError(f"a key named {name!r} already exists in {path}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    keys.keys.append(ApiKey(name=name, sha256=hash_key(key), role=role, tasks=tuple(tasks) or (ALL_TASKS,)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(keys.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp, path)
    return key


class KeyStore:
    """Looks presented keys up by hash; re-reads the file when its mtime changes (one stat per check)."""

    def __init__(self, path: Path, check_every_s: float = 0.0) -> None:
        self.path = Path(path)
        self.check_every_s = check_every_s
        self._by_hash: dict[str, ApiKey] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._reload()

    def __len__(self) -> int:
        self._maybe_reload()
        return len(self._by_hash)

    def authenticate(self, presented: str) -> ApiKey | None:
        self._maybe_reload()
        return self._by_hash.get(hash_key(presented))

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked >= self.check_every_s:
            self._checked = now
            self._reload()

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime:
            return
        with self._lock:
            self._by_hash = {k.sha256: k for k in read_keys(self.path).keys}
            self._mtime = mtime
