"""The journaled multi-file commit: all old or all new, whatever point a crash hits."""

from __future__ import annotations

import json
import os

import pytest

from engage import journal


def _stage(final, text):
    tmp = journal.staged_path(final)
    tmp.write_text(text)
    return tmp


def test_commit_renames_every_file_and_deletes_the_stale_ones(tmp_path):
    a, b, old = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "old.txt"
    a.write_text("a0")
    old.write_text("stale")
    renames = [(_stage(a, "a1"), a), (_stage(b, "b1"), b)]
    journal.commit(tmp_path / ".j", renames, deletes=[old])
    assert (a.read_text(), b.read_text()) == ("a1", "b1")
    assert not old.exists() and not (tmp_path / ".j").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_a_missing_staged_file_changes_nothing(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("a0")
    with pytest.raises(FileNotFoundError, match="staged files missing"):
        journal.commit(
            tmp_path / ".j", [(_stage(a, "a1"), a), (tmp_path / ".gone", tmp_path / "b")]
        )
    assert a.read_text() == "a0" and not (tmp_path / ".j").exists()


def test_recover_finishes_a_commit_cut_after_its_first_rename(tmp_path):
    a, b, old = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "old.txt"
    a.write_text("a0")
    b.write_text("b0")
    old.write_text("stale")
    ta, tb = _stage(a, "a1"), _stage(b, "b1")
    # What a process killed right after the first rename leaves behind.
    (tmp_path / ".j").write_text(
        json.dumps({"renames": [[str(ta), str(a)], [str(tb), str(b)]], "deletes": [str(old)]})
    )
    os.replace(ta, a)
    assert journal.pending(tmp_path / ".j")
    assert (a.read_text(), b.read_text()) == ("a1", "b0")  # out of step until recovery
    assert journal.recover(tmp_path / ".j") is True
    assert (a.read_text(), b.read_text()) == ("a1", "b1") and not old.exists()
    assert journal.recover(tmp_path / ".j") is False  # nothing left to do


def test_an_unreadable_journal_is_reported_not_guessed(tmp_path):
    (tmp_path / ".j").write_text("{not json")
    with pytest.raises(ValueError, match=r"\.j: unreadable commit journal .* inspect it"):
        journal.recover(tmp_path / ".j")


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    mine = journal.staged_path(tmp_path / "a.txt")
    mine.write_text("in progress")
    dead = tmp_path / ".a.txt.999999999.tmp"  # no such process
    dead.write_text("left by a killed writer")
    other = tmp_path / "notes.tmp"  # not one of ours: not named .<name>.<pid>.tmp
    other.write_text("x")
    assert journal.remove_stale_temps([tmp_path]) == [dead]
    assert mine.exists() and other.exists() and not dead.exists()
