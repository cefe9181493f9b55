"""benchmarks/gpu.py's rows and report: medians over repeats, the table, gpu.json."""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------- the rows


@dataclass
class Row:
    key: str
    label: str
    unit: str  # "img/s" (higher is better) or "s" (lower is better)
    target: str = ""
    kerascope: list | None = None
    peer: list | None = None
    k_note: str = ""
    p_note: str = ""
    k_info: dict | None = None
    p_info: dict | None = None

    def add(self, side: str, reply: dict) -> None:
        """Record one reply: a value, or why there is none (n/a, error, timeout)."""
        values = getattr(self, side)
        if values is None:
            values = []
            setattr(self, side, values)
        if reply.get("ok"):
            value = reply["value"]
            values.extend(value if isinstance(value, list) else [value])
            if reply.get("warning"):
                setattr(self, side[0] + "_note", reply["warning"])
            info = reply.get("info") or {}
            if info:
                merged = getattr(self, side[0] + "_info") or {}
                merged.update(info)
                setattr(self, side[0] + "_info", merged)
        else:
            note = ("n/a: " + reply["na"]) if "na" in reply else reply.get("error", "failed")
            setattr(self, side[0] + "_note", note.strip().splitlines()[-1][:160])


def ask(worker, op: str, timeout: float, **args) -> dict:  # worker: a gpu.Worker
    """One call, any failure turned into a reply the row records."""
    if timeout < 1:
        return {"ok": False, "error": "skipped: out of time"}
    try:
        return worker.call(op, timeout, **args)
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def summary(values: list | None) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}  # fmt: skip


def fmt(values: list | None, note: str, unit: str) -> str:
    """``median [min-max]`` of a row's values, or the note saying why there are none."""
    if not values:
        return note or "-"
    med, lo, hi = statistics.median(values), min(values), max(values)
    if unit == "s":
        return f"{med:.2f} s" if len(values) == 1 else f"{med:.2f} [{lo:.2f}-{hi:.2f}] s"
    if len(values) == 1:
        return f"{med:,.0f}"
    return f"{med:,.0f} [{lo:,.0f}-{hi:,.0f}]"


def cell(values: list | None, note: str, unit: str, notes: list[str]) -> str:
    """A table cell: the figure, or a short tag pointing to a numbered note under the table."""
    if not note:
        return fmt(values, "", unit) if values else "-"
    if note not in notes:
        notes.append(note)
    tag = "n/a" if note.startswith("n/a") else "skipped" if "skipped" in note else "failed"
    if values:  # a figure with a caveat
        tag = fmt(values, "", unit)
    return f"{tag} [{notes.index(note) + 1}]"


def ratio(row: Row) -> str:
    if not row.kerascope or not row.peer or row.unit != "img/s":
        return ""
    return f"{statistics.median(row.kerascope) / statistics.median(row.peer):.2f}x"


class Clock:
    """The script's deadline and each group's budget within it."""

    def __init__(self, total: float):
        self.end = time.monotonic() + total

    def left(self) -> float:
        return self.end - time.monotonic()

    def group(self, seconds: float) -> float:
        """The deadline of a group that may take ``seconds`` (never past the script's)."""
        return min(self.end, time.monotonic() + seconds)


def write_report(out: Path, meta: dict, rows: list[Row], workers: int, started: float) -> str:
    """Write gpu.txt (the table) and gpu.json; called after every group, so a run stopped
    from outside still leaves what it measured."""
    peer_meta = meta.get("peer") if isinstance(meta.get("peer"), dict) else {}
    device = peer_meta.get("gpu") or peer_meta.get("device") or "?"
    lines = [f"kerascope {meta.get('commit') or '(no git)'} beside a timm/PyTorch peer on "
             f"{device}, {os.cpu_count()} CPUs; median [min-max] over repeats",
             "", f"{'work':<50} {'kerascope':>24} {'peer':>24} {'ratio':>6}  target"]  # fmt: skip
    notes: list[str] = []
    for row in rows:
        k = cell(row.kerascope, row.k_note, row.unit, notes)
        p = cell(row.peer, row.p_note, row.unit, notes)
        lines.append(f"{row.label:<50} {k:>24} {p:>24} {ratio(row):>6}  {row.target}")
    lines += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    lines.append(
        "kerascope: public API in one worker process (default precision unless the row names "
        "one), `kerascope train` CLI runs; peer: timm eager (classify and explain fp32, as "
        f"peer_gpu_pipeline.py), {workers}-worker DataLoader, training = whole fine-tune with "
        "torchvision augmentation"
    )
    total = round(time.monotonic() - started, 1)
    lines.append(f"(after {total:.0f} s; details in gpu.json and gpu.log)")
    table = "\n".join(lines)
    (out / "gpu.txt").write_text(table + "\n")
    result = {"meta": meta, "total_s": total, "rows": [
        {"key": r.key, "label": r.label, "unit": r.unit, "target": r.target,
         "kerascope": summary(r.kerascope), "peer": summary(r.peer), "ratio": ratio(r),
         "kerascope_note": r.k_note, "peer_note": r.p_note, "kerascope_info": r.k_info,
         "peer_info": r.p_info} for r in rows]}  # fmt: skip
    (out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
    return table
