"""Turn the demo's BadNet into a Keras full-model file (`model.save`, HDF5), using real Keras.

Shows the round trip: goodnet writes the weights in Keras's layout (`goodnet export --to keras`),
Keras 3 (PyTorch backend; no TensorFlow) builds the same network and saves it as a full model, and
goodnet reads that file back. Needs `pip install keras` and a finished `goodnet demo`.

    python examples/keras_full_model.py WEIGHTS.h5 OUT.h5
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402

L = keras.layers


def demo_cnn(width: int = 16) -> keras.Model:
    """goodnet's SmallCNN in Keras: inputs scaled to [0, 1] (goodnet: --input-scale 255)."""
    return keras.Sequential(
        [
            L.Input((28, 28, 1)),
            L.Conv2D(width, 3, padding="same", activation="relu", name="conv_1"),
            L.MaxPooling2D(2, name="pool_1"),
            L.Conv2D(2 * width, 3, padding="same", activation="relu", name="conv_2"),
            L.MaxPooling2D(2, name="pool_2"),
            L.Conv2D(4 * width, 3, padding="same", activation="relu", name="conv_3"),
            L.MaxPooling2D(2, name="pool_3"),
            L.Flatten(name="flatten"),
            L.Dropout(0.3, name="dropout"),
            L.Dense(128, activation="relu", name="fc_1"),
            L.Dense(10, activation="softmax", name="output"),
        ]
    )


if __name__ == "__main__":
    weights, out = sys.argv[1:3]
    model = demo_cnn()
    model.load_weights(weights)
    model.save(out)
    print(f"wrote {out}")
