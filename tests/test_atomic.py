"""Atomic writes: files and folders written by the package honour the umask (not the 0600 of temporary files)."""

import os
import stat

from losam_peft.atomic import atomic_write_text, check_output_dir, write_staged


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        write_staged(tmp_path / "out", lambda staging: (staging / "b.txt").write_text("y"))
        assert _mode(tmp_path / "a.txt") == 0o644
        assert _mode(tmp_path / "out" / "b.txt") == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "c.txt", "x")
        assert _mode(tmp_path / "c.txt") == 0o600
    finally:
        os.umask(old)


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    import pytest

    from losam_peft.errors import OutputExistsError

    (tmp_path / "f").write_text("")
    with pytest.raises(OutputExistsError, match="existing file"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(OutputExistsError, match="which is a file"):
        check_output_dir(tmp_path / "f" / "sub")
    assert check_output_dir(tmp_path / "new" / "sub") == tmp_path / "new" / "sub"
