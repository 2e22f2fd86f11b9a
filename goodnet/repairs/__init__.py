"""Repairs of a backdoored model: one base class (base), one registry (registry), the do-no-harm
guard (do_no_harm, a Repair wrapping a Repair), and one defense per file, each registering itself.
A repair fits and returns models; measuring them is goodnet.measure's job."""

# The order of these imports is the registry's order: the order of `--repair` choices, of
# `goodnet defend --help` and of compare's roster and tables (the lab's sweep first, the plain
# baseline next). Sorting them would reorder every one of those.
# ruff: noqa: I001
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import REPAIRS, build_repair, checked_repair, register_repair, repair_class, repair_names
from .lab_pruning import LabPruning
from .fine_pruning import FinePruning
from .fine_tuning import FineTuning
from .feature_shift import FeatureShiftTuning
from .perturbation_unlearning import PerturbationUnlearning
from .rnp import ReconstructiveNeuronPruning
from .adversarial_neuron_pruning import AdversarialNeuronPruning
from .channel_lipschitz import ChannelLipschitzPruning
from .attention_distillation import AttentionDistillation
from .sharpness_aware import SharpnessAwareTuning
from .implicit_unlearning import ImplicitUnlearning
from .neural_cleanse import NeuralCleanse
from .attack_aware import AttackAwarePruning
from .channels import ExplicitChannels
from .do_no_harm import Guarded

__all__ = [
    "AdversarialNeuronPruning",
    "AttackAwarePruning",
    "AttentionDistillation",
    "ChannelLipschitzPruning",
    "ImplicitUnlearning",
    "NeuralCleanse",
    "SharpnessAwareTuning",
    "ExplicitChannels",
    "FeatureShiftTuning",
    "FinePruning",
    "FineTuning",
    "LabPruning",
    "PerturbationUnlearning",
    "REPAIRS",
    "ReconstructiveNeuronPruning",
    "Repair",
    "RepairData",
    "RepairOutcome",
    "Guarded",
    "RepairedModel",
    "build_repair",
    "checked_repair",
    "register_repair",
    "repair_class",
    "repair_names",
    "setting",
]
