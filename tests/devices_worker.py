"""Run by tests/test_train_devices.py in a subprocess whose JAX shows two virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``, read once when JAX starts, hence
the subprocess): the same LeNet epoch (whole graph) and transfer epoch (split trainer) on
one device and on both, and the refusals that need two devices. Prints one JSON line.

Usage: python tests/devices_worker.py DATA OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras


def main(data: str, out: str) -> None:
    import jax

    from kerascope.errors import ConfigError
    from kerascope.training import train
    from kerascope.zoo.fast_init import numpy_init

    seen: dict[str, list[int]] = {}

    class Watch(keras.callbacks.Callback):
        """How many devices hold the weights, and split the batch, while it trains."""

        def on_train_batch_end(self, batch, logs=None):
            variable = self.model.trainable_variables[0].value
            seen.setdefault("weights_on", []).append(len(variable.sharding.device_set))

    result: dict = {"jax_devices": len(jax.devices())}
    for devices in ("1", "all"):
        seen.clear()
        with numpy_init():
            run = train(data, recipe="lenet", output=Path(out) / f"devices-{devices}", epochs=1,
                        batch_size=8, image_size=32, engine="keras", lr=1e-3, seed=0,
                        progress=False, devices=devices, callbacks=[Watch()])  # fmt: skip
        result[devices] = {"run": str(run.run_dir), "weights_on": sorted(set(seen["weights_on"])),
                           "config": run.config["devices"]}  # fmt: skip
    for devices in ("1", "all"):  # the split trainer: frozen prefix on onnxruntime, suffix
        run = train(data, recipe="transfer", output=Path(out) / f"transfer-{devices}",
                    epochs=1, batch_size=8, image_size=64, seed=0, progress=False,
                    devices=devices)  # fmt: skip
        result[f"transfer {devices}"] = str(run.run_dir)
    for devices, batch in (("3", 8), ("all", 9), ("0,2", 8)):
        try:
            train(data, recipe="lenet", output=Path(out) / "refused", epochs=1, batch_size=batch,
                  image_size=32, progress=False, devices=devices)  # fmt: skip
            result[f"refused {devices} {batch}"] = None
        except ConfigError as exc:
            result[f"refused {devices} {batch}"] = str(exc)
    result["refused left a folder"] = (Path(out) / "refused").exists()
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
