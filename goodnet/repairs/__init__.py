"""Repairs of a backdoored model, one class each, behind one base class (see base.py)."""

from .attack_aware import AttackAwarePruning
from .base import Repair, RepairData, RepairOutcome
from .explicit import ExplicitChannels
from .fine_prune import FinePruning
from .prune import LabPruning
from .rnp import ReconstructiveNeuronPruning

REPAIRS: dict[str, type[Repair]] = {cls.name: cls for cls in (LabPruning, FinePruning, ReconstructiveNeuronPruning,
                                                              AttackAwarePruning)}

__all__ = ["AttackAwarePruning", "ExplicitChannels", "FinePruning", "LabPruning", "REPAIRS", "ReconstructiveNeuronPruning", "Repair",
           "RepairData", "RepairOutcome"]
