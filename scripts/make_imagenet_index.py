"""Regenerate ``src/kerascope/zoo/imagenet_class_index.json`` from an offline PyPI source.

Keras's ``decode_predictions`` downloads ``imagenet_class_index.json`` at run time, which kerascope
must not need. The same 1000 ``(wnid, short name)`` pairs are hard-coded by the Keras team in
KerasHub, so we read them from there instead of from the network.

Source: PyPI ``keras-hub==0.32.0``, file ``keras_hub/src/utils/imagenet/imagenet_utils.py``
(dict ``IMAGENET_NAMES``); wheel ``keras_hub-0.32.0-py3-none-any.whl``, sha256
``c0a07ed19b894f5588188afd841659263eb6d3732e21188c82e3e7d3b6de4268``.

The module is parsed with ``ast`` rather than imported, so keras-hub is never installed or added as
a dependency. Usage::

    pip download --no-deps keras-hub==0.32.0 -d /tmp/kh
    python scripts/make_imagenet_index.py /tmp/kh/keras_hub-0.32.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import zipfile
from pathlib import Path

MEMBER = "keras_hub/src/utils/imagenet/imagenet_utils.py"
OUT = (
    Path(__file__).resolve().parents[1] / "src" / "kerascope" / "zoo" / "imagenet_class_index.json"
)


def read_names(wheel: Path) -> dict[int, tuple[str, str]]:
    """Return ``IMAGENET_NAMES`` from the keras-hub wheel (or an unpacked source tree)."""
    if wheel.is_dir():
        source = (wheel / MEMBER).read_text(encoding="utf-8")
    else:
        with zipfile.ZipFile(wheel) as zf:
            source = zf.read(MEMBER).decode("utf-8")
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "IMAGENET_NAMES"
        ):
            return ast.literal_eval(node.value)
    raise SystemExit(f"IMAGENET_NAMES not found in {MEMBER}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="keras-hub wheel or unpacked package root")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    names = read_names(args.wheel)
    # Sanity: exactly ImageNet-1k, indices 0..999, wnids unique, well formed and in sorted order.
    assert sorted(names) == list(range(1000)), "expected indices 0..999"
    wnids = [names[i][0] for i in range(1000)]
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids), "malformed wnid"
    assert wnids == sorted(set(wnids)), "wnids must be unique and ascending"

    # Same layout as Keras's own file: {"0": ["n01440764", "tench"], ...}.
    index = {str(i): [names[i][0], names[i][1]] for i in range(1000)}
    args.out.write_text(json.dumps(index) + "\n", encoding="utf-8")
    print(f"wrote {len(index)} classes to {args.out}")


if __name__ == "__main__":
    main()
