"""Atomic writes (core.files): a file or folder appears whole under its name or not at all, nothing temporary is
left beside it, and an older version survives a writer that fails."""

from __future__ import annotations

import json
import os
import stat

import pytest

from unsloth_sft.core.errors import ConfigError, RunError
from unsloth_sft.core.files import atomic_dir, atomic_file, atomic_write_text, check_output, read_json, write_json


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
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(f".loss.png.tmp-{os.getpid()}-")
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


def test_a_full_disk_is_one_line_naming_the_target_and_leaves_no_temporary(tmp_path, monkeypatch):
    """ENOSPC injected at the one writer: the RunError names the file, and nothing temporary stays behind."""
    import errno

    from unsloth_sft.core import files
    from unsloth_sft.core.errors import RunError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    write_json(tmp_path / "metrics.json", {"a": 1})
    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(RunError, match=r"metrics.json: cannot write \(No space left on device\); free some space"):
        write_json(tmp_path / "metrics.json", {"a": 2})
    assert read_json(tmp_path / "metrics.json") == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    with pytest.raises(RunError, match="adapter: cannot write"), atomic_dir(tmp_path / "adapter"):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file: file write failed"
        )
    with pytest.raises(ValueError, match="a plain bug"), atomic_dir(tmp_path / "adapter"):
        raise ValueError("a plain bug")  # not the place's fault: raised as it is
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_leftovers_of_dead_writers_are_removed_and_a_cut_swap_is_undone(tmp_path):
    from unsloth_sft.core.files import remove_leftovers

    dead = 2**22 + 17  # a pid no process has: above the kernel's largest pid_max (2**22)
    (tmp_path / f".merged.tmp-{dead}-abc").mkdir()
    (tmp_path / f".metrics.tmp-{dead}-x.json").write_text("{")
    (tmp_path / f".mine.tmp-{os.getpid()}-x").mkdir()  # a live writer's (this process): kept
    (tmp_path / "adapter").mkdir()
    (tmp_path / ".adapter.old").mkdir()  # its replacement is in place: the old copy goes
    (tmp_path / ".eval.old").mkdir()  # the swap was cut before the new one arrived: put back
    notes = remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".mine.tmp-{os.getpid()}-x", "adapter", "eval"]
    assert len(notes) == 4 and any("restored" in n and n.endswith("(its replacement was interrupted)") for n in notes)
    assert remove_leftovers(tmp_path) == []


def test_an_output_never_lands_on_its_input_nor_below_a_file(tmp_path):
    """The same file by its path, another spelling of it, a symlink or a hard link is refused before any work."""
    source = tmp_path / "in.ipynb"
    source.write_text("{}")
    (tmp_path / "sym.ipynb").symlink_to(source)
    os.link(source, tmp_path / "hard.ipynb")
    (tmp_path / "sub").mkdir()
    for output in (source, tmp_path / "sub" / ".." / "in.ipynb", tmp_path / "sym.ipynb", tmp_path / "hard.ipynb"):
        with pytest.raises(ConfigError, match=r"^--output .* is the input; write elsewhere$"):
            check_output(source, output, "--output", "the input", "write elsewhere")
    with pytest.raises(RunError, match="in.ipynb is a file, not a folder"):
        check_output(source, source / "out.ipynb", "--output", "the input", "write elsewhere")
    with pytest.raises(RunError, match="is a folder; name a file"):
        check_output(source, tmp_path / "sub", "--output", "the input", "write elsewhere")
    check_output(source, tmp_path / "new" / "out.ipynb", "--output", "the input", "write elsewhere")  # a new place
    assert source.read_text() == "{}"
