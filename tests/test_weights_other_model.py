"""A weights file that holds another model's weights is named by the model it holds.

MobileNet at alpha 0.5 saved under the alpha-1.0 file name (Keras's ``mobilenet_1_0_224_tf.h5``)
said only "the file belongs to another model". Its layers' shapes (read from the HDF5 layout,
no values, no model built) give its parameter count, and that count names it. The files are
made as Keras publishes them: the application built with ``weights=None`` and written by Keras's
own legacy HDF5 writer under Keras's file name.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from kerascope.cli import main
from kerascope.zoo import registry
from kerascope.zoo.weight_files import WIDTH_VARIANTS, likely_models, other_model
from kerascope.zoo.weights import WeightsError, cached_file, resolve
from tests.test_models_cache import legacy_file


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASCOPE_HOME", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache"


def _shapes_only(builder, **kwargs):
    import keras

    with keras.StatelessScope(initialize_variables=False):  # shapes, no values drawn
        return builder(weights=None, **kwargs)


def write_width_variant(path, alpha: float, include_top: bool = True) -> int:
    """Keras's MobileNet at ``alpha`` written as Keras writes its files (zeros); its count."""
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    model = _shapes_only(keras.applications.MobileNet, alpha=alpha, include_top=include_top,
                         input_shape=(224, 224, 3))  # fmt: skip
    for variable in model.weights:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    count = sum(int(np.prod(v.shape)) for v in model.weights)
    keras.backend.clear_session()
    return count


@pytest.fixture(scope="module")
def half_width(tmp_path_factory):
    """MobileNet alpha 0.5 with top, in Keras's layout (written once for the module)."""
    path = tmp_path_factory.mktemp("alpha") / "mobilenet_1_0_224_tf.h5"
    assert write_width_variant(path, 0.5) == 1_342_536
    return path


def test_a_cached_half_width_mobilenet_is_named_when_loading(cache, half_width, skimage_data,
                                                             capsys):  # fmt: skip
    path = cached_file(registry.get("mobilenet"))
    assert path.name == "mobilenet_1_0_224_tf.h5"
    path.write_bytes(half_width.read_bytes())
    code = main(["classify", "--model", "mobilenet", str(skimage_data / "chelsea.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(path) in err
    assert ("it holds the weights of 'mobilenet' at alpha 0.5 (with top): 1,342,536 parameters "
            "in 55 layers, where 'mobilenet' has 4,253,864") in err  # fmt: skip
    assert "mobilenet_1_0_224_tf.h5 (download: https://" in err


def test_a_given_half_width_file_is_named_too(half_width):
    with pytest.raises(WeightsError) as caught:
        resolve(registry.get("mobilenet"), half_width)
    message = str(caught.value)
    assert f"cannot load weights '{half_width}' into 'mobilenet'" in message
    assert "'mobilenet' at alpha 0.5 (with top)" in message and "\n" not in message


def test_verify_names_the_model_the_file_holds(cache, half_width, capsys):
    cached_file(registry.get("mobilenet")).write_bytes(half_width.read_bytes())
    assert main(["models", "verify", "mobilenet", "--format", "json"]) == 1
    rows = {r["kind"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["with top"]["status"] == "wrong size"
    assert "holds the weights of 'mobilenet' at alpha 0.5 (with top)" in rows["with top"]["detail"]


def test_another_zoo_models_file_is_named_and_an_unknown_one_counted(cache):
    spec = registry.get("mobilenet_v2")
    legacy_file(cached_file(spec), registry.get("mobilenet_v3_small").params, layers=3)
    with pytest.raises(
        WeightsError,
        match=r"holds the weights of 'mobilenet_v3_small' "
        r"\(with top\): 2,554,968 parameters in 3 layers",
    ):
        resolve(spec)
    legacy_file(cached_file(spec), 1_000_000, layers=3)  # nobody's
    with pytest.raises(
        WeightsError,
        match=r"holds 1,000,000 parameters in 3 layers, where "
        r"'mobilenet_v2' has 3,538,984: another model's",
    ):
        resolve(spec)  # fmt: skip


def test_a_file_that_fits_is_left_to_loading(cache):
    spec = registry.get("mobilenet_v2")
    legacy_file(cached_file(spec), spec.params, layers=3)
    assert resolve(spec) == cached_file(spec)
    assert other_model(cached_file(spec), spec.name, {spec.params}) is None


@pytest.mark.parametrize("alpha", [0.25, 0.75])
def test_width_table_is_what_keras_builds(tmp_path, alpha):
    top = write_width_variant(tmp_path / "top.h5", alpha)
    notop = write_width_variant(tmp_path / "notop.h5", alpha, include_top=False)
    assert WIDTH_VARIANTS["mobilenet", f"alpha {alpha}"] == (top, notop)
    assert likely_models(notop) == [f"'mobilenet' at alpha {alpha} (without top)"]


@pytest.mark.slow
def test_every_width_in_the_table_is_what_keras_builds():
    import keras

    builders = {"mobilenet": keras.applications.MobileNet,
                "mobilenet_v2": keras.applications.MobileNetV2,
                "mobilenet_v3_small": keras.applications.MobileNetV3Small,
                "mobilenet_v3_large": keras.applications.MobileNetV3Large}  # fmt: skip
    for (name, variant), counts in WIDTH_VARIANTS.items():
        kwargs = {"minimalistic": True} if variant == "minimalistic" else {
            "alpha": float(variant.split()[1])}  # fmt: skip
        built = tuple(
            sum(int(np.prod(v.shape)) for v in _shapes_only(
                builders[name], include_top=top, input_shape=(224, 224, 3), **kwargs).weights)
            for top in (True, False)
        )  # fmt: skip
        assert built == counts, (name, variant)
        keras.backend.clear_session()
