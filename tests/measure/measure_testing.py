"""References for the measure tests: brute-force float64 Hessians, double backward, tiny models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from pipeline.workloads.precision import make_float64_exact


def normed_mlp(seed: int = 0, dtype=torch.float64):
    """(loss_fn, params) of a small classifier with LayerNorm and training-mode BatchNorm.

    Both norms are where nested forward-mode AD returns wrong second derivatives (pytorch
    #196700, #196699), so a method that takes that route fails here.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    x, y = randn(12, 4), torch.randint(0, 3, (12,), generator=gen)
    params = {
        "w1": randn(6, 4) / 2, "b1": randn(6) / 4, "ln_w": 1 + randn(6) / 4, "ln_b": randn(6) / 4,
        "bn_w": 1 + randn(6) / 4, "bn_b": randn(6) / 4, "w2": randn(3, 6) / 2,
    }

    def loss_fn(p):
        h = torch.tanh(x @ p["w1"].T + p["b1"])  # (N, 6)
        h = F.layer_norm(h, (6,), p["ln_w"], p["ln_b"])
        h = F.gelu(F.batch_norm(h, None, None, p["bn_w"], p["bn_b"], training=True))
        return F.cross_entropy(h @ p["w2"].T, y)

    return loss_fn, params


def flat_hessian(loss_fn, params) -> torch.Tensor:
    """The full Hessian over the concatenated parameters (names in params' order)."""
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]

    def flat_loss(x):
        return loss_fn({n: t.view(s) for n, t, s in zip(names, x.split(sizes), shapes)})

    return torch.autograd.functional.hessian(flat_loss, flatten(params), vectorize=True)


def flatten(vec) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in vec.values()])


def random_directions(params, count: int, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        f"d{k}": {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
        for k in range(count)
    }


def double_backward_sharpness(loss_fn, params, v) -> float:
    """v^T H v / ||v||^2 by reverse-over-reverse, one direction: independent of forward mode."""
    live = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    grads = torch.autograd.grad(loss_fn(live), list(live.values()), create_graph=True)
    gv = sum((g * v[n]).sum() for g, n in zip(grads, live))
    hv = torch.autograd.grad(gv, list(live.values()))
    vhv = sum((h.double() * v[n].double()).sum() for h, n in zip(hv, live))
    return float(vhv / sum(v[n].double().pow(2).sum() for n in live))


def tiny_gpt_neo(*, vocab=256, hidden=32, layers=2, heads=2, seq=16, batch=4, seed=0,
                 dtype=torch.float32):
    """(model, loss of a token batch as a function of params, params, token batches) of a tiny
    GPT-Neo with eager attention; the loss is computed from the logits here, in their dtype
    (HF's own loss upcasts with .float(): docs/data.md, 'Pitfalls')."""
    torch.manual_seed(seed)
    config = GPTNeoConfig(
        vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
        attention_types=[[["global", "local"], layers // 2]], window_size=8,
        max_position_embeddings=seq, intermediate_size=4 * hidden, bos_token_id=0,
        eos_token_id=0, attn_implementation="eager", use_cache=False,
    )
    model = GPTNeoForCausalLM(config).eval()
    if dtype == torch.float64:
        model = make_float64_exact(model).double()
    params = {n: p.detach() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [torch.randint(0, vocab, (batch, seq), generator=gen) for _ in range(4)]

    def loss_on(ids):
        def loss_fn(p):
            logits = functional_call(model, p, (ids,)).logits  # (B, T, V)
            return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))

        return loss_fn

    return model, loss_on, params, batches
