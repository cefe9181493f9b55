"""Training when the decoded-image cache cannot be made ($KERASCOPE_HOME a file, a full disk):
it trains, decoding every epoch, and says so once."""

from __future__ import annotations

from kerascope.training import train
from kerascope.zoo.fast_init import numpy_init

from .test_train import make_shapes


def test_unusable_cache_folder_is_said_once_and_training_goes_on(tmp_path, monkeypatch, capfd):
    """The training and the validation images each have a cache: the line came twice."""
    data = make_shapes(tmp_path / "data", n=6, size=32)
    home = tmp_path / "home"
    home.write_text("a file where a folder should be")
    monkeypatch.setenv("KERASCOPE_HOME", str(home))
    with numpy_init():
        run = train(data, recipe="lenet", output=tmp_path / "run", epochs=1, batch_size=8,
                    image_size=32, engine="keras", progress=False)  # fmt: skip
    err = capfd.readouterr().err
    said = [line for line in err.splitlines() if "no decoded-image cache" in line]
    assert said == [f"kerascope: no decoded-image cache in '{home / 'datasets'}' "
                    "(Not a directory); decoding the images every epoch instead"], err  # fmt: skip
    assert run.model_path.is_file() and len(run.history) == 1
