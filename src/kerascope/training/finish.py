"""The finishing steps of a training run, each safe to redo after a kill.

Order: the final ``model.keras`` from the best weights (atomically), then the curves and
report, then the state "done", then the best weights, backups and stale temp files removed.
Until "done", ``best.weights.h5`` is kept, so a resumed finish saves the same model again; it
never saves weights that were not trained. (tests/test_run_integrity.py kills the process at
each of these functions.)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kerascope.errors import RunError
from kerascope.files import atomic_path, remove_stale_temps
from kerascope.keras_saving import fast_keras_saving
from kerascope.report import plot_curves, read_history, write_run_report
from kerascope.rundir import read_labels, write_state
from kerascope.training import recipes
from kerascope.training.checkpoints import TRAINED_PART, load_best, read_best
from kerascope.training.clock import RunClock
from kerascope.zoo.model_archive import model_record, write_record


def finish_run(model, run_dir: Path, config: dict, summary: str, trained_here: bool,
               clock: RunClock | None = None
               ) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Run the finishing steps; ``(saved inference model, history rows, outcome)``.
    ``clock``: the run's (its wall time and parts go into the outcome and report.md)."""
    history = read_history(run_dir / "history.csv")
    best = read_best(run_dir / "best.weights.h5")
    clock = clock or RunClock()
    with clock.part("saving"):
        saved = _save_final_model(model, run_dir, trained_here)
    outcome = _outcome(history, best)
    _write_report_files(run_dir, config, summary, history, outcome, clock)
    _mark_done(run_dir, config, outcome)
    remove_leftovers(run_dir)
    return saved, history, outcome


def _save_final_model(model, run_dir: Path, trained_here: bool):
    """``model.keras`` from the best weights (atomically), or the model already saved when
    the best weights are gone; RunError rather than saving untrained weights."""
    best = run_dir / "best.weights.h5"
    path = run_dir / "model.keras"
    fast_keras_saving()
    if best.is_file():
        load_best(model, best)
    elif path.is_file():
        from kerascope.zoo.models import load_model

        return load_model(path).model
    elif not trained_here:
        raise RunError(f"cannot finish '{run_dir}': its best weights (best.weights.h5) and "
                       "model.keras are both missing, so nothing trained is left to save; "
                       "start a new run")  # fmt: skip
    saved = recipes.inference_model(model)
    with atomic_path(path, suffix=".keras") as tmp:
        saved.save(tmp)
        if names := read_labels(run_dir):  # inside too: a copy of model.keras keeps its names
            write_record(tmp, model_record([(str(i), n) for i, n in enumerate(names)]))
    return saved


def _outcome(history: list[dict[str, Any]], best: dict[str, Any] | None) -> dict[str, Any]:
    """The saved model's epoch and numbers (from the checkpoint itself when it recorded them),
    and the run's other headline numbers."""
    with_val = [r for r in history if r["val_loss"] is not None] or history
    if best is None and with_val:
        best = min(with_val, key=lambda r: r["val_loss"] if r["val_loss"] is not None else 0.0)
    best = best or {"epoch": 0, "val_accuracy": None, "val_loss": None}
    accuracies = [r["val_accuracy"] for r in with_val if r["val_accuracy"] is not None]
    return {
        "best_epoch": int(best["epoch"]),
        "val_accuracy": best["val_accuracy"],
        "val_loss": best["val_loss"] if best["val_loss"] is not None else float("nan"),
        "best_val_accuracy": max(accuracies, default=float("nan")),
        "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "epochs": int(history[-1]["epoch"]) if history else 0,
        "stage_epochs": stage_epochs(history),
        "seconds": float(sum(r["seconds"] or 0.0 for r in history)),
    }


def stage_epochs(history: list[dict[str, Any]]) -> list[int]:
    """Epochs each stage ran (history's rows per stage): fewer than it asked for when early
    stopping ended it, which the report says."""
    last = max((int(r["stage"] or 1) for r in history), default=0)
    return [sum(1 for r in history if int(r["stage"] or 1) == s) for s in range(1, last + 1)]


def _write_report_files(run_dir: Path, config: dict, summary: str, history: list,
                        outcome: dict, clock: RunClock) -> None:  # fmt: skip
    """curves.png, then report.md with the wall time up to now (``outcome["clock"]``)."""
    with clock.part("saving"):
        plot_curves(history, run_dir / "curves.png")
    outcome["clock"] = clock.summary()
    write_run_report(run_dir / "report.md", config, summary, outcome)


def _mark_done(run_dir: Path, config: dict, outcome: dict) -> None:
    write_state(run_dir, {"completed_stages": len(config["stages"]), "status": "done",
                           "outcome": outcome})  # fmt: skip


def remove_leftovers(run_dir: Path) -> None:
    """After "done": the best weights (model.keras holds them), every stage's backup, and
    temp files of writes a kill cut short (this process holds the lock: none is live)."""
    (run_dir / "best.weights.h5").unlink(missing_ok=True)
    (run_dir / TRAINED_PART).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    remove_stale_temps(run_dir)
