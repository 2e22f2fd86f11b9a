"""Repairs of a backdoored model: one base class (base), one registry (registry), one runner
(runner), and one defense per file, each registering itself."""

from .base import RepairData, RepairedModel, RepairOutcome, Repair, setting
from .registry import REPAIRS, build_repair, register_repair, repair_class, repair_names
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
from .runner import RepairResult, run_repair

__all__ = ["AdversarialNeuronPruning", "AttackAwarePruning", "AttentionDistillation", "ChannelLipschitzPruning",
           "ImplicitUnlearning", "NeuralCleanse", "SharpnessAwareTuning", "ExplicitChannels", "FeatureShiftTuning", "FinePruning", "FineTuning", "LabPruning",
           "PerturbationUnlearning", "REPAIRS", "ReconstructiveNeuronPruning", "Repair", "RepairData", "RepairOutcome", "RepairResult", "RepairedModel",
           "build_repair", "register_repair", "repair_class", "repair_names", "run_repair", "setting"]
