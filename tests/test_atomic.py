"""wmplan.atomic: a write replaces the file whole, or not at all."""

import json

import pytest

from wmplan.atomic import atomic_path, write_json_atomic


def test_success_replaces_the_file(tmp_path):
    path = tmp_path / "out" / "video.gif"  # the parent is created
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".gif" and not path.exists()
        tmp.write_text("new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["video.gif"]


def test_an_exception_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(path) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_write_json_atomic(tmp_path):
    path = tmp_path / "info.json"
    write_json_atomic(path, {"b": 1, "a": [2]})
    assert json.loads(path.read_text()) == {"b": 1, "a": [2]}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # not JSON: the old file stays
    assert json.loads(path.read_text()) == {"b": 1, "a": [2]}
    assert list(tmp_path.iterdir()) == [path]


def test_exclusive_lock_excludes_other_holders_until_released(tmp_path):
    import fcntl

    from wmplan.atomic import exclusive_lock

    lock = tmp_path / "sub" / "x.lock"

    def try_lock() -> bool:
        with open(lock, "a") as other:  # a second open file: flock treats it as another holder
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(other, fcntl.LOCK_UN)
            return True

    with exclusive_lock(lock):
        assert lock.exists() and not try_lock()
    assert try_lock()
