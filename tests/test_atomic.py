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


def _folder(root):
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(root / "images" / "a.png")
    Image.fromarray((np.eye(8) * 255).astype(np.uint8)).save(root / "masks" / "a.png")


def _snapshot(root):
    import hashlib

    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_convert_never_replaces_its_input_or_a_foreign_folder(tmp_path):
    import pytest

    from losam_peft.data import convert
    from losam_peft.errors import OutputExistsError

    root = tmp_path / "data" / "set"
    _folder(root)
    (tmp_path / "data" / "unrelated.txt").write_text("keep me")
    (tmp_path / "plain_file").write_text("keep me too")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    for out, message in ((root, "is the input"), (root.parent, "contains the input"), (root / "images", "lies inside"),
                         (tmp_path / "plain_file", "existing file"), (foreign, "not written by losam-peft")):
        with pytest.raises(OutputExistsError, match=message):
            convert("folder", root, out, overwrite=True)
    assert _snapshot(tmp_path) == before
    out = tmp_path / "converted"
    convert("folder", root, out)
    with pytest.raises(OutputExistsError, match="exists already"):
        convert("folder", root, out)
    convert("folder", root, out, overwrite=True)  # its own output: replaced
    assert (out / "README.md").is_file() and _snapshot(tmp_path / "data") == {
        p: h for p, h in before.items() if str(p).startswith(str(tmp_path / "data"))
    }


def test_output_lock_refuses_a_second_holder_and_names_the_owner(tmp_path):
    import json

    import pytest

    from losam_peft.atomic import LOCK_NAME, output_lock
    from losam_peft.errors import OutputExistsError

    out = tmp_path / "out"
    with output_lock(out) as lock:
        assert lock == out / LOCK_NAME and json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(OutputExistsError, match=rf"{out} is being written by another run \(pid {os.getpid()}"):
            with output_lock(out):
                pass
        assert lock.is_file()  # the refused run leaves the holder's lock alone
    assert not (out / LOCK_NAME).exists()
    with output_lock(out):  # released: free again
        pass


def test_output_lock_takes_over_a_stale_lock_of_a_dead_process(tmp_path):
    import json
    import subprocess
    import sys

    from losam_peft.atomic import LOCK_NAME, output_lock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": "here", "started": "long ago"}))  # killed holder
    with output_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()


def test_output_lock_refuses_a_file(tmp_path):
    import pytest

    from losam_peft.atomic import output_lock
    from losam_peft.errors import OutputExistsError

    (tmp_path / "f").write_text("")
    with pytest.raises(OutputExistsError, match="existing file"):
        with output_lock(tmp_path / "f"):
            pass
