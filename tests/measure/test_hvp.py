"""The Hessian-vector product primitives against a brute-force float64 Hessian."""

from __future__ import annotations

import pytest
import torch
from measure_testing import flat_hessian, flatten, normed_mlp, random_directions

from pipeline.measure import (
    directional_sharpness,
    hessian_vector_products,
    hvp_operator,
    quadratic_forms,
)
from pipeline.measure.chunking import chunked, default_chunk_size, saved_bytes
from pipeline.measure.hvp import resolve_method
from pipeline.measure.vectors import stack


@pytest.mark.parametrize("method", ["forward_over_reverse", "double_backward"])
def test_batched_products_and_forms_match_brute_force(method):
    loss_fn, params = normed_mlp(seed=2)
    hessian = flat_hessian(loss_fn, params)
    vectors = list(random_directions(params, 3).values())
    tangents = stack(vectors)
    products = hessian_vector_products(loss_fn, params, tangents, method=method)
    forms = quadratic_forms(loss_fn, params, tangents, method=method)
    for k, v in enumerate(vectors):
        expected = hessian @ flatten(v)
        got = torch.cat([products[n][k].reshape(-1) for n in params])
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
        assert float(forms[k]) == pytest.approx(float(flatten(v) @ expected), rel=1e-10)


@pytest.mark.parametrize("method", ["forward_over_reverse", "double_backward"])
def test_shifted_forms_use_each_directions_own_point(method):
    params = {"x": torch.tensor([1.0, -2.0], dtype=torch.float64)}

    def loss_fn(p):  # H = diag(6 x)
        return p["x"].pow(3).sum()

    tangents = {"x": torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)}
    shifts = {"x": torch.tensor([[0.5, 0.0], [0.0, -1.0]], dtype=torch.float64)}
    forms = quadratic_forms(loss_fn, params, tangents, shifts=shifts, method=method)
    assert forms.tolist() == pytest.approx([6 * 1.5, 6 * -3.0])


def test_operator_matches_brute_force_and_handles_linear_parameters():
    loss_fn, params = normed_mlp(seed=3)
    params = {**params, "offset": torch.tensor(0.3, dtype=torch.float64),
              "unused": torch.ones(2, dtype=torch.float64)}

    def with_offset(p):  # linear in "offset", "unused" unused: zero Hessian rows and columns
        return loss_fn(p) + 2.0 * p["offset"]

    hessian = flat_hessian(with_offset, params)
    apply = hvp_operator(with_offset, params)
    for v in random_directions(params, 2, seed=7).values():
        got = apply(v)
        assert torch.allclose(flatten(got), hessian @ flatten(v), rtol=1e-10, atol=1e-12)
        assert float(got["offset"]) == 0.0 and not got["unused"].any()
    directions = random_directions(params, 2, seed=8)
    expected = {k: float(flatten(v) @ hessian @ flatten(v) / flatten(v).pow(2).sum())
                for k, v in directions.items()}
    for method in ("forward_over_reverse", "double_backward"):
        got = directional_sharpness(with_offset, params, directions, method=method)
        assert got == pytest.approx(expected), method


def test_out_of_memory_halves_the_chunk_until_it_fits():
    tried = []

    def run(size):
        tried.append(size)
        if size is None or size > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return size

    assert chunked(run, 12, None) == 3
    assert tried == [None, 6, 3]

    def broken(size):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not retried
        chunked(broken, 12, None)


def test_host_chunk_size_follows_the_memory_estimate(monkeypatch):
    import pipeline.measure.chunking as chunking

    loss_fn, params = normed_mlp()
    saved = saved_bytes(loss_fn, params)
    assert saved >= 12 * 6 * 8  # at least the (12, 6) float64 activations are kept for backward
    monkeypatch.setattr(chunking, "available_host_bytes", lambda: int(2 * 3 * 3.0 * saved))
    assert default_chunk_size(loss_fn, params, 12) == 3  # half of it, 3 x saved per tangent
    monkeypatch.setattr(chunking, "available_host_bytes", lambda: int(2 * 9.5 * 3.0 * saved))
    assert default_chunk_size(loss_fn, params, 12) == 6  # 9 fit: two equal chunks
    monkeypatch.setattr(chunking, "available_host_bytes", lambda: 1)
    assert default_chunk_size(loss_fn, params, 12) == 1
    monkeypatch.setattr(chunking, "available_host_bytes", lambda: 10**15)
    assert default_chunk_size(loss_fn, params, 12) == 12


def test_auto_method_is_double_backward_on_the_host():
    params = {"x": torch.zeros(2)}
    assert resolve_method("auto", params) == "double_backward"
    assert resolve_method("forward_over_reverse", params) == "forward_over_reverse"
    with pytest.raises(ValueError, match="method must be one of"):
        resolve_method("hvp", params)
