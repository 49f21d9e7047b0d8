"""Gauss-Newton smoothness against explicitly built float64 GN matrices and closed forms."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from pipeline.measure.gauss_newton import gauss_newton_smoothness

N_SAMPLES, SEQ_LEN, VOCAB = 5, 6, 50


def tiny_bert(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=num_labels,
        attn_implementation="eager",  # dropout stays at its default 0.1: eval mode must switch it off
    )
    return BertForSequenceClassification(config).double()


def make_batch(padded: bool, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (N_SAMPLES, SEQ_LEN), generator=gen)
    batch = {"input_ids": ids, "labels": torch.tensor([0, 1, 1, 0, 1])}
    if padded:
        lengths = torch.tensor([6, 4, 3, 6, 5])
        mask = (torch.arange(SEQ_LEN) < lengths[:, None]).long()
        batch["input_ids"] = ids * mask  # pad id 0
        batch["attention_mask"] = mask
        batch["token_type_ids"] = ((torch.arange(SEQ_LEN) >= 2).long() * mask).expand(N_SAMPLES, -1).clone()
    return batch


def explicit_gn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, G): M = (1/n) sum_i J_i^T (diag(p) - p p^T) J_i built from per-logit gradients, and
    G (P x n) with columns sqrt(p0 p1)(grad z0 - grad z1). Padded samples are run trimmed, without
    padding or mask, so that the mask handling of the code under test is checked too."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    n = batch["input_ids"].shape[0]
    total = sum(p.numel() for p in params)
    gn = torch.zeros(total, total, dtype=torch.float64)
    columns = []
    for i in range(n):
        length = int(batch["attention_mask"][i].sum()) if "attention_mask" in batch else SEQ_LEN
        sample = {"input_ids": batch["input_ids"][i : i + 1, :length]}
        if "token_type_ids" in batch:
            sample["token_type_ids"] = batch["token_type_ids"][i : i + 1, :length]
        z = model(**sample).logits[0]
        per_logit = [torch.autograd.grad(z[k], params, retain_graph=True) for k in (0, 1)]
        jac = torch.stack([torch.cat([g.reshape(-1) for g in grads]) for grads in per_logit])  # (2, P)
        prob = torch.softmax(z.detach(), dim=0)
        hess = torch.diag(prob) - torch.outer(prob, prob)  # softmax cross-entropy Hessian in the logits
        gn += jac.T @ hess @ jac
        columns.append((prob[0] * prob[1]).sqrt() * (jac[0] - jac[1]))
    return gn / n, torch.stack(columns, dim=1)


def top_eig(matrix: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(matrix)[-1])


def flat_mask(result: dict) -> torch.Tensor:
    return torch.cat([m.reshape(-1) for m in result["removed_mask"].values()])


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_L_and_ell_match_explicit_gn_matrix(padded):
    model = tiny_bert()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = make_batch(padded)

    result = gauss_newton_smoothness(model, batch, return_mask=True, params="all")

    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights untouched
    gn, G = explicit_gn(model, batch)
    torch.testing.assert_close(G @ G.T / N_SAMPLES, gn, rtol=1e-10, atol=1e-14)  # the rank-1 identity
    assert result["L"] == pytest.approx(top_eig(gn), rel=1e-6)
    keep = ~flat_mask(result)
    assert 0 < result["n_removed"] < result["n_params"] == gn.shape[0]
    assert result["ell"] == pytest.approx(top_eig(gn[keep][:, keep]), rel=1e-6)
    assert result["ratio"] == pytest.approx(result["L"] / result["ell"], rel=1e-12)
    assert result["n_samples"] == N_SAMPLES


@pytest.mark.parametrize("factor", [4.0, 2.0])
def test_removal_picks_exactly_rows_at_least_factor_times_mean(factor):
    model = tiny_bert()
    with torch.no_grad():
        model.classifier.weight.mul_(0.01)  # the classifier's own coordinates now dominate G
    batch = make_batch(padded=True)
    gn, G = explicit_gn(model, batch)
    norms = G.norm(dim=1)
    expected = norms >= factor * norms.mean()

    result = gauss_newton_smoothness(model, batch, outlier_factor=factor, return_mask=True, params="all")

    assert torch.equal(flat_mask(result), expected)
    assert 0 < int(expected.sum()) <= 20  # a few coordinates: the crafted case is what we meant
    assert torch.equal(result["removed_mask"]["classifier.bias"], torch.tensor([True, True]))
    assert result["n_removed"] == int(expected.sum())
    assert result["fraction_removed"] == pytest.approx(int(expected.sum()) / G.shape[0], rel=1e-12)
    keep = ~expected
    assert result["ell"] == pytest.approx(top_eig(gn[keep][:, keep]), rel=1e-6)
    assert result["ell"] < 1e-3 * result["L"]


def test_smaller_factor_removes_a_superset():
    model, batch = tiny_bert(), make_batch(padded=False)
    four = gauss_newton_smoothness(model, batch, outlier_factor=4.0, return_mask=True, params="all")
    two = gauss_newton_smoothness(model, batch, outlier_factor=2.0, return_mask=True, params="all")
    mask4, mask2 = flat_mask(four), flat_mask(two)
    assert two["n_removed"] > four["n_removed"] > 0
    assert torch.all(mask2[mask4])  # everything removed at factor 4 is removed at factor 2
    assert two["L"] == four["L"]
    assert two["ell"] <= four["ell"] <= four["L"]


@pytest.mark.parametrize("budget_rows", [0, 2])
def test_bounded_row_memory_gives_the_same_result(budget_rows):
    model, batch = tiny_bert(), make_batch(padded=True)
    full = gauss_newton_smoothness(model, batch, params="all")
    row_bytes = full["n_params"] * 8
    bounded = gauss_newton_smoothness(model, batch, row_budget_bytes=budget_rows * row_bytes, params="all")

    assert full["rows_held"] == N_SAMPLES and full["row_evaluations"] == N_SAMPLES
    assert bounded["rows_held"] == max(1, budget_rows)
    assert bounded["row_evaluations"] > N_SAMPLES  # rows that did not fit were recomputed
    for key in ("L", "ell", "fraction_removed"):
        assert bounded[key] == pytest.approx(full[key], rel=1e-10)


class LinearClassifier(nn.Module):
    """logits = x W^T + b, plus a parameter the forward never uses (its rows of G are zero)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        self.unused = nn.Parameter(torch.ones(3, dtype=weight.dtype))
        self.config = SimpleNamespace(num_labels=2)

    def forward(self, features):
        return SimpleNamespace(logits=features @ self.weight.T + self.bias)


