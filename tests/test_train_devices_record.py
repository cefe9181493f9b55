"""What a run records about its devices and precision, and which option a process started
otherwise than process 0 is named by (issue 19's stress test): the record says what ran, the
line names the option the user gave."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import yaml

from kerascope.testing import cat_and_coffee
from kerascope.training import devices as placing
from kerascope.training import same_run, settings

jax_only = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's devices")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A LeNet run on 4 virtual CPU devices of a dataset of 4 training images (2 validation):
    every step takes the 4 images, 1 per device, not the 8 of a batch of 32 over 4."""
    root = tmp_path_factory.mktemp("tiny")
    photos = cat_and_coffee(root / "photos", n=3, size=40)
    run = root / "run"
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}  # fmt: skip
    for name in placing.ENV.values():
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "kerascope", "train", str(photos), "--recipe",
                           "lenet", "--image-size", "32", "--epochs", "1", "--devices", "4",
                           "--engine", "keras", "-o", str(run)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training images: each step takes 4" in proc.stdout, proc.stdout[-2000:]
    return run


@jax_only
@pytest.mark.slow
def test_the_report_says_the_images_each_device_took(tiny_run):
    """Before: "8 images per device per step" (32 / 4) where each device took 1."""
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert sum(config["counts"]["train"].values()) == 4 and config["devices"]["count"] == 4
    assert config["devices"]["per_device_batch"] == 1  # before: 8 (32 / 4)
    report = (tiny_run / "report.md").read_text()
    assert "in 1 process(es), 1 images per device per step" in report, report
    fitted = placing.step_record(config["devices"], config["batch_size"], 4)
    assert fitted["per_device_batch"] == 1 and fitted["count"] == 4
    assert placing.step_record(config["devices"], 32, 3)["per_device_batch"] == 1  # padded to 4
    assert placing.step_record(config["devices"], 32, 1000)["per_device_batch"] == 8


@jax_only
@pytest.mark.slow
def test_the_report_names_the_split_prefix_precision(tiny_run, tmp_path):
    """A split run under --precision bfloat16 computed its frozen prefix in float32
    (training/split.py): report.md said only "precision bfloat16"."""
    from kerascope.report import write_run_report
    from kerascope.training.split import PREFIX_PRECISION

    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    outcome = json.loads((tiny_run / "run_state.json").read_text())["outcome"]
    split = {**config, "precision": "bfloat16", "prefix_precision": PREFIX_PRECISION}
    text = write_run_report(tmp_path / "split.md", split, "data", outcome).read_text()
    assert "precision bfloat16 (split training's frozen prefix in float32)." in text
    whole = {**config, "precision": "bfloat16"}
    text = write_run_report(tmp_path / "whole.md", whole, "data", outcome).read_text()
    assert "precision bfloat16.\n" in text and "split training's" not in text


def _named(first: dict, other: dict, monkeypatch) -> str | None:
    """The option ``check_same_options`` names when process 1's config is ``other`` and
    process 0's ``first``: the gathered values compared as `_differing` compares them."""
    import zlib

    def differing(values, phase):
        mine = same_run._entries(first)
        assert len(values) == len(mine)  # every process gathers as many values
        for index, ((_, a), b) in enumerate(zip(mine, values, strict=True)):
            code = [zlib.crc32(json.dumps(v, sort_keys=True, default=str).encode())
                    for v in (a, b)]  # fmt: skip
            if code[0] != code[1]:
                return 1, index
        return None

    monkeypatch.setattr(same_run, "_differing", differing)
    try:
        same_run.check_same_options(other)
    except Exception as exc:  # noqa: BLE001  (the message is what is tested)
        return str(exc).split("another ", 1)[1].split(" than process 0")[0]
    return None


def test_the_option_a_process_differs_in_is_named(tmp_path, monkeypatch):
    """Before: --lr, --epochs, --optimizer, --momentum and --lr-schedule were all "another
    --stages" (no such option) and --rotation was "another --no-augment"."""
    photos = cat_and_coffee(tmp_path / "photos", n=3, size=40)

    def config(**options):
        base = dict(data=photos, recipe="lenet", output=tmp_path / "run", backbone=None,
                    epochs=None, batch_size=None, lr=None, seed=0, val_split=0.2,
                    skip_bad=False, class_weight=None, unfreeze=None, augment=True,
                    image_size=32, patience=None)  # fmt: skip
        args = {**base, **options}
        keys = list(base)
        return settings.resolve_config(*[args.pop(k) for k in keys], **args)

    from kerascope.data.augment import AugmentConfig

    same = config()
    recipe_augment = same["augment"]  # --rotation 5 changes the recipe's rotation alone
    assert _named(same, config(), monkeypatch) is None
    for options, flag in (
        ({"lr": 0.01}, "--lr"),
        ({"epochs": 3}, "--epochs"),
        ({"optimizer": "sgd"}, "--optimizer"),
        ({"lr_schedule": "cosine"}, "--lr-schedule"),
        ({"augment": AugmentConfig(**{**recipe_augment, "rotation": 5})}, "--rotation"),
        (
            {
                "augment": AugmentConfig(
                    **{**recipe_augment, "horizontal_flip": not recipe_augment["horizontal_flip"]}
                )
            },
            "--no-flip",
        ),
        ({"augment": False}, "--no-augment"),
        ({"seed": 1}, "--seed"),
    ):
        assert _named(same, config(**options), monkeypatch) == flag, options
    sgd = config(optimizer="sgd")
    assert _named(sgd, config(optimizer="sgd", momentum=0.5), monkeypatch) == "--momentum"
