"""`-o` writes what sits at the path the way its kind needs (`kerascope.files.output_target`).

A regular file or a new name is replaced atomically; a symbolic link is followed, so the file
it points to is written and the link stays; a FIFO, a character device or a ``/dev/fd/N`` is
written in place (a reader gets every byte, the node stays a node); a directory, a socket or a
link loop is refused in one line before any writer runs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import threading
from pathlib import Path

import pytest

from kerascope import files
from kerascope.files import OutputError

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


class FifoReader:
    """Reads a FIFO to its end in a thread. If nothing ever opens the FIFO for writing (the old
    code renamed a file over it), `stop` unblocks the reader so the test fails, not hangs."""

    def __init__(self, path: Path):
        self.path, self.data = path, None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self.path, "rb") as fifo:
            self.data = fifo.read()

    def stop(self) -> bytes | None:
        self.thread.join(timeout=20)
        if self.thread.is_alive():  # never opened for writing: open it once so the read ends
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
            self.thread.join(timeout=5)
            return None
        return self.data


@pytest.fixture
def private_temp(tmp_path, monkeypatch) -> Path:
    """The system temp folder for this test only, to see that stream copies leave nothing."""
    folder = tmp_path / "systemp"
    folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(folder))
    return folder


def test_regular_and_new_files_are_replaced_atomically(tmp_path):
    out = tmp_path / "out.txt"
    files.write_text(out, "one")
    files.write_text(out, "two")
    assert out.read_text() == "two" and stat.S_ISREG(out.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_symlink_is_followed_its_target_written_and_the_link_kept(tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    (real_dir / "results.json").write_text("old")
    link = tmp_path / "link.json"
    os.symlink(real_dir / "results.json", link)
    files.write_json(link, {"x": 1})
    assert link.is_symlink() and os.readlink(link) == str(real_dir / "results.json")
    assert json.loads((real_dir / "results.json").read_text()) == {"x": 1}
    # a path-taking writer (model.save, savefig) too, with its suffix
    with files.atomic_path(link, suffix=".json") as tmp:
        assert tmp.parent == real_dir  # the temp file sits beside the target: rename is atomic
        tmp.write_text('{"y": 2}')
    assert link.is_symlink() and json.loads((real_dir / "results.json").read_text()) == {"y": 2}
    assert sorted(p.name for p in real_dir.iterdir()) == ["results.json"]
    # a link to a name that does not exist yet: the target is created, the link stays
    dangling = tmp_path / "new-link.txt"
    os.symlink("real/new.txt", dangling)
    files.write_text(dangling, "made")
    assert dangling.is_symlink() and (real_dir / "new.txt").read_text() == "made"


@pytest.mark.parametrize("writer", ["atomic_open", "atomic_path"])
def test_a_fifo_is_written_in_place_and_its_reader_gets_every_byte(tmp_path, private_temp,
                                                                   writer):  # fmt: skip
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    payload = os.urandom(3 << 20)  # larger than a pipe buffer: the write has to stream
    reader = FifoReader(fifo)
    if writer == "atomic_open":
        with files.atomic_open(fifo, "wb") as handle:
            handle.write(payload)
    else:
        with files.atomic_path(fifo, suffix=".bin") as tmp:
            assert tmp.name.endswith(".bin") and tmp.is_relative_to(private_temp)
            tmp.write_bytes(payload)
    assert reader.stop() == payload
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo", "systemp"]
    assert list(private_temp.iterdir()) == []  # the path-taking writer's temp copy is gone


def test_dev_fd_of_a_pipe_is_written_in_place(tmp_path):
    """What bash's ``-o >(wc -c)`` passes: /dev/fd/N, a pipe of this process."""
    read_end, write_end = os.pipe()
    payload = b"kerascope " * 100_000
    chunks: list[bytes] = []

    def _collect() -> None:
        while chunk := os.read(read_end, 1 << 16):
            chunks.append(chunk)

    reader = threading.Thread(target=_collect, daemon=True)
    reader.start()
    try:
        files.write_bytes(f"/dev/fd/{write_end}", payload)
    finally:
        os.close(write_end)
    reader.join(timeout=20)
    os.close(read_end)
    assert b"".join(chunks) == payload


