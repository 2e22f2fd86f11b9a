"""Everything that crosses the disk: data files (data; other tools' layouts in dataset_readers), our model files and the loader for every
format (model_files), the registries that choose a reader for a file by suffix and content
(readers), Keras HDF5 without TensorFlow (keras/), a user's PyTorch class or TorchScript (external),
ONNX export (onnx_export) and atomic output directories (output_dir)."""

from . import dataset_readers  # noqa: F401, E402  (registers the image folder, CIFAR and .npy readers with io.data's)
