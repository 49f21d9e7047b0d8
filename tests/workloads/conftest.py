"""Shared checks for the workload tests (tiny sizes, real data from `python -m pipeline setup`)."""

import pytest
import torch


def _train_a_few_steps(workload, *, steps=8, n_batches=2, lr=3e-3):
    """Adam on a few fixed training batches; returns their mean loss before and after.

    Train mode throughout, as training runs (BatchNorm on batch statistics); the tiny presets
    have no dropout, so the two evaluations see the same function of the weights.
    """
    stream = workload.train_batches()
    batches = [next(stream) for _ in range(n_batches)]
    workload.model.train()

    def mean_loss():
        with torch.no_grad():
            return sum(float(workload.loss(b)) for b in batches) / n_batches

    before = mean_loss()
    opt = torch.optim.Adam(workload.model.parameters(), lr=lr)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        workload.loss(batches[step % n_batches]).backward()
        opt.step()
    return before, mean_loss()


def _assert_functional_loss_matches(workload):
    """loss(batch, params) equals loss(batch) with the module's weights, and never reads them."""
    workload.model.eval()
    batch = workload.test_batch
    params = {n: p.detach().clone() for n, p in workload.model.named_parameters()}
    with torch.no_grad():
        reference = workload.loss(batch)
        assert torch.allclose(workload.loss(batch, params), reference, rtol=1e-6, atol=0)
        saved = [p.detach().clone() for p in workload.model.parameters()]
        for p in workload.model.parameters():
            p.mul_(0.5)
        try:
            assert torch.allclose(workload.loss_fn(batch)(params), reference, rtol=1e-6, atol=0)
            assert not torch.allclose(workload.loss(batch), reference, rtol=1e-3)
        finally:
            for p, s in zip(workload.model.parameters(), saved):
                p.copy_(s)


def _assert_test_batch_seeded(build):
    """Same seed -> identical test batch and initial weights; another seed -> different ones."""
    a, b, c = build(0), build(0), build(1)
    x, y, z = a.test_batch, b.test_batch, c.test_batch
    assert x.keys() == z.keys()
    assert all(torch.equal(x[k], y[k]) for k in x)
    first = next(iter(x))
    assert x[first].shape[0] == z[first].shape[0]
    assert not all(x[k].shape == z[k].shape and torch.equal(x[k], z[k]) for k in x)
    same = zip(a.model.state_dict().values(), b.model.state_dict().values())
    assert all(torch.equal(p, q) for p, q in same)
    other = zip(a.model.state_dict().values(), c.model.state_dict().values())
    assert not all(torch.equal(p, q) for p, q in other)


def _assert_float64_exact(workload, h=1e-5):
    """Central differences at step h match the autograd directional derivative to ~1e-7 only if
    nothing in the forward pass rounds to float32: float32 rounding of the loss (~1e-7 x loss)
    divided by 2h would be larger than the derivative itself (~1e-3). A small h also keeps the
    two points on the same side of (almost) every ReLU kink. Then Hessian-vector products run
    and are symmetric."""
    workload.model.eval()
    params = {n: p.detach() for n, p in workload.model.named_parameters()}
    assert all(p.dtype == torch.float64 for p in params.values())
    gen = torch.Generator().manual_seed(0)
    v = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}
    norm = torch.sqrt(sum((t**2).sum() for t in v.values()))
    v = {n: t / norm for n, t in v.items()}
    f = workload.loss_fn(workload.test_batch)
    live = {n: p.clone().requires_grad_() for n, p in params.items()}
    grads = torch.autograd.grad(f(live), list(live.values()))
    exact = float(sum((g * v[n]).sum() for g, n in zip(grads, live)))
    assert abs(exact) > 1e-5  # else the tolerance below would say nothing
    with torch.no_grad():
        plus = f({n: p + h * v[n] for n, p in params.items()})
        minus = f({n: p - h * v[n] for n, p in params.items()})
    assert float(plus - minus) / (2 * h) == pytest.approx(exact, rel=1e-5)
    # Second derivatives work (eager attention: docs/science.md's sharpness needs Hessian-vector
    # products) and the Hessian is symmetric: u^T H v = v^T H u.
    u = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}
    grads = torch.autograd.grad(f(live), list(live.values()), create_graph=True)
    hv = torch.autograd.grad(sum((g * v[n]).sum() for g, n in zip(grads, live)),
                             list(live.values()), retain_graph=True)
    hu = torch.autograd.grad(sum((g * u[n]).sum() for g, n in zip(grads, live)),
                             list(live.values()))
    u_hv = float(sum((x * u[n]).sum() for x, n in zip(hv, live)))
    v_hu = float(sum((x * v[n]).sum() for x, n in zip(hu, live)))
    assert u_hv == pytest.approx(v_hu, rel=1e-8, abs=1e-12) and abs(u_hv) > 1e-8


@pytest.fixture
def train_a_few_steps():
    return _train_a_few_steps


@pytest.fixture
def assert_functional_loss_matches():
    return _assert_functional_loss_matches


@pytest.fixture
def assert_test_batch_seeded():
    return _assert_test_batch_seeded


@pytest.fixture
def assert_float64_exact():
    return _assert_float64_exact
