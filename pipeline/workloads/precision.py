"""Float64-exact stand-ins for the HF layers that compute in float32 whatever the model's dtype."""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.gpt_neo.modeling_gpt_neo import GPTNeoSelfAttention
from transformers.models.t5.modeling_t5 import T5LayerNorm


class GPTNeoSelfAttentionExact(GPTNeoSelfAttention):
    """GPT-Neo's eager attention; HF casts query and key to float32 "to avoid overflow", which
    silently turns a float64 model's scores into float32 (docs/data.md). Float64 stays float64 here;
    every other dtype takes HF's own path unchanged."""

    def _attn(self, query, key, value, attention_mask=None):
        if query.dtype != torch.float64:
            return super()._attn(query, key, value, attention_mask)
        attn_weights = torch.matmul(query, key.transpose(-1, -2))  # (B, H, Tq, Tk)
        query_length, key_length = query.size(-2), key.size(-2)
        causal_mask = self.bias[:, :, key_length - query_length : key_length, :key_length]
        mask_value = torch.tensor(torch.finfo(attn_weights.dtype).min, dtype=attn_weights.dtype,
                                  device=attn_weights.device)
        attn_weights = torch.where(causal_mask, attn_weights, mask_value)
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = self.attn_dropout(nn.functional.softmax(attn_weights, dim=-1))
        return torch.matmul(attn_weights, value), attn_weights


class T5LayerNormExact(T5LayerNorm):
    """T5's RMS norm; HF computes the variance in float32 (for half precision), which rounds a
    float64 model's normalisation to float32. Float64 stays float64 here; other dtypes take
    HF's own path unchanged."""

    def forward(self, hidden_states):
        if hidden_states.dtype != torch.float64:
            return super().forward(hidden_states)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


_EXACT = {GPTNeoSelfAttention: GPTNeoSelfAttentionExact, T5LayerNorm: T5LayerNormExact}


def make_float64_exact(model: nn.Module) -> nn.Module:
    """Swap, in place, the class of every layer that would round float64 to float32.

    The subclasses add no parameters and change nothing for float32/16 inputs, so the swap is
    safe on any model; it matters once the model is converted with `.double()`.
    """
    for module in model.modules():
        exact = _EXACT.get(type(module))
        if exact is not None:
            module.__class__ = exact
    return model
