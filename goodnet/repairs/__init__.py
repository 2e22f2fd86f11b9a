"""Repairs of a backdoored model: one base class (base), one registry (registry), the do-no-harm
guard (do_no_harm, a Repair wrapping a Repair), and one defense per file, each registering itself.
A repair fits and returns models; measuring them is goodnet.measure's job."""

from .adversarial_neuron_pruning import AdversarialNeuronPruning
from .attack_aware import AttackAwarePruning
from .attention_distillation import AttentionDistillation
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .channel_lipschitz import ChannelLipschitzPruning
from .channels import ExplicitChannels
from .do_no_harm import Guarded
from .feature_shift import FeatureShiftTuning
from .fine_pruning import FinePruning
from .fine_tuning import FineTuning
from .implicit_unlearning import ImplicitUnlearning
from .lab_pruning import LabPruning
from .neural_cleanse import NeuralCleanse
from .perturbation_unlearning import PerturbationUnlearning
from .registry import REPAIRS, build_repair, checked_repair, register_repair, repair_class, repair_names
from .rnp import ReconstructiveNeuronPruning
from .sharpness_aware import SharpnessAwareTuning

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
