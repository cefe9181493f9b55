"""Run by tests/test_devices_prefix.py in a subprocess whose JAX shows two virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``) and with ``KERASCOPE_ENGINE=keras``:
the split trainer's frozen prefix on the JAX engine, as on a GPU machine. Prints one JSON line.

1. A frozen prefix (real-photo batch) under a two-device DataParallel: the sharded forward's
   outputs, where they live, and their difference from the one-device forward.
2. One transfer epoch (split trainer, prefix on JAX) on one device and on both (or, given
   PROCESS PORT, as one of two processes with two devices each). On a CPU the
   trainer would train whole in Keras under ``KERASCOPE_ENGINE=keras``; ``use_split`` is made
   to answer yes, which is what it answers on a GPU without augmentation.

Usage: python tests/devices_prefix_worker.py DATA OUT [PROCESS PORT]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np


def prefix_case(data: str) -> dict:
    import jax
    from PIL import Image

    from kerascope.inference import compiled
    from kerascope.training import devices as placing
    from kerascope.training.split import prefix_forward, prefix_place, split_model

    files = sorted(Path(data).rglob("*.jpg"))[::4][:8]  # cats and coffee
    x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in files])
    result: dict = {}
    with placing.data_parallel("all", 8):
        image = keras.Input((32, 32, 3), dtype="uint8")
        y = keras.layers.Rescaling(1 / 255)(image)
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(y)
        y = keras.layers.BatchNormalization()(y)
        y = keras.layers.GlobalAveragePooling2D()(y)
        y = keras.layers.Dense(2, activation="softmax")(y)
        model = keras.Model(image, y)
        for layer in model.layers[:-1]:
            layer.trainable = False
        parts = split_model(model)
        forward = prefix_forward(parts.prefix)
        result["forward"] = type(forward).__name__
        result["place"] = prefix_place(parts.prefix)
        result["place onnx"] = prefix_place(parts.prefix, "onnx")
        result["forward onnx"] = type(prefix_forward(parts.prefix, "onnx")).__name__
        out = forward.on_devices(x)[0]
        result["devices"] = sorted(f"{d.platform}:{d.id}" for d in out.sharding.device_set)
        result["shard rows"] = sorted(int(s.data.shape[0]) for s in out.addressable_shards)
        result["shards differ"] = bool(
            np.abs(np.asarray(out.addressable_shards[0].data)
                   - np.asarray(out.addressable_shards[1].data)).max() > 0
        )  # fmt: skip
        one = compiled(parts.prefix, "keras")
        with jax.default_device(jax.devices()[0]):
            want = np.asarray(one(x))
        result["max diff"] = float(np.abs(np.asarray(out) - want).max())
        result["odd max diff"] = float(np.abs(forward(x[:7]) - want[:7]).max())
        result["scale"] = float(np.abs(want).max())
    return result


def transfer_case(data: str, out: str) -> dict:
    return {devices: transfer_run(data, str(Path(out) / f"transfer-{devices}"), devices)
            for devices in ("1", "all")}  # fmt: skip


def transfer_run(data: str, out: str, devices: str, **cluster) -> dict:
    """One transfer epoch through the split trainer with the prefix on JAX (``cluster``: the
    coordinator options of a multi-process run): its run directory and the prefix's kind."""
    from kerascope.training import epochs as stage_epochs
    from kerascope.training import run as training_run
    from kerascope.training import train
    from kerascope.training.split import prefix_forward

    made: list[str] = []

    def watched(prefix, engine=None):
        forward = prefix_forward(prefix, engine)
        made.append(type(forward).__name__)
        return forward

    training_run.use_split = lambda *args, **kwargs: True
    stage_epochs.prefix_forward = watched  # where the split stage builds its prefix batches
    run = train(data, recipe="transfer", output=out, epochs=1, batch_size=8, image_size=64,
                seed=0, progress=False, devices=devices, **cluster)  # fmt: skip
    return {"run": str(run.run_dir), "forwards": sorted(set(made))}


def main(data: str, out: str, *pair: str) -> None:
    """Both cases, or with ``PROCESS PORT`` one process of a two-process run (each process
    with two virtual devices) training transfer into OUT."""
    if pair:
        process, port = (int(v) for v in pair)
        got = transfer_run(data, out, "all", coordinator=f"127.0.0.1:{port}", num_processes=2,
                           process_id=process)  # fmt: skip
        import jax

        print(json.dumps({**got, "local": len(jax.local_devices()), "all": len(jax.devices())}))
        return
    import jax

    print(json.dumps({"jax_devices": len(jax.devices()), "prefix": prefix_case(data),
                      "transfer": transfer_case(data, out)}))  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:])
