"""Every row of issue 18's table, kerascope beside a timm/PyTorch peer, in one command.

On a GPU machine (one H200, 16 cores: see scripts/gpu_run.sh for the exact device command)::

    PYTHONPATH=src KERAS_BACKEND=jax python3 benchmarks/gpu.py --out "$OUT"

and on a CPU, as a smoke run of every code path with tiny sizes (peer rows that need CUDA or
torchvision say so; it runs the keras engine, KERASCOPE_ENGINE=keras: the JAX path a GPU runs)::

    .venv/bin/python benchmarks/gpu.py --quick

Rows: model forward (EfficientNet-Lite0 and ResNet-50, batch 256, uint8 from the host, fp32 and
bf16); ``classify`` of in-memory arrays (2,048 x 224²) and of a JPEG folder (3,000 JPEGs
500x375, warm and first call in a fresh process); the first call on a new batch shape and on
the last partial batch; ``explain`` Grad-CAM of 1,024 files with the pictures written;
the folder and explain rows again with the Pillow decoder, with the pictures drawn in processes,
on a model with no device work (what the host alone allows), and explain with one batch on the
device at a time (what dispatching the next batch first gains);
``kerascope train --recipe transfer`` (bf16 and fp32) and ``--recipe finetune`` stage 2, steady
epochs with augmentation, on a 2-class folder of 1,200 photos; each beside the peer a PyTorch
user writes (timm eager, a 16-worker DataLoader, torchvision augmentation; after
shared/anchors/peer_gpu_pipeline.py).

How it measures: kerascope runs as a user runs it, through its public API (``load_model``,
``inference.compiled``, ``classify``, ``cam.save.save_explanations``) in a worker process and
through the CLI (``python -m kerascope train``) in subprocesses; the peer runs in another worker.
This process imports neither JAX nor torch: it asks the two workers in turn, repeat by repeat
(K P K P ...), so a neighbour's load hits both alike, and reports the median with [min - max].
Options that kerascope does not have yet (``precision=``, ``--precision``) are detected
(``inspect.signature``, ``--help``) and the row says n/a. Every row has a time budget and runs
under try/except: a failure or a timeout is recorded and the next row runs. The table is printed
and written with the JSON to ``--out`` (default ``$OUT``).

This file holds the command, the worker processes and the order of the rows; beside it,
``_gpu_common.py`` (sizes, data), ``_gpu_kerascope.py`` and ``_gpu_peer.py`` (the two sides),
``_gpu_report.py`` (rows, medians, the table) and ``_gpu_train.py`` (the training runs).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _timing, _gpu_*

from _gpu_common import QUICK, REPO, NotAvailable, Sizes, make_data  # noqa: E402
from _gpu_kerascope import KerascopeSide  # noqa: E402
from _gpu_peer import PeerSide  # noqa: E402
from _gpu_report import Clock, Row, ask, fmt, write_report  # noqa: E402
from _gpu_train import run_train, train_help  # noqa: E402

# -------------------------------------------------------------------------------- workers


def worker_main(kind: str, tmp: str, workers: int) -> None:
    """Answer one JSON request per line on stdin; anything else printed goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        side = KerascopeSide(tmp) if kind == "kerascope" else PeerSide(tmp, workers)
        proto.write(json.dumps({"ok": True, "value": "ready"}) + "\n")
    except Exception:
        proto.write(json.dumps({"ok": False, "error": traceback.format_exc()[-1500:]}) + "\n")
        return
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"ok": True, **getattr(side, request["op"])(**request["args"])}
        except NotAvailable as exc:
            reply = {"ok": False, "na": str(exc)}
        except Exception:
            traceback.print_exc()
            reply = {"ok": False, "error": traceback.format_exc()[-1500:]}
        proto.write(json.dumps(reply, default=str) + "\n")


