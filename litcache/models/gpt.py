"""A small causal transformer language model (GPT-2 style, pre-LayerNorm), cut like the zoo's models.

The model has exactly three top-level parts, so a recipe cuts it at module names:
``stem`` (token + learned position embeddings, (N, T) int64 -> (N, T, width)), ``blocks`` (``depth``
pre-LN transformer blocks, each (N, T, width) -> (N, T, width)) and ``head`` (final LayerNorm +
linear, -> logits (N, T, vocab_size)). ``forward`` is exactly stem -> blocks -> head, so the split
check holds. There is no weight tying: litcache freezes and stores the stem and head separately,
and a tied embedding would make the head's weights change whenever the stem's did.

Sections of several blocks each come from ``block_sections``, which works for any depth that the
number of sections divides, so one recipe cuts an 8-block teacher and a 4-block student alike::

    sections=tuple(lambda m, i=i: block_sections(m, i, 4) for i in range(4))

``init_from_blocks`` starts a student from chosen teacher blocks (DistilBERT's "every other layer").
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from litcache.errors import RecipeError

__all__ = ["TokenStem", "CausalSelfAttention", "CausalBlock", "LMHead", "CausalTransformer", "gpt",
           "block_sections", "gpt_section", "init_from_blocks"]


class TokenStem(nn.Module):
    """Token ids (N, T) int64, T <= context -> token + position embeddings (N, T, width).

    The lookup lives in the stem so that every stored boundary is a float tensor.
    """

    def __init__(self, vocab_size: int, context: int, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.context = context
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(context, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Expected token ids as an integer tensor (N, T), got {x.dtype} {tuple(x.shape)} instead.")
        t = x.shape[1]
        if t > self.context:
            raise ValueError(f"Expected at most {self.context} tokens per row (the model's context), got {t} instead. "
                             "Cut the rows to the context, or build the model with a larger context.")
        positions = torch.arange(t, device=x.device)
        return self.dropout(self.tokens(x) + self.positions(positions))  # (N, T, width)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t sees positions <= t only."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"Expected a width divisible by the {heads} heads, got width {width} instead.")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(n, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))  # (N, H, T, C/H)
        # No key-padding mask: rows are right-padded, and with a causal mask a valid position t only
        # attends to positions <= t, which are all valid. The outputs at padded positions are
        # garbage and ignored by the loss (target -100).
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).reshape(n, t, c)
        return self.proj_dropout(self.proj(y))

    def attention_macs(self, inputs, output) -> int:
        """Multiply-adds of q k^T and attention @ v per sample (litcache.training.metrics counts the linears itself)."""
        tokens, width = inputs[0].shape[-2:]
        return 2 * tokens * tokens * width


class CausalBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)); (N, T, width) -> same."""

    litcache_block = True  # litcache.training.metrics.depth counts one layer per block

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class LMHead(nn.Module):
    """Final LayerNorm + linear: (N, T, width) -> next-token logits (N, T, vocab_size)."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.linear = nn.Linear(width, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.ln(x))


class CausalTransformer(nn.Module):
    """stem (token + position embeddings) -> blocks (``depth`` pre-LN blocks) -> head (LN + linear).

    Input: token ids (N, T) with T <= ``context``, rows right-padded (any pad id); output: logits
    (N, T, vocab_size), where the logits at position t predict token t + 1.
    """

    def __init__(self, vocab_size: int = 256, context: int = 128, width: int = 256, depth: int = 8, heads: int = 4,
                 mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.depth = depth
        self.context = context
        self.stem = TokenStem(vocab_size, context, width, dropout)
        self.blocks = nn.ModuleList(CausalBlock(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.head = LMHead(width, vocab_size)
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 * depth), so
        # the stream's variance does not grow with depth at initialisation.
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * depth))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def gpt(depth: int = 8, **kwargs) -> CausalTransformer:
    """A causal transformer of ``depth`` blocks; ``kwargs`` are CausalTransformer's other arguments."""
    if depth < 1:
        raise ValueError(f"Expected at least 1 transformer block, got depth {depth} instead.")
    return CausalTransformer(depth=depth, **kwargs)


def block_sections(model: CausalTransformer, index: int, count: int) -> nn.Sequential:
    """The ``index``-th of ``count`` equal consecutive groups of ``model.blocks``, sharing its modules.

    A recipe names its sections this way rather than by block index, so one recipe fits a teacher
    and a student of different depths (8 blocks -> sections of 2, 4 blocks -> sections of 1).
    """
    depth = len(model.blocks)
    if count < 1 or not 0 <= index < count:
        raise RecipeError(f"Expected a section index in 0..{count - 1} of {count} sections, got index {index} instead.")
    if depth % count:
        raise RecipeError(f"Expected a model depth divisible by the {count} sections, got depth {depth} instead. "
                          f"Build the teacher and students with depths that are multiples of {count}, "
                          "or cut them into a number of sections that divides every depth.")
    size = depth // count
    return nn.Sequential(*model.blocks[index * size:(index + 1) * size])


def gpt_section(index: int, count: int):
    """A recipe's ModuleRef for section ``index`` (from 0) of ``count``: a callable of the model."""

    def section(model: CausalTransformer) -> nn.Sequential:
        return block_sections(model, index, count)

    section.__qualname__ = f"gpt_section({index}, {count})"
    return section


def init_from_blocks(student: CausalTransformer, teacher: CausalTransformer, picks: list[int]) -> CausalTransformer:
    """Copy ``teacher.blocks[picks[j]]`` into ``student.blocks[j]`` for every j; returns ``student``.

    DistilBERT's initialisation (every other teacher layer, ``picks = [0, 2, 4, 6]`` for 8 -> 4) gives
    each student section a start close to the teacher sections it replaces. Stem and head are not
    touched: litcache copies those from the teacher itself.
    """
    picks = list(picks)
    if len(picks) != len(student.blocks):
        raise RecipeError(f"Expected one teacher block to pick for each of the student's {len(student.blocks)} blocks, "
                          f"got {len(picks)} picks {picks} instead.")
    bad = [p for p in picks if not 0 <= p < len(teacher.blocks)]
    if bad:
        raise RecipeError(f"Expected picks in 0..{len(teacher.blocks) - 1} (the teacher has {len(teacher.blocks)} "
                          f"blocks), got {bad} instead.")
    with torch.no_grad():
        for j, p in enumerate(picks):
            try:
                student.blocks[j].load_state_dict(teacher.blocks[p].state_dict())
            except RuntimeError as exc:
                raise RecipeError(f"Expected student block {j} to have the shape of teacher block {p} (same width, "
                                  "heads and mlp_ratio), but they differ: "
                                  f"{str(exc).splitlines()[-1].strip()}") from None
    return student
