"""What the CLI prints: user text literally, any locale, one line per bad option, nothing lost.

File and class names come from the user and are shown as they are (never read as rich markup);
an ASCII-only terminal gets '?' instead of a crash after the work is done; every bad option
value is one line naming the valid ones; Ctrl-C and a full disk keep what is already computed
or the previous file, never half of one.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from kerascope.cli import main
from tests.fulldisk import small_disk
from tests.test_evaluate import untrained_run

CLASSES = ["cat [/b]", "dog[red] :smile:"]
UNICODE_NAME = "kätzchen 猫.png"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A LeNet run (untrained) whose class names look like rich markup and emoji codes."""
    return untrained_run(tmp_path_factory.mktemp("run"), CLASSES)


def picture(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def one_line(text: str) -> str:
    """The single line of ``text``; fails when there are more (or none)."""
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# --- user text is printed literally -------------------------------------------------------


def test_classify_table_shows_brackets_and_colons_as_they_are(run_dir, tmp_path, monkeypatch,
                                                              capsys):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    names = ["IMG_001 [edited].png", "x[/b].png", ":smile:.png", "more [i]/in [b].png"]
    for k, name in enumerate(names):
        picture(tmp_path / name, k)
    (tmp_path / "more [i]" / "notes [bold]x.txt").write_text("not a picture")
    code = main(["classify", *names[:3], "more [i]", "[red]gone.png", "-m", str(run_dir),
                 "-k", "2"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1  # the missing file
    for text in [*names, *CLASSES, "[red]gone.png"]:
        assert text in captured.out
    assert "skipped 1 non-image file(s): more [i]/notes [bold]x.txt" in captured.err


def test_notes_are_literal_and_never_wrapped(capsys):
    from kerascope import output

    message = "wrote [b]results[/b] to " + "/very/long/folder" * 20 + "/:smile:.csv"
    output.note(message)
    assert capsys.readouterr().err == f"kerascope: {message}\n"


def test_explain_table_shows_names_as_they_are(capsys):
    """The table `kerascope explain` prints (its own printer; output.print_explanations, which
    only this test used, is gone)."""
    from kerascope.cli_explain import _print_explained

    explanation = SimpleNamespace(class_name="dog[red]", probability=0.5, method="gradcam")
    saved = [
        SimpleNamespace(ok=True, source="a[/b].png", explanation=explanation, path="a[/b]-out.jpg"),
        SimpleNamespace(ok=False, source="[bold]b.png", error="unreadable [/i] file"),
    ]
    _print_explained(saved)
    out = capsys.readouterr().out
    for text in ("a[/b].png", "dog[red]", "a[/b]-out.jpg", "[bold]b.png", "unreadable [/i] file"):
        assert text in out


def test_models_show_prints_a_bracketed_cache_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERASCOPE_HOME", "w[/b]")
    assert main(["models", "show", "efficientnet_lite0"]) == 0
    assert "w[/b]" in capsys.readouterr().out


# --- any locale ---------------------------------------------------------------------------


def _ascii_env(variant: str) -> tuple[list[str], dict[str, str]]:
    """A C locale without Python's UTF-8 mode, or an ASCII stdout under a UTF-8 locale."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LC_", "LANG", "PYTHONUTF8", "PYTHONIOENCODING"))}  # fmt: skip
    if variant == "C":
        env.update(LC_ALL="C", PYTHONCOERCECLOCALE="0")
        return [sys.executable, "-X", "utf8=0"], env
    env.update(LANG="C.UTF-8", PYTHONIOENCODING="ascii")
    return [sys.executable], env


# One interpreter per locale runs every command of that locale (its arguments decoded from the
# command line as the locale says, commands separated by NEXT), each command's stdout into its
# own file (fd 1 swapped between commands; sys.stdout keeps the encoding the locale gave it).
NEXT = "--next-command--"
_COMMANDS_IN_ONE_PROCESS = f"""
import json, os, sys
from kerascope.cli import main
codes, argvs = [], [[]]
for arg in sys.argv[1:]:
    argvs.append([]) if arg == "{NEXT}" else argvs[-1].append(arg)
for i, argv in enumerate(argvs):
    sys.stdout.flush()
    fd = os.open(f"stdout-{{i}}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.close(fd)
    codes.append(main(argv))
    sys.stdout.flush()
with open("codes.json", "w") as fh:
    json.dump(codes, fh)
"""


@pytest.mark.parametrize(
    "variant, runs",
    [("C", [("table", False), ("json", False), ("csv", True)]), ("ascii", [("table", False)])],
)  # fmt: skip
def test_non_utf8_locales_print_replacements_and_write_utf8(run_dir, tmp_path, variant, runs):
    picture(tmp_path / UNICODE_NAME)
    picture(tmp_path / "plain.png", 1)
    python, env = _ascii_env(variant)
    commands = []
    for fmt, to_file in runs:
        commands += [*([NEXT] if commands else []), "classify", UNICODE_NAME, "plain.png",
                     "-k", "1", "-m", str(run_dir), "-f", fmt]  # fmt: skip
        commands += ["-o", "out ü.csv"] if to_file else []
    done = subprocess.run([*python, "-c", _COMMANDS_IN_ONE_PROCESS, *commands], cwd=tmp_path,
                          env=env, capture_output=True, timeout=300)  # fmt: skip
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0 and "Traceback" not in err, err
    assert json.loads((tmp_path / "codes.json").read_text()) == [0] * len(runs), err
    for i, (fmt, _) in enumerate(runs):
        out = (tmp_path / f"stdout-{i}").read_bytes().decode("ascii")  # nothing but ASCII
        if fmt == "table":
            assert "k?tzchen ?.png" in out and any(c in out for c in CLASSES)
            widths = {len(line) for line in out.splitlines()}
            assert len(widths) == 1  # the replacement keeps the columns aligned
        elif fmt == "json":
            assert [d["image"] for d in json.loads(out)] == [UNICODE_NAME, "plain.png"]
        else:
            rows = list(csv.DictReader((tmp_path / "out ü.csv").open(encoding="utf-8",
                                                                      newline="")))  # fmt: skip
            assert [r["image"] for r in rows] == [UNICODE_NAME, "plain.png"]


# --- file names that start with '-' -------------------------------------------------------


def test_dash_file_names_work_after_double_dash(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "-cat.png")
    code = main(["classify", "-m", str(run_dir), "-f", "json", "-k", "1", "--", "-cat.png"])
    assert code == 0
    assert [d["image"] for d in json.loads(capsys.readouterr().out)] == ["-cat.png"]

    with pytest.raises(SystemExit) as exit_info:
        main(["classify", "-m", str(run_dir), "-cat.png"])
    assert exit_info.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert "-- -cat.png" in line  # how to say it

    with pytest.raises(SystemExit):
        main(["classify", "--help"])
    assert "kerascope classify -k 3 -- -cat.png" in capsys.readouterr().out


def test_dash_alone_is_one_picture_piped_in(run_dir, tmp_path, monkeypatch, capsys):
    picture(tmp_path / "a.png")
    piped = (tmp_path / "a.png").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(piped)))
    code = main(["classify", "-m", str(run_dir), "-f", "json", "-k", "1", "-", str(tmp_path)])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [d["image"] for d in rows] == ["-", str(tmp_path / "a.png")]
    assert rows[0]["predictions"] == rows[1]["predictions"]  # the same picture, as a file

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(piped[:60])))
    assert main(["classify", "-m", str(run_dir), "-f", "json", "-"]) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert row["image"] == "-" and "truncated" in row["error"]  # the reason, not a temp path

    class Terminal(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(io.BytesIO()))
    assert main(["classify", "-m", str(run_dir), "-"]) == 2
    assert "standard input, which is a terminal" in one_line(capsys.readouterr().err)
    assert main(["classify", "-m", str(run_dir), "-", "-"]) == 2
    assert "named once" in one_line(capsys.readouterr().err)
    monkeypatch.setattr(sys, "stdin", None)  # `kerascope classify - <&-`
    assert main(["classify", "-m", str(run_dir), "-"]) == 2
    assert "standard input, which is closed" in one_line(capsys.readouterr().err)


# --- wrong option values: one line with the valid choices -------------------------------------


@pytest.mark.parametrize(
    "argv, named",
    [
        (["explain", "a.png", "--colormap", "nope"], ["'nope'", "jet, hot, gray"]),
        (["video", "a.mp4", "--colormap", "nope"], ["'nope'", "jet, hot, gray"]),
        (["explain", "a.png", "--alpha", "2"], ["--alpha", "'2'", "from 0 to 1"]),
        (["classify", "a.png", "--threshold", "1.5"], ["--threshold", "'1.5'", "from 0 to 1"]),
        (["classify", "a.png", "--top", "0"], ["--top", "'0'", "at least 1"]),
        (["video", "a.mp4", "--every", "x"], ["--every", "'x'", "at least 1"]),
        (["classify", "a.png", "-f", "xml"], ["'xml'", "'table', 'json', 'csv'"]),
    ],
)
def test_bad_option_values_are_one_line_naming_the_choices(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"kerascope {argv[0]}: error: argument ")
    for text in named:
        assert text in line


def test_video_output_checks_come_before_any_work(tmp_path, capsys):
    video = tmp_path / "x.mp4"
    video.write_bytes(b"")  # never opened: the checks come first
    assert main(["video", str(video), "-o", str(video)]) == 2
    assert "is the input video" in one_line(capsys.readouterr().err)
    missing = tmp_path / "nodir" / "out.mp4"
    assert main(["video", str(video), "-o", str(missing)]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"'{missing}' does not exist" in line and "create it" in line


def test_a_bad_engine_setting_is_reported_before_the_model_loads(monkeypatch, capsys):
    monkeypatch.setenv("KERASCOPE_ENGINE", "bogus")
    assert main(["classify", "x.png", "--model", "no-such-model"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "KERASCOPE_ENGINE='bogus'" in line and "auto, keras, onnx" in line


def test_a_bad_pixel_limit_is_one_line_before_the_model_loads(monkeypatch, capsys):
    """Before: an error row for every image, after the model had loaded; 1e9 was refused."""
    from kerascope.images import max_pixels

    monkeypatch.setenv("KERASCOPE_MAX_PIXELS", "abc")
    assert main(["classify", "x.png", "--model", "no-such-model"]) == 2
    assert "KERASCOPE_MAX_PIXELS must be a positive integer, got 'abc'" in one_line(
        capsys.readouterr().err
    )
    monkeypatch.setenv("KERASCOPE_MAX_PIXELS", "1e9")
    assert max_pixels() == 1_000_000_000


def test_an_unknown_backend_is_one_line_naming_the_backends(monkeypatch):
    from kerascope.config import check_backend
    from kerascope.errors import ConfigError

    monkeypatch.delitem(sys.modules, "keras")  # as in a fresh `kerascope` process
    monkeypatch.setenv("KERAS_BACKEND", "bogus")
    with pytest.raises(ConfigError, match=r"'bogus' is not a Keras backend; use one of: jax, "):
        check_backend()


def test_a_backend_that_cannot_import_is_one_line(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "torch.py").write_text("raise ImportError('No module named torch')\n")
    path = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-m", "kerascope", "classify", "x.png"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "KERAS_BACKEND='torch' cannot be used (No module named torch)" in line
    assert "installed backends: jax" in line


# --- the entry point -----------------------------------------------------------------------


def test_a_closed_pipe_ends_quietly():
    """`kerascope models | head -0`: no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "kerascope", "models"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


def test_classify_into_a_closed_pipe_ends_quietly(run_dir, photo_paths, monkeypatch, capsys):
    class ClosedPipe:
        encoding = "utf-8"

        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def fileno(self):
            raise OSError("no descriptor")  # keeps the test's own stdout where it is

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["classify", str(photo_paths["chelsea"]), "-m", str(run_dir), "-f", "csv"]) == 141
    assert capsys.readouterr().err == ""


# --- nothing lost: full disk, Ctrl-C -------------------------------------------------------


def test_classify_output_on_a_full_disk_keeps_the_previous_file(run_dir, photo_paths, monkeypatch,
                                                               capsys):  # fmt: skip
    with small_disk(64 * 1024) as disk:
        out = disk.folder / "out.csv"
        out.write_text("previous results\n")
        if disk.tmpfs:
            disk.fill()
        else:  # no tmpfs here: the same failure, injected where the data reaches the disk

            def full(path):
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr("kerascope.files.fsync_path", full)
        code = main(["classify", str(photo_paths["chelsea"]), "-m", str(run_dir), "-f", "csv",
                     "-o", str(out)])  # fmt: skip
        line = one_line(capsys.readouterr().err)
        assert code == 2
        assert f"could not write '{out}': no space left" in line
        assert out.read_text() == "previous results\n"
        left = {p.name for p in disk.folder.iterdir()} - {".filler"}
        assert left == {"out.csv"}  # no temporary file left behind


# Runs the real CLI in a child process, each classification made slow enough to interrupt, and
# drops a marker once 24 images are done: the signal then comes mid-run, on any machine.
_SLOW_CLI = """
import runpy, sys, time
import kerascope.classification as c
marker, done, predictions = sys.argv.pop(1), [0], c._predictions
def slow_predictions(*args, **kwargs):
    done[0] += 1
    if done[0] == 25:  # 24 finished
        open(marker, "w").close()
    time.sleep(0.05)
    return predictions(*args, **kwargs)
c._predictions = slow_predictions  # one call per classified image
runpy.run_module("kerascope", run_name="__main__")
"""


def _interrupted_classify(tmp_path: Path, args: list[str], stop: int = signal.SIGINT,
                          terminal: bool = False) -> tuple[int, str, str, list[str]]:  # fmt: skip
    """``terminal``: stdout and stderr on a pseudo-terminal, hung up (closed) before the
    signal, as a closed terminal window does: every write to it then fails (EIO)."""
    source = picture(tmp_path / "one.png").read_bytes()
    names = []
    for i in range(200):
        names.append(str(tmp_path / f"img{i:03d}.png"))
        Path(names[-1]).write_bytes(source)
    marker = tmp_path / "started"
    command = [sys.executable, "-c", _SLOW_CLI, str(marker), "classify", *names, "-b", "8",
               "-k", "1", *args]  # fmt: skip
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    if terminal:
        import pty

        master, child = pty.openpty()
        streams = {"stdout": child, "stderr": child}
    proc = subprocess.Popen(command, text=True, **streams)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "classify never got going"
        time.sleep(0.05)
    if terminal:
        os.close(child)
        os.close(master)  # the hang-up
    proc.send_signal(stop)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err, names


def _finished(err: str, how: str = "interrupted") -> int:
    found = re.search(how + r" after (\d+) of 200 images", err)
    assert found, err
    return int(found.group(1))


@pytest.mark.slow  # a CLI process each (5-10 s): out of make test-fast's loop
def test_ctrl_c_writes_the_results_so_far_to_the_output_file(run_dir, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")
    code, _, err, names = _interrupted_classify(
        tmp_path, ["-m", str(run_dir), "-f", "csv", "-o", str(out)]
    )
    assert code == 130 and "Traceback" not in err, err
    n = _finished(err)
    assert 24 <= n < 200
    assert out.read_text() == "previous results\n"  # kept: the stopped run writes beside it
    partial = tmp_path / "out-1.csv"
    assert f"'{partial}' holds those {n} only ('{out}' is kept as it was)" in err
    rows = list(csv.DictReader(partial.open(newline="")))
    assert [r["image"] for r in rows] == names[:n]  # complete rows, in order, nothing else
    assert all(r["name"] in CLASSES for r in rows)
    assert partial.read_text().endswith("\n")


@pytest.mark.slow  # a CLI process each (5-10 s): out of make test-fast's loop
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_as_ctrl_c_does(run_dir, tmp_path, stop):
    """A scheduler's SIGTERM or a closed terminal's SIGHUP: the results so far are written
    and said, no temporary file is left, and the exit code is the shell's (128 + N). Before:
    the process died at once, the output file never written."""
    out = tmp_path / "out.csv"
    code, _, err, names = _interrupted_classify(
        tmp_path, ["-m", str(run_dir), "-f", "csv", "-o", str(out)], stop
    )
    name = signal.Signals(stop).name
    assert code == 128 + stop and "Traceback" not in err, err
    n = _finished(err, f"stopped by {name}")
    assert 24 <= n < 200
    assert [r["image"] for r in csv.DictReader(out.open(newline=""))] == names[:n]
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.slow  # a CLI process each (5-10 s): out of make test-fast's loop
def test_sighup_of_a_closed_terminal_still_writes_the_results_so_far(run_dir, tmp_path):
    """After a hang-up every write to the terminal fails: before, the stop's own line failed
    there and the -o file was never written."""
    out = tmp_path / "out.csv"
    code, _, _, names = _interrupted_classify(
        tmp_path, ["-m", str(run_dir), "-f", "csv", "-o", str(out)], signal.SIGHUP, terminal=True
    )
    assert code == 128 + signal.SIGHUP
    rows = [r["image"] for r in csv.DictReader(out.open(newline=""))]
    assert 24 <= len(rows) < 200 and rows == names[: len(rows)]


@pytest.mark.slow  # a CLI process each (5-10 s): out of make test-fast's loop
def test_ctrl_c_prints_the_results_so_far(run_dir, tmp_path):
    code, out, err, names = _interrupted_classify(tmp_path, ["-m", str(run_dir), "-f", "json"])
    assert code == 130 and "Traceback" not in err, err
    n = _finished(err)
    assert [d["image"] for d in json.loads(out)] == names[:n]
