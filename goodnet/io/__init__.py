"""Everything that crosses the disk: data files (data), our model files and the loader for every
format (model_files), Keras HDF5 without TensorFlow (keras/), a user's PyTorch class or TorchScript
(external), ONNX export (onnx_export) and atomic output directories (output_dir)."""
