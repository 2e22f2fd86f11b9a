"""goodnet: repair backdoored neural networks by channel pruning, and prove the repair with numbers."""

from .architectures import ARCHITECTURES, DeepID, ImageClassifier, SmallCNN, build_model
from .data import ImageSet, load_images, save_images
from .defense import DefenseData, DefenseResult, DefenseSettings, run_defense
from .errors import GoodnetError
from .goodnet_model import GoodNet, PrunedGoodNet
from .graph_split import CutSplit, split_at_conv
from .model_io import load_model, save_model
from .pruning import pruned_copy
from .sweep import naive_sweep, run_trunk, sweep

__version__ = "0.1.0"

__all__ = ["ARCHITECTURES", "CutSplit", "DeepID", "DefenseData", "DefenseResult", "DefenseSettings",
           "GoodNet", "GoodnetError", "ImageClassifier", "ImageSet", "PrunedGoodNet", "SmallCNN",
           "build_model", "load_images", "load_model", "naive_sweep", "pruned_copy", "run_defense",
           "run_trunk", "save_images", "save_model", "split_at_conv", "sweep"]
