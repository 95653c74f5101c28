"""Small transformers in plain ``torch.nn``: a causal LM (GPT-style) and a bidirectional encoder.

Both use ``F.scaled_dot_product_attention`` so PyTorch picks the fastest kernel for the device (flash /
memory-efficient on GPUs, a fused CPU kernel otherwise).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

__all__ = ["CausalTransformer", "TransformerEncoder"]


class _Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: Tensor, *, causal: bool, key_mask: Tensor | None = None) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        # key_mask [B, T] (True = real token) broadcasts over heads and queries: padded keys get no attention.
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    """Pre-norm transformer block (stable without warm-up tricks at small scale)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = _Attention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, *, causal: bool, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), causal=causal, key_mask=key_mask))
        return x + self.drop(self.mlp(self.ln2(x)))


def _init_weights(module: nn.Module, n_layers: int) -> None:
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            # GPT-2 init: N(0, 0.02), residual projections scaled down by depth so the residual stream's
            # variance does not grow with the number of layers.
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


class CausalTransformer(nn.Module):
    """A GPT-style decoder: token + learned position embeddings, pre-norm blocks, tied output head.

    Args:
        vocab_size: number of token ids.
        context_length: longest sequence (size of the position table).
        n_layers: transformer blocks.
        n_heads: attention heads per block.
        d_model: width of the residual stream.
        dropout: dropout on attention and residual branches.

    Example:
        >>> net = CausalTransformer(vocab_size=100, context_length=16, n_layers=1, n_heads=2, d_model=32)
        >>> net(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 8, 100])
    """

    def __init__(self, vocab_size: int, context_length: int = 256, n_layers: int = 4, n_heads: int = 4,
                 d_model: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.context_length = context_length
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context_length, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        _init_weights(self, n_layers)
        self.head.weight = self.tok_emb.weight  # weight tying: one matrix for input and output embeddings

    def forward(self, input_ids: Tensor) -> Tensor:
        """Logits ``[B, T, vocab]`` for ``input_ids`` ``[B, T]`` (``T <= context_length``)."""
        t = input_ids.shape[1]
        if t > self.context_length:
            raise ValueError(f"sequence of {t} tokens is longer than the context ({self.context_length})")
        pos = torch.arange(t, device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x, causal=True)
        return self.head(self.ln_f(x))


class TransformerEncoder(nn.Module):
    """A bidirectional encoder: ``(input_ids [B, T], attention_mask [B, T]) -> hidden [B, T, d_model]``.

    Padded positions (``attention_mask == False``) are never attended to.

    Example:
        >>> enc = TransformerEncoder(vocab_size=100, max_length=16, n_layers=1, n_heads=2, d_model=32)
        >>> enc(torch.zeros(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.bool)).shape
        torch.Size([2, 8, 32])
    """

    def __init__(self, vocab_size: int, max_length: int = 256, n_layers: int = 2, n_heads: int = 4,
                 d_model: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.d_model = d_model
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_length, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        _init_weights(self, max(n_layers, 1))

    @override
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x, causal=False, key_mask=attention_mask)
        return self.ln_f(x)
