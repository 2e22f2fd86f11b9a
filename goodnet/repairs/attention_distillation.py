"""Neural Attention Distillation, NAD (Li et al., ICLR 2021), clean data only.

A teacher is B fine-tuned for a few epochs on the clean data; B is then fine-tuned again, as the
student, with the cross-entropy plus, at the output of each residual group, the distance between
its attention map and the teacher's. Fine-tuning alone only moves what the clean loss needs; the
attention term also pulls the student's feature maps, position by position, towards maps that do
not light up where the trigger's neurons fire.

As the authors' code (bboylyg/NAD: at.py, main.py, config.py) computes it: the attention map of a
feature map F (N x C x H x W) is the sum over channels of |F|^p (p = 2), divided by its L2 norm
over the H x W positions (+ 1e-6); a layer's loss is the mean squared difference of the student's
and the teacher's maps (mean over images and positions), times that layer's beta (500, 1000, 1000
from the shallowest distilled group to the deepest). The teacher runs in evaluation mode on the
student's batch. Student: 20 epochs of SGD with Nesterov momentum 0.9, weight decay 1e-4, batch 64,
rate 0.1 for 2 epochs then 0.01; augmentation: shifts of up to 4 pixels (a padded random crop),
horizontal flips and one small cut-out. Teacher: the same training without the attention term,
for 10 epochs (the authors fine-tune 5-10).

Which layers: the outputs of the residual groups, found on the traced graph (torch.fx), not by
name. A stage is everything that runs at one spatial size; its output is the last residual
addition at that size, followed through an activation that is its only use (a post-activation
ResNet's final ReLU; a pre-activation ResNet's groups end at the addition, before the next
BatchNorm). A stage without residual additions (a plain CNN) ends at its last map, i.e. the
activation its pooling layer or strided convolution receives. Maps of one position are left out.
The deepest len(betas) stages are distilled (WRN-16-1's three groups; a ResNet-18's last three).

Departures: the data are whatever the user gives (no dataset-specific normalisation); the
rate after 2 epochs is the rate / 10 (the code's 0.01 at its 0.1), so milder rates keep the step;
`flip` can turn flips off for data where a mirrored image means something else (text, signs);
`variant="goodnet"` trains teacher and student with goodnet's fine-tune schedule and augmentation
instead (with `--lr 0.05 --epochs 40 --weight-decay 5e-4`, a `nad` row then differs from a
`fine-tune --variant goodnet --lr 0.05 --epochs 40` row only by the distillation).
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from ..devices import to_model, training_layout
from ..errors import ModelError, TrainingDiverged
from ..lazy_torch import F, fx, nn, torch
from ..models.training import random_shift
from ..progress import progress as progress_bar
from ..pruning.graph_split import trace
from ..pruning.profiling import activation_kinds
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair
from .schedule import TuningSchedule

if TYPE_CHECKING:
    from ..models.with_maps import WithMaps

EPS = 1e-6  # the reference's guard against a zero norm
ACTIVATION_METHODS = {"relu", "relu_", "tanh", "sigmoid"}


def attention(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """NAD's attention map of a batch of feature maps (N x C x H x W): the sum over channels of
    |F|^p, divided by its L2 norm over the positions (+ 1e-6); N x 1 x H x W."""
    a = feature.abs().pow(p).sum(dim=1, keepdim=True)
    return a / (torch.linalg.vector_norm(a, dim=(2, 3), keepdim=True) + EPS)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """NAD's loss of one layer, before its beta: the mean over images and positions of the squared
    difference of the two attention maps."""
    return F.mse_loss(attention(student, p), attention(teacher, p))


@dataclass(frozen=True)
class StageOutput:
    """The output of one stage: a node of the model's traced graph, and its map's shape."""

    node: str
    module: str  # the innermost module the node runs in ("" for the model itself)
    shape: tuple[int, ...]  # (channels, height, width)

    def label(self) -> str:
        return f"{self.module or '<model>'}:{self.node} {'x'.join(map(str, self.shape))}"


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None and len(shape) == 4 else None


def _is_conv(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.Conv2d)
    return node.op == "call_function" and node.target is F.conv2d


def _is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    kinds, functions = activation_kinds()
    if node.op == "call_module":
        return isinstance(modules[node.target], kinds)
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


def _is_residual_add(node: fx.Node) -> bool:
    """An addition of two feature maps of the node's own shape (not a bias or a constant)."""
    if not (
        (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add))
        or (node.op == "call_method" and node.target in ("add", "add_", "__add__", "__iadd__"))
    ):
        return False
    maps = [a for a in node.args[:2] if isinstance(a, fx.Node) and _shape(a) is not None]
    return len(maps) == 2 and all(_shape(a) == _shape(node) for a in maps)


