"""The ported EfficientNet-Lite weights against the reference PyTorch implementation."""

from __future__ import annotations

import numpy as np
import pytest

from kerascope.zoo import registry
from kerascope.zoo.efficientnet_lite import INPUT_MEAN, INPUT_STD, round_filters, stage_plan
from kerascope.zoo.weights import package_file

from .conftest import load_rgb

VARIANTS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _reference_logits(variant: str, images: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    net = reference.EfficientNet.from_name(variant.replace("_", "-"))
    state = torch.load(package_file(registry.get(variant)), map_location="cpu")
    net.load_state_dict(state)
    net.eval()
    x = (images.astype(np.float32) - INPUT_MEAN) / INPUT_STD
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.slow
@pytest.mark.backends
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_reference_pytorch(variant, photo_paths, request):
    import keras

    from kerascope.zoo.models import build

    spec = registry.get(variant)
    # Lite0: the session's build (load_model is build(spec) with labels), not one more.
    lite0 = variant == "efficientnet_lite0"
    model = request.getfixturevalue("lite0").model if lite0 else build(spec)
    logits_model = keras.Model(model.input, model.get_layer("logits").output)
    images = np.stack([load_rgb(p, spec.input_size) for p in photo_paths.values()])
    ours = keras.ops.convert_to_numpy(logits_model(images.astype("float32"), training=False))
    theirs = _reference_logits(variant, images)
    assert ours.shape == theirs.shape == (len(images), 1000)
    assert np.abs(ours - theirs).max() <= 1e-3
    assert (ours.argmax(1) == theirs.argmax(1)).all()


def test_parameter_counts_match_spec():
    import keras

    from kerascope.zoo.efficientnet_lite import build_efficientnet_lite

    for variant in VARIANTS:
        # Shapes only: in a StatelessScope Keras defers the values, which a count never reads.
        with keras.StatelessScope(initialize_variables=False):
            model = build_efficientnet_lite(variant)
        assert model.count_params() == registry.get(variant).params
    keras.backend.clear_session()  # the deferred variables are listed until then


def test_width_scaling_rounds_like_the_tf_builder():
    assert round_filters(32, 1.0) == 32
    assert round_filters(40, 1.1) == 48  # 44 rounds up to a multiple of 8
    assert round_filters(320, 1.1) == 352
    plan = stage_plan(1.1, 1.2)
    assert plan[0][0] == 1 and plan[-1][0] == 1  # first and last stage not depth-scaled
    assert [p[0] for p in plan[1:-1]] == [3, 3, 4, 4, 5]


def test_ported_weights_are_cached_once(tmp_path, monkeypatch):
    from kerascope.zoo import weights

    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path))
    spec = registry.get("efficientnet_lite0")
    assert not weights.is_cached(spec) and weights.works_offline(spec)
    first = weights.resolve(spec)
    stamp = first.stat().st_mtime_ns
    assert first == tmp_path / spec.weights.filename
    assert weights.resolve(spec).stat().st_mtime_ns == stamp  # second call reuses the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no temp leftovers
        spec.weights.filename,
        weights.checksum_file(first).name,  # size + SHA-256, checked on every load
    ]