def test_linear_classifier_closed_form():
    # g_i = sqrt(p0 p1) [x_i; -x_i; 1; -1; 0 0 0] for (W rows, b, unused), so every entry is known.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    x[:, 1] *= 10.0  # feature 1 becomes an outlier coordinate (twice: in W's row 0 and row 1)
    weight = 0.1 * torch.randn(2, 4, generator=gen, dtype=torch.float64)
    model = LinearClassifier(weight, torch.tensor([0.3, -0.2], dtype=torch.float64))
    z = x @ model.weight.detach().T + model.bias.detach()
    prob = torch.softmax(z, dim=1)
    w = (prob[:, 0] * prob[:, 1]).sqrt()  # (n,)
    zeros = torch.zeros(3, 7, dtype=torch.float64)
    G = torch.cat([x.T * w, -x.T * w, w[None], -w[None], zeros])  # (P, n)
    norms = G.norm(dim=1)
    expected = norms >= 4.0 * norms.mean()

    result = gauss_newton_smoothness(model, {"features": x}, return_mask=True, params="all")

    assert torch.equal(flat_mask(result), expected)
    # Removed only because the mean runs over all 13 coordinates, the 3 zero rows included.
    assert expected[[1, 5]].all() and int(expected.sum()) == 2
    assert not (norms[:10] >= 4.0 * norms[:10].mean()).any()
    assert result["n_params"] == 13
    spectral = lambda m: float(torch.linalg.matrix_norm(m, ord=2))  # noqa: E731
    assert result["L"] == pytest.approx(spectral(G) ** 2 / 7, rel=1e-10)
    assert result["ell"] == pytest.approx(spectral(G[~expected]) ** 2 / 7, rel=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "model_kwargs", "batch", "match"),
    [
        ({"outlier_factor": 0.0}, {}, None, "outlier_factor"),
        ({"outlier_factor": -4.0}, {}, None, "outlier_factor"),
        ({"outlier_factor": math.nan}, {}, None, "outlier_factor"),
        ({"row_budget_bytes": -1}, {}, None, "row_budget_bytes"),
        ({}, {"num_labels": 3}, None, "two-class"),
        ({}, {}, {"labels": torch.tensor([0, 1])}, "batch"),
        ({}, {}, {"input_ids": torch.ones(2, 3).long(), "attention_mask": torch.ones(3, 3)}, "batch size"),
    ],
    ids=["factor0", "factor_negative", "factor_nan", "budget", "three_labels", "no_inputs", "ragged"],
)
def test_bad_input_raises_before_any_forward(kwargs, model_kwargs, batch, match):
    model = tiny_bert(**model_kwargs)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=match):
        gauss_newton_smoothness(model, batch if batch is not None else make_batch(False), **kwargs, params="all")
    assert not calls


