"""API keys: the router stores only their SHA-256, with a name, a role and the tasks each may use.

`graduate keys create NAME` prints a new key once. The file (default var/keys.json) is checked at most
every GRADUATE_ROUTER_KEYS_CHECK_S seconds (2) and re-read when it changed, so a new key works, and a
removed one stops working, within that time and without a restart.
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
from typing import Callable, Literal

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
    """Looks presented keys up; costs a dict lookup per request once a key has been verified.

    A key that verified is cached by its presented value (so it is hashed once, not per request); the
    keys file is stat'ed at most every `check_every_s` seconds, and when it changed (mtime, size or
    inode) it is re-read and the cache is emptied. A key removed from the file therefore stops working
    within `check_every_s` of the file's replacement (the bound the router docs state). Keys that do
    not verify are not cached (an attacker cannot grow the cache) and are hashed each time.
    """

    def __init__(self, path: Path, check_every_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.check_every_s = check_every_s
        self.clock = clock
        self._by_hash: dict[str, ApiKey] = {}
        self._verified: dict[str, ApiKey] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked = clock()
        self._lock = threading.Lock()
        self._reload()

    def __len__(self) -> int:
        self._maybe_reload()
        return len(self._by_hash)

    def authenticate(self, presented: str) -> ApiKey | None:
        self._maybe_reload()
        key = self._verified.get(presented)
        if key is None:
            key = self._by_hash.get(hash_key(presented))
            if key is not None:
                self._verified[presented] = key
        return key

    def _maybe_reload(self) -> None:
        now = self.clock()
        if now - self._checked >= self.check_every_s:
            self._checked = now
            self._reload()

    def _reload(self) -> None:
        try:
            st = self.path.stat()
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            signature = None
        if signature == self._signature:
            return
        with self._lock:
            self._by_hash = {k.sha256: k for k in read_keys(self.path).keys}
            self._verified = {}
            self._signature = signature
