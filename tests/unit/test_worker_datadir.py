"""`graduate worker X --datadir D` creates D (parents too) or exits saying why it cannot."""
from __future__ import annotations

import pytest

from services.workers import ensure_datadir


def test_creates_missing_parents(tmp_path):
    target = tmp_path / "a" / "b" / "curator-6066"
    assert ensure_datadir(target) == target
    assert target.is_dir()


def test_existing_folder_is_fine(tmp_path):
    assert ensure_datadir(tmp_path) == tmp_path


def test_a_file_in_the_way_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        ensure_datadir(blocker / "data")
    assert "cannot create the data folder" in str(exc.value)
    assert str(blocker / "data") in str(exc.value)
