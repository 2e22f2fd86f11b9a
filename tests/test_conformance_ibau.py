"""i-BAU conformance: goodnet's `i-bau` against the authors' reference (YiZeng623/I-BAU defense.py,
hypergrad.py). Each defining computation is pinned on a tiny case, computed by hand or by an
independent few-line reimplementation written here."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from goodnet.io.data import ImageSet
from goodnet.repairs import RepairData
from goodnet.repairs.implicit_unlearning import (
    ImplicitUnlearning,
    descent_map,
    fixed_point_hypergradient,
    universal_ascent,
)

# ---------------------------------------------------------------- the fixed-point hypergradient


def test_hypergradient_of_a_quadratic_is_the_truncated_neumann_series_and_converges_to_the_exact_derivative():
    """L_in(d, t) = 1/2 d'Ad - d'Bt (so Phi = d - a(Ad - Bt), dPhi/dd = I - aA, dPhi/dt = aB),
    L_out = c'd + 1/2 |t|^2. K iterations give t + aB' sum_{j<K} (I - aA)^j c; many iterations give
    the exact implicit derivative of L_out(d*(t), t) with d* = A^-1 B t: t + B' A^-1 c."""
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.double))[0]
    A = q @ torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.double)) @ q.T
    B = torch.randn(3, 2, generator=g, dtype=torch.double)
    c = torch.randn(3, generator=g, dtype=torch.double)
    theta = torch.randn(2, generator=g, dtype=torch.double, requires_grad=True)
    a = 0.2
    delta = torch.linalg.solve(A, B @ theta.detach())  # the inner solution

    def outer(d):
        return c @ d + 0.5 * theta.pow(2).sum()

    def phi(d):
        inner = 0.5 * d @ A @ d - d @ B @ theta
        (grad,) = torch.autograd.grad(inner, d, create_graph=True)
        return d - a * grad

    for K in (1, 2, 5):
        _, hyper, plain = fixed_point_hypergradient([theta], delta, outer, phi, K)
        series = sum(torch.linalg.matrix_power(torch.eye(3, dtype=torch.double) - a * A, j) @ c for j in range(K))
        torch.testing.assert_close(hyper[0], theta.detach() + a * B.T @ series)
        torch.testing.assert_close(plain[0], theta.detach())
    _, hyper, _ = fixed_point_hypergradient([theta], delta, outer, phi, 2000)
    torch.testing.assert_close(hyper[0], theta.detach() + B.T @ torch.linalg.solve(A, c))
    _, zero, _ = fixed_point_hypergradient([theta], delta, outer, phi, 0)
    torch.testing.assert_close(zero[0], theta.detach())  # K = 0: the plain gradient


def test_hypergradient_on_a_tiny_network_equals_explicit_jacobians_of_the_reference_inner_map():
    """The reference's Phi(d, t) = d - a grad_d(-CE(f_t(x0 + d), y0) + p |d|^2) on a fixed batch and
    L_out = CE(f_t(x + m d), y) on another: Jacobians built with torch.func (dPhi/dd, dPhi/dt,
    dL_out/dd, dL_out/dt as explicit matrices), then v_K = sum_{j<K} (J')^j g_d and
    g_t + (dPhi/dt)' v_K."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    x0, y0 = torch.randn(5, 1, 2, 2, dtype=torch.double), torch.randint(0, 3, (5,))
    x, y = torch.randn(4, 1, 2, 2, dtype=torch.double), torch.randint(0, 3, (4,))
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.double).view(4, 1, 1, 1)
    delta = 0.4 * torch.randn(1, 1, 2, 2, dtype=torch.double)
    a, p, K = 0.3, 0.05, 4
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    sizes = [q.numel() for q in params]

    def unflat(t):
        return {n: c.view_as(q) for n, c, q in zip(names, torch.split(t, sizes), params)}

    def l_in(t, d):
        logits = torch.func.functional_call(model, unflat(t), (x0 + d.view_as(delta),))
        return -F.cross_entropy(logits, y0) + p * d.pow(2).sum()

    def big_phi(t, d):
        return d - a * torch.func.grad(l_in, argnums=1)(t, d)

    def l_out(t, d):
        return F.cross_entropy(torch.func.functional_call(model, unflat(t), (x + mask * d.view_as(delta),)), y)

    t0 = torch.cat([q.detach().flatten() for q in params])
    d0 = delta.flatten()
    J = torch.func.jacrev(big_phi, argnums=1)(t0, d0)  # dPhi/dd
    M = torch.func.jacrev(big_phi, argnums=0)(t0, d0)  # dPhi/dt
    g_t, g_d = torch.func.grad(l_out, argnums=(0, 1))(t0, d0)
    v = torch.zeros_like(d0)
    for _ in range(K):
        v = J.T @ v + g_d
    expected = g_t + M.T @ v

    phi = descent_map(model, x0, y0, a, p)
    _, hyper, plain = fixed_point_hypergradient(
        params, delta, lambda d: F.cross_entropy(model(x + mask * d), y), phi, K
    )
    got = torch.cat([h.flatten() for h in hyper])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.cat([q.flatten() for q in plain]), g_t)
    assert (got - g_t).norm() > 1e-3 * g_t.norm()  # the implicit term is really there


# ---------------------------------------------------------------- the reference's inner problem


def _linear(seed=0, classes=3, features=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes)).double()


def _ce_grad_wrt_input(model, x, labels):
    """d mean CE / d delta for logits = W(x + delta) + b, by hand: mean over the batch of W'(softmax - onehot)."""
    W, b = model[1].weight.detach(), model[1].bias.detach()
    probs = torch.softmax(x.flatten(1) @ W.T + b, 1)
    return ((probs - F.one_hot(labels, W.shape[0]).double()) @ W).mean(0)


