"""Measuring a repair: `run_repair` fits a repair and returns a `Measurement`, the frozen record
of every number about B, each B' and each G; `scores` defines each number once."""

from .measurement import Measurement, ModelMeasurement, RunInputs, ThresholdChoice, measure
from .runner import run_repair
from .sanity import SanityCheck

__all__ = ["Measurement", "ModelMeasurement", "RunInputs", "SanityCheck", "ThresholdChoice", "measure", "run_repair"]