class Worker:
    """A worker process (``--worker kerascope|peer``) asked one op at a time, with a timeout;
    on a timeout it is killed and the next call starts a new one."""

    def __init__(self, kind: str, env: dict, tmp: str, workers: int, log):
        self.kind, self.env, self.tmp, self.workers, self.log = kind, env, tmp, workers, log
        self.proc = None
        self.lines: queue.Queue = queue.Queue()

    def _start(self, timeout: float) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", self.kind,
               "--tmp", self.tmp, "--workers", str(self.workers)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=self.env, text=True,
                                     start_new_session=True)  # fmt: skip
        self.lines = queue.Queue()
        proc, lines = self.proc, self.lines
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)],
                         daemon=True).start()  # fmt: skip
        reply = self._read(timeout)
        if not reply.get("ok"):
            raise RuntimeError(f"{self.kind} worker did not start: {reply.get('error')}")

    def _read(self, timeout: float) -> dict:
        try:
            line = self.lines.get(timeout=max(1.0, timeout))
        except queue.Empty:
            self.close()
            raise TimeoutError(f"{self.kind}: no answer within {timeout:.0f} s") from None
        if line is None:
            code = self.proc.wait() if self.proc else None
            self.proc = None
            raise RuntimeError(f"{self.kind} worker exited (code {code}); see the log")
        return json.loads(line)

    def call(self, op: str, timeout: float, **args) -> dict:
        deadline = time.monotonic() + timeout
        if self.proc is None:
            self._start(timeout)
        self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.proc.stdin.flush()
        return self._read(deadline - time.monotonic())

    def close(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            self.proc = None


# ------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT"),
        help="folder for gpu.json, gpu.txt and gpu.log (default: $OUT)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke run")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated groups: forward, arrays, "
        "folder, compile, explain, first, train (default: all)",
    )
    parser.add_argument("--budget", type=float, help="seconds for the whole run")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--worker", choices=("kerascope", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.tmp, args.workers)
        return
    sizes = QUICK if args.quick else Sizes()
    if args.budget:
        sizes.budget = args.budget
    if args.repeats:
        sizes.repeats = args.repeats
    clock = Clock(sizes.budget)
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    groups = dict(sizes.budgets)
    only = [g for g in args.only.split(",") if g] or list(groups)
    tmp = Path(tempfile.mkdtemp(prefix="kerascope-gpu-"))
    log = open(out / "gpu.log", "w", buffering=1)  # noqa: SIM115
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH"))
                                        if p)  # fmt: skip
    env.setdefault("KERAS_BACKEND", "jax")
    if args.quick:  # the JAX engine a GPU runs, not the CPU's onnx/OpenVINO: the path under test
        env["KERASCOPE_ENGINE"] = "keras"
    env["KERASCOPE_HOME"] = str(tmp / "kerascope-home")  # weights port, decode cache, XLA cache
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")  # JAX beside the torch peer
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("PYTHONUNBUFFERED", "1")
    workers = min(sizes.workers, os.cpu_count() or 1)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    say(f"data in {tmp}, output in {out}, budget {sizes.budget:.0f} s, groups {','.join(only)}")
    data = make_data(tmp / "data", sizes)
    say(f"made {sizes.jpegs} JPEGs {sizes.jpeg_size[0]}x{sizes.jpeg_size[1]}, "
        f"{sizes.train_images} training photos, {sizes.arrays} arrays")  # fmt: skip
    K = Worker("kerascope", env, str(tmp), workers, log)
    P = Worker("peer", env, str(tmp), workers, log)
    atexit.register(P.close)  # also when this process fails or is interrupted
    atexit.register(K.close)
    meta: dict = {
        "sizes": asdict(sizes),
        "cpus": os.cpu_count(),
        "argv": sys.argv[1:],
        "env": {k: v for k, v in env.items() if k.startswith(("XLA_", "JAX_", "KERAS"))},
    }
    try:
        meta["commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        meta["commit"] = None
    for name, w in (("kerascope", K), ("peer", P)):
        reply = ask(w, "info", 120)
        meta[name] = reply.get("value") if reply.get("ok") else reply
        say(f"{name}: {meta[name]}")
    rows: list[Row] = []
    n_files = sizes.jpegs
    R = sizes.repeats

    def group(name: str) -> float | None:
        if name not in only:
            return None
        return clock.group(groups[name])

    def left(deadline: float) -> float:
        return deadline - time.monotonic()

    def interleave(row: Row, deadline: float, k_op: tuple, p_op: tuple,
                   variants: tuple[tuple[Row, dict], ...] = ()) -> None:  # fmt: skip
        """Each repeat: the peer, kerascope, then each of ``variants`` (more kerascope rows:
        ``k_op`` with more arguments, e.g. another decoder or picture pool). The peer first:
        kerascope's variants (and its first compiles) cannot leave it out of time."""
        op, kw = k_op
        more = [(v, "kerascope", K, (op, {**kw, **extra})) for v, extra in variants]
        sides = [(row, "peer", P, p_op), (row, "kerascope", K, k_op), *more]
        for rep in range(R):
            for r, side, w, (op, kw) in sides:
                if rep and getattr(r, side[0] + "_note"):
                    continue  # failed or n/a on an earlier repeat
                r.add(side, ask(w, op, left(deadline), **kw))
            also = "".join(f" ({v.target} {fmt(v.kerascope, v.k_note, row.unit)})"
                           for v, _ in variants)  # fmt: skip
            say(f"  {row.label} #{rep + 1}: kerascope {fmt(row.kerascope, row.k_note, row.unit)}"
                f"{also} | peer {fmt(row.peer, row.p_note, row.unit)}")  # fmt: skip
            if left(deadline) < 2:
                break

    # --- model forward
    if (deadline := group("forward")) is not None:
        say("model forward, uint8 batches from the host, probabilities back")
        configs = [(m, p) for m in ("efficientnet_lite0", "resnet50")
                   for p in ("float32", "bfloat16")]  # fmt: skip
        label = {"efficientnet_lite0": "Lite0", "resnet50": "ResNet-50"}
        frows = {}
        for m, p in configs:
            target = "bf16 >= 1.0x timm bf16" if p == "bfloat16" else ""
            frows[(m, p)] = Row(f"forward_{m}_{p}", f"forward {label[m]} {p} bs{sizes.batch}",
                                "img/s", target)  # fmt: skip
            rows.append(frows[(m, p)])
        for rep in range(R):
            for (m, p), row in frows.items():
                kw = {"model": m, "precision": p, "batch": sizes.batch, "steps": sizes.steps}
                for side, w in (("peer", P), ("kerascope", K)):
                    if rep and getattr(row, side[0] + "_note"):
                        continue
                    row.add(side, ask(w, "forward", left(deadline), **kw))
                say(f"  {row.label} #{rep + 1}: kerascope "
                    f"{fmt(row.kerascope, row.k_note, 'img/s')} | peer "
                    f"{fmt(row.peer, row.p_note, 'img/s')}")  # fmt: skip
            if left(deadline) < 5:
                break

    write_report(out, meta, rows, workers, started)

    # --- classify of in-memory arrays
    if (deadline := group("arrays")) is not None:
        row = Row("classify_arrays", f"classify {sizes.arrays} arrays 224²", "img/s",
                  ">= 8,000 img/s")  # fmt: skip
        rows.append(row)
        interleave(row, deadline, ("classify_arrays", {"path": data["arrays"]}),
                   ("classify_arrays", {"path": data["arrays"]}))  # fmt: skip

    write_report(out, meta, rows, workers, started)

    # --- classify of the JPEG folder, warm
    if (deadline := group("folder")) is not None:
        row = Row("classify_folder", f"classify folder {n_files} JPEGs (warm)", "img/s",
                  ">= 1.0x peer")  # fmt: skip
        pil = Row("classify_folder_pillow", f"classify folder {n_files} JPEGs, Pillow decoder",
                  "img/s", "(KERASCOPE_JPEG_DECODER=pillow)")  # fmt: skip
        host = Row("classify_folder_host_only", "classify folder, a model with no device work",
                   "img/s", "(the host's ceiling)")  # fmt: skip
        rows += [row, pil, host]
        kw = {"folder": data["folder"], "n": n_files}
        op = ("classify_folder", kw)
        variants = ((pil, {"decoder": "pillow"}), (host, {"model": "host-only"}))
        interleave(row, deadline, op, op, variants=variants)

    write_report(out, meta, rows, workers, started)

    # --- compile: first call on a new batch shape, and on the last partial batch
    if (deadline := group("compile")) is not None:
        new = Row("compile_new_shape", "first call, new batch shape (extra s)", "s", "~0")
        part = Row("compile_partial", "first call, last partial batch (extra s)", "s", "~0")
        rows += [new, part]
        kw = {"path": data["arrays"], "new_batch": max(2, min(sizes.arrays, 200)),
              "remainder": 13}  # fmt: skip
        for side, w in (("peer", P), ("kerascope", K)):
            reply = ask(w, "compile_shapes", left(deadline), **kw)
            for row, key in ((new, "new_shape"), (part, "partial")):
                one = dict(reply, value=reply["value"][key]) if reply.get("ok") else reply
                row.add(side, one)
        say(
            f"  new shape: kerascope {fmt(new.kerascope, new.k_note, 's')} | peer "
            f"{fmt(new.peer, new.p_note, 's')}; partial: kerascope "
            f"{fmt(part.kerascope, part.k_note, 's')} | peer {fmt(part.peer, part.p_note, 's')}"
        )

    write_report(out, meta, rows, workers, started)

    # --- explain, Grad-CAM pictures written
    if (deadline := group("explain")) is not None:
        files = data["files"][: sizes.explain_files]
        row = Row("explain_gradcam", f"explain Grad-CAM {len(files)} files, pictures written",
                  "img/s", ">= 1,000 img/s")  # fmt: skip
        procs = Row("explain_gradcam_processes", "explain, pictures drawn in processes",
                    "img/s", "(pool='processes')")  # fmt: skip
        host = Row("explain_gradcam_host_only", "explain, a model with no device work",
                   "img/s", "(the host's ceiling)")  # fmt: skip
        serial = Row("explain_gradcam_one_batch", "explain, one batch on the device at a time",
                     "img/s", "(batch i + 1 not dispatched before batch i is back)")  # fmt: skip
        rows += [row, procs, host, serial]
        kw = {"files": files, "warm_files": min(len(files), 256)}
        op = ("explain", kw)
        variants = ((procs, {"pool": "processes"}), (host, {"model": "host-only"}),
                    (serial, {"ahead": False}))  # fmt: skip
        interleave(row, deadline, op, op, variants=variants)
    K.close()  # frees the device for the fresh processes below

    write_report(out, meta, rows, workers, started)

    # --- first call in a fresh process
    if (deadline := group("first")) is not None:
        row = Row("classify_folder_first", f"classify folder {n_files} JPEGs (first call)",
                  "img/s", "slower than warm by <= one compile")  # fmt: skip
        rows.append(row)
        kw = {"folder": data["folder"], "n": n_files}
        for side, kind in (("peer", "peer"), ("kerascope", "kerascope")):
            fresh = Worker(kind, env, str(tmp), workers, log)
            try:
                row.add(side, ask(fresh, "first_call_folder", left(deadline), **kw))
            finally:
                fresh.close()
        say(f"  {row.label}: kerascope {fmt(row.kerascope, row.k_note, 'img/s')} | peer "
            f"{fmt(row.peer, row.p_note, 'img/s')}")  # fmt: skip

    write_report(out, meta, rows, workers, started)

    # --- training: kerascope's CLI runs, the peer's epochs between them
    if (deadline := group("train")) is not None:
        help_text = train_help(env)
        meta["train_precision_option"] = "--precision" in help_text
        runs = [("train_transfer_bf16", "transfer", "bfloat16", ">= 5,000 img/s, >= 2x peer"),
                ("train_transfer_fp32", "transfer", "float32", ""),
                ("train_finetune_stage2", "finetune", "bfloat16", ">= 2,000 img/s")]  # fmt: skip
        if not meta["train_precision_option"]:
            runs = [("train_transfer", "transfer", None, ">= 5,000 img/s, >= 2x peer"),
                    ("train_finetune_stage2", "finetune", None, ">= 2,000 img/s")]  # fmt: skip
        shares = {"train_transfer_bf16": 0.28, "train_transfer_fp32": 0.22,
                  "train_transfer": 0.42, "train_finetune_stage2": 0.38}  # fmt: skip
        if len(runs) == 2:
            shares["train_finetune_stage2"] = 0.48
        tkw = {"folder": data["train"], "batch": sizes.train_batch, "image_size": sizes.image_size}
        warm = ask(P, "train_folder", left(deadline), precision="bfloat16", epochs=1, **tkw)
        meta["peer_train_first_epoch"] = warm.get("value") or warm
        for key, recipe, precision, target in runs:
            shown = precision or "default precision"
            stage = " stage 2" if recipe == "finetune" else ""
            row = Row(key, f"train {recipe}{stage} {shown} (steady epoch)", "img/s", target)
            rows.append(row)
            budget = min(left(deadline) - 8, groups["train"] * shares[key])
            epochs = sizes.finetune_epochs if recipe == "finetune" else str(sizes.transfer_epochs)
            reply = run_train(data["train"], tmp / f"run-{key}", recipe, epochs, precision,
                              sizes, help_text, env, budget, log)  # fmt: skip
            row.add("kerascope", reply)
            if "info" in reply and not reply.get("ok"):
                row.k_info = reply["info"]
            p_prec = "float32" if precision == "float32" else "bfloat16"
            n = sizes.peer_epochs + (1 if p_prec == "float32" else 0)
            peer = ask(P, "train_folder", left(deadline), precision=p_prec, epochs=n, **tkw)
            if peer.get("ok") and p_prec == "float32":
                peer["value"] = peer["value"][1:]  # its first epoch builds the model
            row.add("peer", peer)
            say(f"  {row.label}: kerascope {fmt(row.kerascope, row.k_note, 'img/s')} | peer "
                f"{fmt(row.peer, row.p_note, 'img/s')} (peer: timm whole fine-tune {p_prec}, "
                f"torchvision augmentation, {workers}-worker DataLoader)")  # fmt: skip
            write_report(out, meta, rows, workers, started)
    K.close()
    P.close()

    print("\n" + write_report(out, meta, rows, workers, started), flush=True)
    log.close()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