@pytest.fixture
def scratch_devices(tmp_path) -> dict[str, Path]:
    """A null and a full device made with mknod in a temp folder (root only)."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    nodes = {"null": (1, 3), "full": (1, 7)}
    made = {}
    for name, (major, minor) in nodes.items():
        path = tmp_path / f"scratch-{name}"
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.close(os.open(path, os.O_WRONLY))
        except OSError as exc:  # a container without CAP_MKNOD, a nodev mount
            pytest.skip(f"cannot make or open a device node here ({exc.strerror})")
        made[name] = path
    return made


def test_a_character_device_is_written_in_place_never_replaced(scratch_devices, tmp_path):
    null, full = scratch_devices["null"], scratch_devices["full"]
    files.write_bytes(null, b"x" * (1 << 20))
    with files.atomic_path(null, suffix=".keras") as tmp:
        tmp.write_bytes(b"model" * 1000)
    assert stat.S_ISCHR(null.lstat().st_mode) and null.lstat().st_rdev == os.makedev(1, 3)
    with pytest.raises(OutputError, match="no space left") as info:
        files.write_bytes(full, b"x" * (1 << 20))
    assert info.value.errno == errno.ENOSPC
    assert "previous file is kept" not in str(info.value)  # nothing was kept: it is a device
    assert stat.S_ISCHR(full.lstat().st_mode) and full.lstat().st_rdev == os.makedev(1, 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch-full", "scratch-null"]


def test_a_directory_a_socket_and_a_link_loop_are_refused_before_writing(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    sock_path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    os.symlink("loop", tmp_path / "loop")
    cases = {folder: "it is a directory", sock_path: "it is a socket",
             tmp_path / "loop": "symbolic link loop"}  # fmt: skip
    try:
        for path, what in cases.items():
            ran = []
            with pytest.raises(OutputError) as info:
                with files.atomic_path(path, suffix=".keras") as tmp:
                    ran.append(tmp)  # a library would spend minutes writing here
            message = str(info.value)
            assert ran == [] and len(message.splitlines()) == 1
            assert f"'{path}'" in message and what in message
            with pytest.raises(OutputError, match=what):
                files.write_text(path, "x")
    finally:
        server.close()
    assert folder.is_dir() and (folder / "keep.txt").read_text() == "mine"
    assert stat.S_ISSOCK(sock_path.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop", "results", "s.sock"]


def test_classify_json_into_a_fifo_through_the_cli(
    tmp_path, photo_paths, capsys, shared_zoo_models
):
    from kerascope.cli import main

    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    chelsea = tmp_path / "chelsea.png"
    shutil.copy(photo_paths["chelsea"], chelsea)
    reader = FifoReader(fifo)
    code = main(["classify", str(chelsea), "--format", "json", "-k", "3", "-o", str(fifo)])
    data = reader.stop()
    err = capsys.readouterr().err
    assert code == 0, err
    assert data is not None, "the FIFO's reader got nothing"
    rows = json.loads(data)
    assert rows[0]["image"] == str(chelsea) and rows[0]["predictions"][0]["index"] in CATS
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@pytest.mark.parametrize("command", ["evaluate", "validate", "augment", "train"])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(command, tmp_path, capsys):
    """evaluate, validate, augment and train write a folder of files: a file, a link loop or a path
    under a file at -o is one line before the model loads (before: a FileExistsError
    traceback once every image was scored)."""
    from kerascope.cli import main
    from kerascope.testing import skimage_data

    taken = tmp_path / "results.csv"
    taken.write_text("kept\n")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    lead = {
        "evaluate": ["evaluate", "no-such-run", str(tmp_path)],
        "validate": ["validate", "no-such-model", str(tmp_path)],
        "augment": ["augment", str(skimage_data() / "chelsea.png"), "-n", "2"],
        "train": ["train", str(tmp_path)],  # before: a loop was a RuntimeError traceback
    }[command]
    for output, said in ((taken, "is a file"), (loop, "is a broken or looping link"),
                         (taken / "sub", f"lies under '{taken}', which is a file")):  # fmt: skip
        assert main([*lead, "-o", str(output)]) == 2
        err = capsys.readouterr().err
        assert err == f"kerascope: error: -o '{output}' {said}, not a folder: choose a folder\n"
    assert taken.read_text() == "kept\n"
    if command == "augment":  # a new folder, with a new parent, is made
        assert main([*lead, "-o", str(tmp_path / "new" / "samples")]) == 0
        assert len(list((tmp_path / "new" / "samples").glob("*.jpg"))) == 3  # 2 and the grid


def test_features_writes_through_a_link_and_keeps_it(tmp_path, capsys):
    """Before: `features -o LINK` replaced the link itself with a file (its target never
    written), and a loop or a link into a missing folder too; now the target is written, the
    link stays, and the other two are refused in one line."""
    from kerascope.cli import main
    from kerascope.testing.photos import cat_and_coffee

    data = cat_and_coffee(tmp_path / "data", n=2, size=32)
    (tmp_path / "real").mkdir()
    link, loop, dangling = tmp_path / "to-new.h5", tmp_path / "loop.h5", tmp_path / "gone.h5"
    link.symlink_to(tmp_path / "real" / "store.h5")
    loop.symlink_to(loop)
    dangling.symlink_to(tmp_path / "missing" / "s.h5")
    lead = ["features", str(data), "--backbone", "efficientnet_lite0", "--image-size", "32"]
    assert main([*lead, "-o", str(link)]) == 0
    assert link.is_symlink() and (tmp_path / "real" / "store.h5").is_file()
    for output, said in ((loop, "symbolic link loop"), (dangling, "whose folder does not exist")):
        assert main([*lead, "-o", str(output)]) == 2
        assert said in capsys.readouterr().err
        assert output.is_symlink()
    assert not (tmp_path / "missing").exists()


def test_classify_refuses_an_output_in_a_missing_folder_before_any_work(tmp_path, capsys):
    """Before: every image was classified, then the write failed and the results were lost.
    (The model named does not exist: the output is checked first.)"""
    from kerascope.cli import main
    from kerascope.testing import skimage_data

    photo = str(skimage_data() / "chelsea.png")
    out = tmp_path / "missing" / "results.csv"
    assert main(["classify", photo, "-m", "no-such-model", "-o", str(out)]) == 2
    assert capsys.readouterr().err == (f"kerascope: error: cannot write -o '{out}': the folder "
                                       f"'{out.parent}' does not exist; create it, or choose "
                                       "another place\n")  # fmt: skip
    assert main(["classify", photo, "-m", "no-such-model", "-o", str(tmp_path)]) == 2
    assert "it is a directory" in capsys.readouterr().err


def test_explain_refuses_a_picture_name_for_its_output_folder(tmp_path, capsys):
    """Before: `explain cat.jpg -o single.png` made a folder named single.png."""
    from kerascope.cli import main
    from kerascope.testing import skimage_data

    out = tmp_path / "single.png"
    assert main(["explain", str(skimage_data() / "chelsea.png"), "-o", str(out)]) == 2
    assert capsys.readouterr().err == (f"kerascope: error: -o '{out}' looks like a picture's "
                                       "name, but -o names the folder the <name>-output.jpg "
                                       "pictures go to: choose a folder name\n")  # fmt: skip
    assert not out.exists()
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert main(["explain", str(skimage_data() / "chelsea.png"), "-o", str(loop)]) == 2
    assert capsys.readouterr().err == (f"kerascope: error: -o '{loop}' is a broken or looping "
                                       "link, not a folder: choose a folder\n")  # fmt: skip


def test_an_input_is_never_the_output_file(tmp_path, capsys):
    """Before: `classify x.jpg -o x.jpg` replaced the photo with its results, exit 0 (the
    model named does not exist: the check comes before it loads). A link is the same file."""
    from kerascope import predict
    from kerascope.cli import main
    from kerascope.testing import skimage_data

    photo = tmp_path / "cat.png"
    shutil.copy(skimage_data() / "chelsea.png", photo)
    before = photo.read_bytes()
    (tmp_path / "link.png").symlink_to(photo)
    for out in (photo, tmp_path / "link.png"):
        assert main(["classify", str(tmp_path), "-m", "no-such-model", "-o", str(out)]) == 2
        assert capsys.readouterr().err == (f"kerascope: error: -o '{out}' is one of the inputs: "
                                           "writing it would replace that file; choose another "
                                           "name\n")  # fmt: skip
    with pytest.raises(OutputError, match="is one of the inputs"):
        predict(tmp_path / "no-such-run", [str(photo)], photo)
    assert photo.read_bytes() == before


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    """Before: a private (600) results file replaced by a run became world-readable (644)."""
    out = tmp_path / "private.csv"
    out.write_text("old")
    out.chmod(0o600)
    files.write_text(out, "new")
    assert out.read_text() == "new" and stat.S_IMODE(out.stat().st_mode) == 0o600
    out.chmod(0o200)  # write-only (the review's find: the sync after the chmod could not read it)
    files.write_text(out, "newer")
    assert stat.S_IMODE(out.stat().st_mode) == 0o200
    out.chmod(0o4755)  # a setuid bit is not carried over
    files.write_text(out, "newest")
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    fresh = files.write_text(tmp_path / "fresh.csv", "x")  # a new file: the umask's mode
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
