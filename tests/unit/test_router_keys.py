"""API keys: only hashes are stored, roles and tasks are kept, the file is re-read when it changes."""
from __future__ import annotations

import json
import os

import pytest

from services.router.keys import KeyStore, create_key, hash_key, read_keys


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