def test_inner_map_is_one_gradient_descent_step_on_negative_loss_plus_penalty():
    """Phi(d) = d - a * (-dCE/dd + 2 p d), CE on the given images with their true labels."""
    model = _linear()
    x, y = torch.randn(6, 1, 2, 2, dtype=torch.double), torch.randint(0, 3, (6,))
    delta = (0.3 * torch.randn(1, 1, 2, 2, dtype=torch.double)).requires_grad_(True)
    a, p = 0.1, 0.001
    got = descent_map(model, x, y, a, p)(delta)
    expected = delta.detach().flatten() - a * (
        -_ce_grad_wrt_input(model, x + delta.detach(), y) + 2 * p * delta.detach().flatten()
    )
    torch.testing.assert_close(got.detach().flatten(), expected)


def test_reference_perturbation_is_one_sgd_step_per_batch_from_zero_on_the_models_own_labels():
    """d_0 = 0; for each batch in order: d <- d - r * (-dCE(f(x + d), argmax f(x))/dd + 2 p d)."""
    model = _linear(1)
    batches = [(torch.randn(5, 1, 2, 2, dtype=torch.double), torch.randint(0, 3, (5,))) for _ in range(3)]
    r, p = 10.0, 0.001
    d = torch.zeros(4, dtype=torch.double)
    for x, _ in batches:
        own = (x.flatten(1) @ model[1].weight.detach().T + model[1].bias.detach()).argmax(1)
        d = d - r * (-_ce_grad_wrt_input(model, x + d.view(1, 1, 2, 2), own) + 2 * p * d)
    got = universal_ascent(model, batches, r, p)
    assert got.shape == (1, 1, 2, 2)  # one perturbation shared by every image
    torch.testing.assert_close(got.flatten(), d)


# ---------------------------------------------------------------- the whole loop


def _reference_loop(
    model,
    xs,
    ys,
    order,
    carry_draws,
    rounds=5,
    K=5,
    lr=1e-3,
    bs=100,
    share=0.01,
    pert_lr=10.0,
    penalty=1e-3,
    inner_rate=0.1,
):
    """defense.py's loop, rewritten here in a few lines (hypergrad.fixed_point inlined), on images in
    [0, 1]: fixed batches; each round a fresh perturbation by one SGD step per batch, then one Adam
    step per batch on the hypergradient, the inner map on the first batch, int(share * n) images of
    each batch carrying the perturbation (which ones: `carry_draws`, the same random draws)."""
    model = model.eval()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    batches = [(xs[order[s : s + bs]], ys[order[s : s + bs]]) for s in range(0, len(xs), bs)]
    x0, y0 = batches[0]
    draws = iter(carry_draws)
    for _ in range(rounds):
        pert = torch.zeros_like(xs[:1], requires_grad=True)
        pert_opt = torch.optim.SGD([pert], lr=pert_lr)
        for images, _ in batches:
            own = torch.argmax(model(images), 1)
            loss = -F.cross_entropy(model(images + pert), own) + penalty * torch.norm(pert) ** 2
            pert_opt.zero_grad()
            loss.backward()
            pert_opt.step()
        for images, labels in batches:
            opt.zero_grad()
            w = pert.detach().requires_grad_(True)
            patch = torch.zeros_like(images)
            idx = next(draws)[: int(images.shape[0] * share)]
            patch[idx] = 1.0
            o_loss = F.cross_entropy(model(images + patch * w), labels)
            g_t = torch.autograd.grad(o_loss, params, retain_graph=True)
            g_w = torch.autograd.grad(o_loss, w, allow_unused=True)[0]
            g_w = torch.zeros_like(w) if g_w is None else g_w
            inner = -F.cross_entropy(model(x0 + w), y0) + penalty * torch.norm(w) ** 2
            mapped = w - inner_rate * torch.autograd.grad(inner, w, create_graph=True)[0]
            v = torch.zeros_like(w)
            for _ in range(K):
                v = torch.autograd.grad(mapped, w, grad_outputs=v, retain_graph=True)[0] + g_w
            mixed = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
            for q, gt, m in zip(params, g_t, mixed):
                q.grad = gt + (0 if m is None else m)
            opt.step()
    return model