def _rearranges(node: fx.Node) -> bool:
    """An op after which the axes may no longer be N x C x H x W."""
    names = ("permute", "transpose", "view", "reshape", "flatten", "movedim", "swapaxes", "unflatten")
    if node.op == "call_method":
        return node.target in names
    if node.op == "call_function":
        return getattr(node.target, "__name__", "") in names
    return False


def _traced(model: nn.Module, sample: torch.Tensor) -> fx.GraphModule:
    from torch.fx.passes.shape_prop import ShapeProp

    gm = trace(model)
    was_training = model.training
    try:
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(sample)
    except Exception as exc:  # shape propagation runs the model's own code
        raise ModelError(f"nad could not run the traced {type(model).__name__} ({exc})") from None
    finally:
        model.train(was_training)
    return gm


def stage_outputs(model: nn.Module, sample: torch.Tensor) -> list[StageOutput]:
    """The output of every stage of `model` (maps of more than one position, from the first
    convolution on), shallowest first, found on its torch.fx graph run on `sample`."""
    gm = _traced(model, sample)
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    first_conv = next((i for i, n in enumerate(nodes) if _is_conv(n, modules)), None)
    if first_conv is None:
        return []
    stages: dict[tuple[int, int], list[fx.Node]] = {}  # spatial size -> its nodes, in run order
    rearranged: set[fx.Node] = set()  # N x C x H x W no more (e.g. permuted to N x H x W x C for a head)
    for node in nodes[first_conv:]:
        if _rearranges(node) or any(a in rearranged for a in node.all_input_nodes):
            rearranged.add(node)
            continue
        shape = _shape(node)
        if shape is not None and node.op != "output":
            stages.setdefault(shape[2:], []).append(node)
    found = []
    for size, members in stages.items():
        if size[0] * size[1] <= 1:
            continue
        adds = [n for n in members if _is_residual_add(n)]
        end = adds[-1] if adds else members[-1]
        while adds and len(end.users) == 1:  # a ResNet's ReLU after the addition belongs to the group
            (user,) = end.users
            if not (_is_activation(user, modules) and _shape(user) == _shape(end)):
                break
            end = user
        stack = list(end.meta.get("nn_module_stack", {}))
        module = end.target if end.op == "call_module" else (stack[-1] if stack else "")
        found.append(StageOutput(end.name, module, _shape(end)[1:]))
    order = {n.name: i for i, n in enumerate(nodes)}
    return sorted(found, key=lambda s: order[s.node])


def tapped(model: nn.Module, stages: list[StageOutput]) -> fx.GraphModule:
    """`model` traced, returning (its output, the stage outputs' maps); it shares `model`'s
    modules and parameters, so training it trains `model`."""
    gm = trace(model)
    by_name = {n.name: n for n in gm.graph.nodes}
    missing = [s.node for s in stages if s.node not in by_name]
    if missing:
        raise ModelError(f"nad: the traced graph changed between two traces (no node {missing[0]})")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = ((out.args[0], tuple(by_name[s.node] for s in stages)),)
    gm.recompile()
    return gm


def reference_augment(x: torch.Tensor, generator: torch.Generator, low: float, flip: bool) -> torch.Tensor:
    """The authors' training augmentation on a batch: a random crop of the image padded by 4
    pixels (a shift of up to 4, filled with the bottom of the range), a horizontal flip with
    probability 1/2 (`flip`), and one cut-out: a hole of side 3 // 2 * 2 = 2 at a random centre,
    clipped at the borders, set to the bottom of the range."""
    x = random_shift(x, generator, pixels=4, fill=low)
    n, _c, h, w = x.shape
    if flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mirrored[:, None, None, None], x.flip(3), x)
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    r, q = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    hole = (
        (r >= (cy - 1).clamp(0, h)[:, None, None])
        & (r < (cy + 1).clamp(0, h)[:, None, None])
        & (q >= (cx - 1).clamp(0, w)[:, None, None])
        & (q < (cx + 1).clamp(0, w)[:, None, None])
    )
    return torch.where(hole[:, None], torch.tensor(low, dtype=x.dtype), x)


def reference_rate(lr: float, epoch: int) -> float:
    """The authors' step schedule: the rate for the first 2 epochs, a tenth of it after."""
    return lr if epoch < 2 else lr / 10


