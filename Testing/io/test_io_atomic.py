"""All-or-nothing output: files, sets of files, folders."""

from __future__ import annotations

import os

import pytest

from medseg_core.errors import InputError
from medseg_core.io import OutputSet, atomic_output, check_writable_dir
from medseg_core.io.atomic import atomic_folder


# --- atomic output --------------------------------------------------------------------------

@pytest.mark.parametrize("name, ext", [("seg.seg.nrrd", ".seg.nrrd"), ("ct.nii.gz", ".nii.gz"), ("a.mha", ".mha")])
def test_atomic_output_writes_through_a_hidden_temporary(tmp_path, name, ext):
    final = tmp_path / name
    with atomic_output(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(ext)
        tmp.write_text("done")
    assert final.read_text() == "done"
    assert os.listdir(tmp_path) == [name]


def test_atomic_output_leaves_nothing_when_the_body_raises(tmp_path):
    final = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_output(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("failed")
    assert os.listdir(tmp_path) == []


def test_atomic_output_keeps_the_old_file_when_the_body_raises(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(final) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert final.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_output_set_commits_all(tmp_path):
    with OutputSet() as outputs:
        for name in ("a.nii.gz", "b.seg.nrrd"):
            outputs.stage(tmp_path / name).write_text(name)
        assert not (tmp_path / "a.nii.gz").exists()
    assert sorted(os.listdir(tmp_path)) == ["a.nii.gz", "b.seg.nrrd"]


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_output_set_aborts_cleanly(tmp_path, exception):
    (tmp_path / "a.nii.gz").write_text("old")
    with pytest.raises(exception):
        with OutputSet() as outputs:
            outputs.stage(tmp_path / "a.nii.gz").write_text("new")
            outputs.stage(tmp_path / "b.nii.gz").write_text("new")
            raise exception
    assert os.listdir(tmp_path) == ["a.nii.gz"]
    assert (tmp_path / "a.nii.gz").read_text() == "old"


def test_output_set_refuses_to_commit_an_unwritten_output(tmp_path):
    outputs = OutputSet()
    outputs.stage(tmp_path / "a.txt").write_text("a")
    outputs.stage(tmp_path / "b.txt")
    with pytest.raises(FileNotFoundError):
        outputs.commit()
    assert os.listdir(tmp_path) == []


def test_check_writable_dir(tmp_path):
    created = check_writable_dir(tmp_path / "new" / "nested")
    assert created.is_dir()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InputError) as error:
        check_writable_dir(blocker / "sub")
    assert str(error.value) == f"{blocker / 'sub'}: output folder is not writable"


def test_atomic_folder_replaces_the_old_folder_only_once_the_new_one_is_complete(tmp_path):
    final = tmp_path / "package"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_folder(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and (final / "old.txt").is_file()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["package"]  # nothing moved aside is left


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_atomic_folder_leaves_the_old_folder_when_the_body_raises(tmp_path, exception):
    final = tmp_path / "package"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(exception):
        with atomic_folder(final) as tmp:
            (tmp / "half.txt").write_text("half")
            raise exception()
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"] and (final / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["package"]
