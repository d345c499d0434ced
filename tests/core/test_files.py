"""Atomic writes (core.files): a file or folder appears whole under its name or not at all, nothing temporary is
left beside it, and an older version survives a writer that fails."""

from __future__ import annotations

import json
import os
import stat

import pytest

from unsloth_sft.core.files import atomic_dir, atomic_file, atomic_write_text, read_json, write_json


class Boom(Exception):
    pass


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "deep" / "metrics.json"
    write_json(path, {"a": 1})
    assert read_json(path) == {"a": 1} and path.read_text().endswith("\n")
    with pytest.raises(Boom), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise Boom
    assert read_json(path) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]  # no temporary file left


def test_atomic_file_keeps_the_suffix_and_usual_permissions(tmp_path):
    path = tmp_path / "loss.png"
    with atomic_file(path) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".loss.tmp-")
        tmp.write_bytes(b"png")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_text_is_utf8(tmp_path):
    atomic_write_text(tmp_path / "x.md", "सारांश")
    assert (tmp_path / "x.md").read_bytes() == "सारांश".encode()
    assert read_json(tmp_path / "missing.json") is None


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(Boom), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise Boom
    assert (target / "weights").read_text() == "v1"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no .adapter.tmp-* or .adapter.old left


def test_a_cache_folder_another_process_filled_first_is_kept(tmp_path):
    target = tmp_path / "tiny"
    with atomic_dir(target, replace=False) as tmp:
        (tmp / "config.json").write_text(json.dumps({"ours": True}))
        target.mkdir()
        (target / "config.json").write_text(json.dumps({"theirs": True}))
    assert read_json(target / "config.json") == {"theirs": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
