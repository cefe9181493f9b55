"""Work-arounds in Keras's own saving and loading, in one place: every load and save of
weights or ``.keras`` files (the zoo's, a run's checkpoints and model) goes through them."""

from __future__ import annotations


def fast_keras_saving() -> None:
    """Make Keras's weight saving and loading remember which attributes it skips.

    Why: Keras 3 (``saving_lib.get_attr_skipset``, up to at least 3.15) stores that set under
    ``saving_attr_skipset_<type>`` but looks it up under ``saving_attr_skiplist_<type>``, so
    it builds a reference ``Layer()`` and lists its attributes again for every layer saved or
    loaded: ~40 % of the CPU time of each ``.weights.h5`` and ``.keras`` written or read
    (0.73 -> 0.45 s per epoch's best-weights file of a two-backbone ensemble). The set it
    computes is the same each time, so it is stored once under the key it is read by. Keras's
    global state is per thread and ``clear_session`` empties it: called again before saving.
    """
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    for kind in ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss"):
        key = f"saving_attr_skiplist_{kind}"
        if global_state.get_global_attribute(key) is None:
            global_state.set_global_attribute(key, saving_lib.get_attr_skipset(kind))
