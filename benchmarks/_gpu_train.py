"""benchmarks/gpu.py's training rows: `kerascope train` runs in subprocesses, epochs parsed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from _gpu_common import Sizes

# ----------------------------------------------------------------------------- train CLI

STEADY_FROM = 3  # the first epoch of a stage counted as steady (see run_train)
EPOCH = re.compile(r"epoch (\d+):.*?([\d.]+) img/s\s+([\d.]+) s")
STAGE = re.compile(r"^stage (\d+)/(\d+)")


def train_help(env: dict) -> str:
    out = subprocess.run([sys.executable, "-m", "kerascope", "train", "--help"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    return out.stdout + out.stderr


def run_train(data: str, run_dir: Path, recipe: str, epochs: str, precision: str | None,
              sizes: Sizes, help_text: str, env: dict, timeout: float, log) -> dict:  # fmt: skip
    """One `kerascope train` in a subprocess; per stage, the img/s of each epoch it printed
    (kept when the run is stopped at its timeout)."""
    cmd = [sys.executable, "-m", "kerascope", "train", data, "--recipe", recipe, "-o",
           str(run_dir), "--epochs", epochs, "--batch-size", str(sizes.train_batch),
           "--image-size", str(sizes.image_size), "--seed", "0"]  # fmt: skip
    if "--patience" in help_text:
        cmd += ["--patience", "1000"]  # steady epochs, not early stopping
    if recipe == "finetune" and "--unfreeze" in help_text:
        # two stages, head then the whole backbone (the "stage 2", the peer's whole
        # fine-tune); the default unfreezes gradually in three
        cmd += ["--unfreeze", "all"]
    if precision is not None:
        if "--precision" in help_text:
            cmd += ["--precision", precision]
        elif precision != "float32":
            return {"ok": False, "na": "no --precision option in `kerascope train`"}
    if timeout < 5:
        return {"ok": False, "error": "skipped: out of time"}
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True, start_new_session=True)  # fmt: skip
    epochs_seen: list[tuple[int, int, float, float]] = []
    tail: list[str] = []

    def read() -> None:
        stage = 1
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip())
            del tail[:-5]
            if m := STAGE.search(line.strip()):
                stage = int(m[1])
            elif m := EPOCH.search(line):
                epochs_seen.append((stage, int(m[1]), float(m[2]), float(m[3])))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timed_out = False
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    reader.join(5)
    log.flush()
    wall = time.monotonic() - start
    want = 2 if recipe == "finetune" else 1
    stage_epochs = [e for e in epochs_seen if e[0] == want]
    # Steady from epoch 3: epoch 1 compiles, and on the device-fed path epoch 2 compiled the
    # train step once more (model state committed after epoch 1), so counting epoch 2 showed a
    # compile as a slow epoch. Fewer epochs: what there is, and the reply says so.
    first = STEADY_FROM - 1 if len(stage_epochs) >= STEADY_FROM else min(1, len(stage_epochs) - 1)
    steady = [rate for _, _, rate, _ in stage_epochs[first:]]
    info = {
        "cmd": " ".join(cmd[1:]),
        "wall_s": round(wall, 1),
        "timed_out": timed_out,
        "exit": code,
        "epochs": epochs_seen,
        "steady_from": f"epoch {first + 1} of the stage"
        + ("" if first + 1 >= STEADY_FROM else " (too few epochs ran: may include compiling)"),
    }
    if not steady:
        why = f"timed out after {wall:.0f} s" if timed_out else f"exit {code}"
        return {"ok": False, "error": f"no epoch of stage {want} ({why}): {' | '.join(tail)}",
                "info": info}  # fmt: skip
    reply = {"ok": True, "value": steady, "info": info}
    if len(stage_epochs) < STEADY_FROM:
        reply["warning"] = (
            f"only {len(stage_epochs)} epoch(s) of stage {want} ran in {timeout:.0f} s: the "
            f"rate includes compiling (steady epochs start at {STEADY_FROM})"
        )
    return reply
