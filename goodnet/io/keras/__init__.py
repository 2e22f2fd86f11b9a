"""Keras interop: read model_config graphs and HDF5 weights, build the equivalent PyTorch module, write HDF5 back."""