@register_repair
@dataclass(frozen=True)
class AttentionDistillation(TuningSchedule):
    name = "nad"
    relative_cost = 1.3
    description = (
        "Neural Attention Distillation (Li et al. 2021): fine-tune a teacher on clean data, then "
        "fine-tune B to match the teacher's attention maps at the outputs of its residual groups"
    )

    epochs: int = setting(20, "the student's training epochs", low=1)
    lr: float = setting(
        0.1, "the student's and teacher's rate (SGD; a tenth of it after 2 epochs)", low=0.0, low_open=True
    )
    weight_decay: float = setting(1e-4, "SGD weight decay", low=0.0)
    betas: tuple[float, ...] = setting(
        (500.0, 1000.0, 1000.0),
        "attention-loss weights, shallowest to deepest: the deepest stages get the last ones, one stage each",
        low=0.0,
        nonempty=True,
    )
    power: float = setting(2.0, "attention map: sum over channels of |activation|^power", low=0.0, low_open=True)
    teacher_epochs: int = setting(10, "training epochs of the teacher (its rate: the student's)", low=1)
    flip: bool = setting(True, "augment with horizontal flips (off for data a mirror changes)")
    variant: Literal["reference", "goodnet"] = setting(
        "reference",
        "reference: the authors' SGD step schedule and augmentation; goodnet: teacher and "
        "student trained with goodnet's fine-tune schedule and augmentation",
    )

    BATCH = 64
    NESTEROV = True

    def milder(self) -> list[Repair]:
        """The student's (and teacher's) rate, then also the student's epochs, lower."""
        return [self.slower(k, e) for k, e in self.RATE_STEPS]

    def check_model(self, model: nn.Module) -> None:
        self.refuse_torchscript(
            model,
            "it taps the feature maps it distils out of the model's torch.fx graph, which TorchScript's "
            "compiled forward cannot give",
        )
        if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            raise ModelError(
                "nad distils the attention of convolutional feature maps, and the model has no Conv2d layer"
            )
        trace(model)  # refuses, in one line, a model torch.fx cannot trace

    def _train(self, net: WithMaps, x, y, value_range, epochs: int, progress: str | None, distil=None):
        """The authors' loop: SGD (Nesterov) with the step schedule and their augmentation; `distil`
        (student maps -> loss) is added to the cross-entropy."""
        generator = torch.Generator().manual_seed(self.seed)
        xs, ys = torch.from_numpy(x), torch.from_numpy(y)
        optimizer = torch.optim.SGD(
            net.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, nesterov=self.NESTEROV
        )
        net.train()
        for epoch in progress_bar(range(epochs), progress):
            for group in optimizer.param_groups:
                group["lr"] = reference_rate(self.lr, epoch)
            order = torch.randperm(len(xs), generator=generator)
            for start in range(0, len(xs), self.BATCH):
                idx = order[start : start + self.BATCH]
                batch = reference_augment(xs[idx], generator, value_range[0], self.flip)
                batch, labels = to_model(batch, net), to_model(ys[idx], net)
                loss = F.cross_entropy(net(batch), labels)
                if distil is not None:
                    loss = loss + distil(net, batch, labels)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"nad diverged: the loss became {loss.item()} in epoch {epoch + 1} (rate {self.lr:g})"
                    )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        if not all(torch.isfinite(p).all() for p in net.parameters()):
            raise TrainingDiverged(f"nad diverged: weights are no longer finite (rate {self.lr:g})")
        return net.eval()

    def _run(self, net: WithMaps, x, y, value_range, epochs: int, progress: str | None, distil=None):
        if self.variant == "reference":
            return self._train(net, x, y, value_range, epochs, progress, distil)
        return TuningSchedule.tune(
            replace(self, epochs=epochs),
            net,
            x,
            y,
            value_range,
            progress,
            **({"penalty": distil} if distil is not None else {}),
        )

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        from ..models.with_maps import WithMaps

        clean = data.clean_valid
        stages = stage_outputs(model, to_model(clean.x[:2], model))
        if not stages:
            raise ModelError("nad found no feature map of more than one position after a convolution")
        stages = stages[-len(self.betas) :]
        betas = self.betas[-len(stages) :]  # a model with fewer stages gets the deepest stages' weights
        torch.manual_seed(self.seed)  # dropout in train mode draws from the global generator
        teacher = WithMaps(tapped(copy.deepcopy(model), stages))
        with training_layout(teacher, like=model):
            self._run(
                teacher,
                clean.x,
                clean.y,
                data.value_range,
                self.teacher_epochs,
                "training the teacher" if progress else None,
            )
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        student_model = copy.deepcopy(model)
        student = WithMaps(tapped(student_model, stages))
        last: dict[str, float] = {}

        def distil(net: WithMaps, x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                teacher(x)
            losses = [distillation_loss(s, t, self.power) for s, t in zip(net.maps, teacher.maps)]
            last.update({st.label(): float(v.detach()) for st, v in zip(stages, losses)})
            return sum(b * v for b, v in zip(betas, losses))

        torch.manual_seed(self.seed)
        with training_layout(teacher, like=model), training_layout(student, like=model):
            self._run(
                student,
                clean.x,
                clean.y,
                data.value_range,
                self.epochs,
                "attention distillation" if progress else None,
                distil,
            )
        student_model.eval()
        return RepairOutcome(
            [RepairedModel(self.name, student_model, {}, weights_changed=True)],
            {
                "fitted_on": len(clean),
                "distilled": [s.label() for s in stages],
                "betas": list(betas),
                "last_batch_distance": {k: round(v, 8) for k, v in last.items()},
            },
        )
