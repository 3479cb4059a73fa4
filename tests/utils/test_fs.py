"""The one output guard and the atomic writers."""

from __future__ import annotations

from pathlib import Path

import pytest

from histoscan.errors import HistoscanInputError
from histoscan.utils.fs import atomic_write_text, guard_output, staged_folder


def test_guard_output(tmp_path: Path) -> None:
    assert guard_output(tmp_path / "new", False) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    guard_output(tmp_path / "empty", False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(
        HistoscanInputError, match=r"^--out .*full: folder exists and is not empty \(use --force"
    ):
        guard_output(tmp_path / "full", False)
    guard_output(tmp_path / "full", True)
    with pytest.raises(HistoscanInputError, match="exists and is not a folder"):
        guard_output(tmp_path / "full" / "x", True)
    with pytest.raises(HistoscanInputError, match=r"file exists \(use --force"):
        guard_output(tmp_path / "full" / "x", False, "file")
    guard_output(tmp_path / "full" / "x", True, "file")
    with pytest.raises(HistoscanInputError, match="is a folder"):
        guard_output(tmp_path / "full", True, "file")


def test_staged_folder_is_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out, force=True) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("crash mid-way")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "old.txt").read_text() == "old"
    with staged_folder(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "a.json"
    atomic_write_text(p, "one")

    def boom(self: Path, text: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "two")
    monkeypatch.undo()
    assert p.read_text() == "one" and [q.name for q in tmp_path.iterdir()] == ["a.json"]


def test_staged_outputs_get_ordinary_permissions(tmp_path: Path) -> None:
    import os
    import stat

    mask = os.umask(0o022)
    try:
        with staged_folder(tmp_path / "out", force=False) as tmp:
            (tmp / "a.txt").write_text("a")
        assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755  # not mkdtemp's 0o700
    finally:
        os.umask(mask)


@pytest.mark.parametrize(
    ("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"]
)
def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    import os
    import stat

    from histoscan.utils.fs import atomic_path, atomic_write_json

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "a")
        atomic_write_json(tmp_path / "b.json", {"b": 1})
        with atomic_path(tmp_path / "c.csv") as tmp, tmp.open("w") as f:
            f.write("c\n")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.json", "c.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name  # not mkstemp's 0o600
