"""API keys: only hashes are stored, roles and tasks are kept, the file is re-read when it changes,
a verified key is not hashed again, and a removed key stops working within the check interval."""
from __future__ import annotations

import json
import os

import pytest

from services.router import keys as keys_module
from services.router.keys import KeyFile, KeyStore, create_key, hash_key, read_keys


def test_create_stores_only_the_hash(tmp_path):
    path = tmp_path / "keys.json"
    key = create_key(path, "billing", tasks=("banking77-intent",))
    text = path.read_text()
    assert key not in text and hash_key(key) in text
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    [stored] = read_keys(path).keys
    assert (stored.name, stored.role, stored.tasks) == ("billing", "service", ("banking77-intent",))
    assert stored.may_use("banking77-intent") and not stored.may_use("draft-reply")
    assert json.loads(text)["keys"][0]["sha256"] == hash_key(key)


def test_names_are_unique_and_clean(tmp_path):
    path = tmp_path / "keys.json"
    create_key(path, "a")
    with pytest.raises(ValueError, match="already exists"):
        create_key(path, "a")
    with pytest.raises(ValueError, match="letters"):
        create_key(path, "a b")


def test_store_authenticates_and_picks_up_new_keys(tmp_path):
    path = tmp_path / "keys.json"
    store = KeyStore(path, check_every_s=0)
    assert len(store) == 0
    key = create_key(path, "ui", role="reviewer")
    found = store.authenticate(key)
    assert found is not None and found.role == "reviewer" and found.may_use("anything")
    assert store.authenticate(key + "x") is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def count_hashes(monkeypatch) -> list[str]:
    hashed: list[str] = []

    def counting(key: str) -> str:
        hashed.append(key)
        return hash_key(key)
    monkeypatch.setattr(keys_module, "hash_key", counting)
    return hashed


def remove_key(path, name: str) -> None:
    kept = [k for k in read_keys(path).keys if k.name != name]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(KeyFile(keys=kept).model_dump_json())
    os.replace(tmp, path)


def test_a_verified_key_is_hashed_once_and_the_file_stated_at_most_every_interval(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    key = create_key(path, "svc")
    clock = Clock()
    store = KeyStore(path, check_every_s=2.0, clock=clock)
    hashed = count_hashes(monkeypatch)
    stats = []
    real_stat = type(path).stat
    monkeypatch.setattr(type(path), "stat", lambda self, *a, **kw: stats.append(self) or real_stat(self, *a, **kw))
    for _ in range(100):
        assert store.authenticate(key).name == "svc"
        clock.now += 0.01  # 100 requests over 1 s
    assert hashed == [key] and stats == []
    clock.now = 2.0
    assert store.authenticate(key).name == "svc"
    assert len(stats) == 1 and hashed == [key]  # the file did not change: the cache stays


def test_unknown_keys_are_refused_each_time_and_never_cached(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    create_key(path, "svc")
    store = KeyStore(path, check_every_s=2.0, clock=Clock())
    hashed = count_hashes(monkeypatch)
    for i in range(3):
        assert store.authenticate(f"gr_guess{i}") is None
        assert store.authenticate(f"gr_guess{i}") is None
    assert len(hashed) == 6 and store._verified == {}


def test_a_removed_key_stops_working_within_the_check_interval(tmp_path):
    path = tmp_path / "keys.json"
    keep, revoke = create_key(path, "keep"), create_key(path, "revoke")
    clock = Clock()
    store = KeyStore(path, check_every_s=2.0, clock=clock)
    assert store.authenticate(revoke).name == "revoke" and store.authenticate(keep).name == "keep"
    remove_key(path, "revoke")
    clock.now = 1.9
    assert store.authenticate(revoke).name == "revoke"  # within the interval: still the cached verdict
    clock.now = 2.0
    assert store.authenticate(revoke) is None
    assert store.authenticate(keep).name == "keep" and len(store) == 1


def test_a_new_key_works_after_the_next_check_and_a_deleted_file_refuses_all(tmp_path):
    path = tmp_path / "keys.json"
    old = create_key(path, "old")
    clock = Clock()
    store = KeyStore(path, check_every_s=2.0, clock=clock)
    new = create_key(path, "new")
    assert store.authenticate(new) is None
    clock.now = 2.0
    assert store.authenticate(new).name == "new"
    path.unlink()
    clock.now = 4.0
    assert store.authenticate(new) is None and store.authenticate(old) is None and len(store) == 0