def test_float32_model_agrees_with_float64():
    model64, batch = tiny_bert(), make_batch(padded=True)
    model32 = tiny_bert().float()
    exact = gauss_newton_smoothness(model64, batch, params="all")
    approx = gauss_newton_smoothness(model32, batch, params="all")
    for key in ("L", "ell", "fraction_removed"):
        assert approx[key] == pytest.approx(exact[key], rel=1e-4)


def attention_rows(model: nn.Module) -> torch.Tensor:
    """Which coordinates of the all-parameter G belong to the attention weight matrices (by hand)."""
    flags = []
    for name, p in model.named_parameters():
        is_attention = ".attention." in name and name.endswith(".weight") and p.dim() == 2
        flags.append(torch.full((p.numel(),), is_attention))
    return torch.cat(flags)


def test_default_is_the_attention_weight_matrices_and_matches_an_exact_svd():
    model, batch = tiny_bert(), make_batch(padded=True)
    _, G = explicit_gn(model, batch)
    rows = attention_rows(model)
    G_att = G[rows]  # GN over a parameter subset: the same columns, only those coordinates
    norms = G_att.norm(dim=1)
    expected = norms >= 4.0 * norms.mean()
    spectral = lambda m: float(torch.linalg.matrix_norm(m, ord=2))  # noqa: E731  exact SVD

    result = gauss_newton_smoothness(model, batch, return_mask=True)

    assert result["params"] == "attention"
    assert set(result["removed_mask"]) == {
        "bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.attention.self.key.weight",
        "bert.encoder.layer.0.attention.self.value.weight", "bert.encoder.layer.0.attention.output.dense.weight"}
    assert result["n_params"] == int(rows.sum()) == 4 * 8 * 8
    assert torch.equal(flat_mask(result), expected)
    assert result["L"] == pytest.approx(spectral(G_att) ** 2 / N_SAMPLES, rel=1e-8)
    assert result["ell"] == pytest.approx(spectral(G_att[~expected]) ** 2 / N_SAMPLES, rel=1e-8)
    everything = gauss_newton_smoothness(model, batch, params="all")
    assert everything["L"] == pytest.approx(spectral(G) ** 2 / N_SAMPLES, rel=1e-8)
    assert abs(everything["L"] - result["L"]) > 0.05 * everything["L"]  # a different matrix


def test_a_name_pattern_selects_those_parameters():
    model, batch = tiny_bert(), make_batch(padded=False)
    _, G = explicit_gn(model, batch)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    rows = torch.cat([torch.full((s,), n.startswith("classifier.")) for n, s in zip(names, sizes)])
    result = gauss_newton_smoothness(model, batch, params=r"^classifier\.")
    assert result["n_params"] == 2 * 8 + 2 and result["params"] == r"^classifier\."
    assert result["L"] == pytest.approx(top_eig(G[rows] @ G[rows].T) / N_SAMPLES, rel=1e-8)
    with pytest.raises(ValueError, match="no trainable parameter"):
        gauss_newton_smoothness(model, batch, params="no_such_layer")
    with pytest.raises(ValueError, match="regular expression"):
        gauss_newton_smoothness(model, batch, params="(")


def test_random_control_removes_as_many_coordinates_drawn_from_the_seed():
    model = tiny_bert()
    with torch.no_grad():
        model.classifier.weight.mul_(0.01)  # a few outlier coordinates carry the bad smoothness
    batch = make_batch(padded=True)
    _, G = explicit_gn(model, batch)

    result = gauss_newton_smoothness(model, batch, params="all", control_seed=7, return_mask=True)

    k, P = result["n_removed"], result["n_params"]
    drawn = torch.zeros(P, dtype=torch.bool)
    drawn[torch.randperm(P, generator=torch.Generator().manual_seed(7))[:k]] = True
    expected = top_eig(G[~drawn] @ G[~drawn].T) / N_SAMPLES
    assert result["control_seed"] == 7
    assert result["ell_random"] == pytest.approx(expected, rel=1e-8)
    assert result["ratio_random"] == pytest.approx(result["L"] / expected, rel=1e-10)
    # The outliers' removal lowers the norm far more than removing as many random coordinates.
    assert result["ell"] < 1e-3 * result["ell_random"] and result["ratio_random"] < 1.1
    other = gauss_newton_smoothness(model, batch, params="all", control_seed=8)
    assert other["ell_random"] != result["ell_random"] and other["ell"] == result["ell"]