def _unit_images(n=230, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 3, 3, generator=g)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0.0, 1.0  # the value range is exactly [0, 1]
    return x, torch.randint(0, 3, (n,), generator=g)


def test_default_repair_is_the_reference_loop_step_for_step():
    """Defaults: 5 rounds, batches of 100 (here 100, 100, 30: the last carries int(0.3) = 0
    perturbed images), K = 5, Adam 0.001, perturbation SGD 10 with penalty 0.001, inner map 0.1
    on the first batch, 1 % of each batch perturbed, no clamp or bound, evaluation mode."""
    xs, ys = _unit_images()
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3))
    repair = ImplicitUnlearning()
    assert (
        repair.variant,
        repair.rounds,
        repair.batch_size,
        repair.fixed_point_steps,
        repair.lr,
        repair.perturbation_lr,
        repair.perturbation_penalty,
        repair.inner_rate,
        repair.perturbed_share,
    ) == ("reference", 5, 100, 5, 1e-3, 10.0, 1e-3, 0.1, 0.01)
    got = repair.repair(model, RepairData(ImageSet(xs.numpy(), ys.numpy()))).models[0].model

    # the same random draws as the repair: one batch order, then one permutation per batch per round
    g = torch.Generator().manual_seed(repair.seed)
    order = torch.randperm(len(xs), generator=g)
    sizes = [100, 100, 30]
    draws = [torch.randperm(n, generator=g) for _ in range(repair.rounds) for n in sizes]
    expected = _reference_loop(copy.deepcopy(model), xs, ys, order, draws)
    for (name, a), b in zip(got.state_dict().items(), expected.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(got[0].weight, model[0].weight)


@pytest.mark.parametrize("value_range", [(0.0, 255.0), (-1.0, 1.0)])
def test_perturbation_rates_and_penalty_scale_with_the_value_range(value_range):
    """The reference assumes [0, 1] images. For images low + R x and the equivalent model (weights / R),
    rates x R^2 and penalty / R^2 give the perturbation R times the [0, 1] one: the same relative size."""
    low, high = value_range
    span = high - low
    xs, ys = _unit_images(120, 1)
    torch.manual_seed(4)
    unit = nn.Sequential(nn.Flatten(), nn.Linear(9, 3))
    scaled = nn.Sequential(nn.Flatten(), nn.Linear(9, 3))
    with torch.no_grad():
        scaled[1].weight.copy_(unit[1].weight / span)
        scaled[1].bias.copy_(unit[1].bias - unit[1].weight.sum(1) * low / span)
    repair = ImplicitUnlearning(rounds=1, lr=1e-12)  # the model stays put; only delta matters here
    rms_unit = repair.repair(unit, RepairData(ImageSet(xs.numpy(), ys.numpy()))).details["last_perturbation_rms"]
    rms_scaled = repair.repair(scaled, RepairData(ImageSet((low + span * xs).numpy(), ys.numpy())))
    assert rms_unit > 0.01
    assert rms_scaled.details["last_perturbation_rms"] == pytest.approx(rms_unit, rel=1e-3)


def test_milder_versions_keep_the_reference_algorithm_and_lower_the_rate():
    default = ImplicitUnlearning()
    milder = default.milder()
    assert milder and all(m.variant == "reference" for m in milder)
    assert [m.lr for m in milder] == sorted((m.lr for m in milder), reverse=True) and milder[0].lr < default.lr
    assert all(1 <= m.rounds <= default.rounds for m in milder)
    xs, ys = _unit_images(60)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 3))
    outcome = milder[-1].repair(model, RepairData(ImageSet(xs.numpy(), ys.numpy())))
    assert outcome.details["variant"] == "reference"
    assert np.isfinite([p.detach().sum().item() for p in outcome.models[0].model.parameters()]).all()


def test_batches_too_small_to_carry_one_percent_say_so_in_a_notice():
    """int(1 % of 50) = 0: as in the reference, no image carries delta and the update is plain clean
    fine-tuning; the outcome says so instead of passing it off as unlearning."""
    xs, ys = _unit_images(100)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 3))
    small = ImplicitUnlearning(rounds=1, batch_size=50).repair(model, RepairData(ImageSet(xs.numpy(), ys.numpy())))
    assert small.details["perturbed_images"] == 0 and "no image carried the perturbation" in small.notice
    full = ImplicitUnlearning(rounds=2).repair(model, RepairData(ImageSet(xs.numpy(), ys.numpy())))
    assert full.details["perturbed_images"] == 2 and full.notice is None
