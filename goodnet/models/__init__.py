"""Models: the classifiers goodnet builds and prunes (one family per file, in a registry), the
GoodNet classes with their one labelling rule, and training."""

from .base import FlattenNHWC, ImageClassifier
from .deepid import DeepID
from .goodnet import GoodNet, PrunedGoodNet, TwoModelGoodNet, build_goodnet, goodnet_labels
from .keras_graph import KerasModel
from .registry import ARCHITECTURES, build_model, register_architecture
from .resnet import ResNet8
from .small_cnn import SmallCNN

__all__ = [
    "ARCHITECTURES",
    "DeepID",
    "FlattenNHWC",
    "GoodNet",
    "ImageClassifier",
    "KerasModel",
    "PrunedGoodNet",
    "ResNet8",
    "SmallCNN",
    "TwoModelGoodNet",
    "build_goodnet",
    "build_model",
    "goodnet_labels",
    "register_architecture",
]
