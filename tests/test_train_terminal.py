"""On a terminal, kerascope's own lines and Keras's progress bar do not overwrite each other
(`kerascope.training.progress`, the callbacks' order in `kerascope.training.stage`)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from kerascope.testing.photos import cat_and_coffee


def _screen(raw: str) -> list[str]:
    """What a terminal shows for ``raw``: carriage returns, backspaces and erase-line honoured."""
    lines, row, col = [[]], 0, 0
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\x1b" and raw[i + 1 : i + 2] == "[":
            end = i + 2
            while end < len(raw) and not raw[end].isalpha():
                end += 1
            if raw[end : end + 1] == "K":
                del lines[row][col:]
            i = end + 1
            continue
        if ch == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append([])
        elif ch == "\r":
            col = 0
        elif ch == "\b":
            col = max(0, col - 1)
        else:
            line = lines[row]
            line.extend(" " * (col - len(line)))
            line[col : col + 1] = [ch]
            col += 1
        i += 1
    return ["".join(line) for line in lines]


def test_epoch_lines_are_clean_under_a_terminal(tmp_path):
    data = cat_and_coffee(tmp_path / "data", n=12, size=32)
    primary, secondary = pty.openpty()
    command = [sys.executable, "-m", "kerascope", "train", str(data), "--recipe", "lenet",
               "--epochs", "2", "--image-size", "32", "--batch-size", "2",
               "-o", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200", "KERAS_BACKEND": "jax"}
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary,
                          env=env) as process:  # fmt: skip
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=300) == 0
    os.close(primary)
    screen = _screen(b"".join(chunks).decode("utf-8", "replace"))
    epochs = [i for i, line in enumerate(screen) if "epoch" in line and ": loss" in line]
    assert len(epochs) == 2, "\n".join(screen)
    shown = "\n".join(screen)
    assert not any("━" in line and ("estimated" in line or "epoch " in line) for line in screen), (
        shown
    )
    for i in epochs:  # before: printed onto the bar in progress, then the bar drawn again
        assert screen[i].startswith("  epoch "), shown
        assert "val_loss" in screen[i - 1] and "step" in screen[i - 1], shown
