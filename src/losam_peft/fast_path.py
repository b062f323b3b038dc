"""A fast, exact execution path for SAM's frozen ViT image encoder.

transformers' ``SamVisionSdpaAttention`` adds SAM's decomposed relative-position terms as an explicit
``(B, heads, H*W, H*W)`` attention bias.  For a 64x64 token grid (1024x1024 input) that bias is 805 MB per
image and per global layer in float32, it is written twice (an add and a reshape copy) and it forces SDPA off
its fused kernels on GPU.  The fast path computes the same attention without ever building that tensor:

* **folded attention** (GPU, and whenever ``torch.compile`` traces the model): with
  ``rel_h[i, r] = q_i . R_h[row(i) - r]`` and ``rel_w[i, c] = q_i . R_w[col(i) - c]`` the bias of query ``i`` and
  key ``j`` is ``rel_h[i, row(j)] + rel_w[i, col(j)]``.  Appending ``rel_h`` and ``rel_w`` to the scaled query and
  the one-hot row and column coordinates of each key to the key gives
  ``q'_i . k'_j = scale * q_i . k_j + bias_ij`` exactly, so a plain SDPA call with ``scale=1`` (flash or
  memory-efficient kernel, fully differentiable) computes SAM's attention.  The value is zero-padded to the
  query width (the CPU and CUDA flash kernels need equal head dims), and the width is rounded up to a multiple
  of 8 on CUDA and of 32 for bf16 on CPU.
* **bias chunks** (CPU, every dtype, inference and training): the bias is built a few query rows at a time into
  a small contiguous buffer and handed to the fused CPU SDPA kernel with the original head dim, which takes about
  half the time of the 3x wider folded product (float32 and bf16 alike; it never holds more than ~64 MB of bias).
  Where gradients flow, the chunked forward keeps the softmax log-sum-exp and the backward recomputes the scores
  a block of query rows at a time at the head dim (:class:`_BiasChunkAttention`): five GEMMs at width ``hd``
  plus float32 elementwise work, about half the time of the flash backward on the 3x wider folded operands; the
  relative terms' gradients are sums of the score gradients over the key grid's rows and columns.
* **flex** (opt-in, for ``torch.compile`` on GPU): FlexAttention with a ``score_mod`` reading ``rel_h`` and
  ``rel_w``.

Around the attention:

* windowed layers compute ``qkv`` on the un-padded token grid and write the windows straight from it (one
  copy; padded tokens get ``qkv(0)``, which is what the stock path computes for its zero-padded tokens), and
  write the attention output straight back onto the un-padded grid before the output projection (one copy;
  the stock path pads, partitions, projects padded tokens, un-partitions and crops);
* the patch embedding returns a contiguous channels-last grid (the stock ``permute`` leaves a channels-first
  layout that every later elementwise op inherits, so adds run un-vectorised and LayerNorms copy);
* under autocast, frozen ``nn.Linear`` weights are cast to bf16 once and cached (autocast re-casts weights that do
  not require grad in every forward); residual adds convert explicitly instead of mixing dtypes.

All parameters and state-dict keys stay exactly those of transformers' ``SamVisionEncoder``: the fast path only
swaps the ``forward`` of each ``SamVisionLayer``, of its ``attn`` and of the ``SamPatchEmbeddings`` (by switching
the instances to subclasses that add no parameters); ``disable_fast_path`` switches them back.  In float32 the
outputs and gradients match the stock path to ~1e-7 relative (tests/test_fast_path.py).  Activation checkpointing
of the frozen blocks is available for large batches (``enable_fast_path(..., gradient_checkpointing=True)``).

Use::

    enable_fast_path(model.vision_encoder)              # exact, on by default in losam_peft models
    with autocast_context(device):                      # bf16 where the hardware supports it
        out = model(pixel_values)
    disable_fast_path(model.vision_encoder)             # the stock transformers path again
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam.modeling_sam import (
    SamMLPBlock,
    SamPatchEmbeddings,
    SamVisionAttention,
    SamVisionLayer,
    SamVisionSdpaAttention,
)

from .errors import LoSamValueError

__all__ = [
    "ATTENTION_MODES",
    "autocast_context",
    "default_autocast_dtype",
    "disable_fast_path",
    "enable_fast_path",
    "fast_path_enabled",
    "folded_rel_pos_attention",
    "rel_pos_attention",
]

ATTENTION_MODES = ("auto", "fold", "bias_chunks", "flex")

# Largest relative-position bias chunk (elements) the CPU "bias_chunks" mode materialises at once.
_BIAS_CHUNK_ELEMENTS = int(os.environ.get("LOSAM_BIAS_CHUNK_ELEMENTS", 16 * 1024 * 1024))
# Largest block of float32 scores (elements) the CPU training backward recomputes at once (8 MiB: fastest measured
# for vit_b global layers on a 2-core CPU, 1-4 Mi elements within 5 %).
_BACKWARD_CHUNK_ELEMENTS = int(os.environ.get("LOSAM_BACKWARD_CHUNK_ELEMENTS", 2 * 1024 * 1024))


# --------------------------------------------------------------------------------------------------------------
# Hardware helpers
# --------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bf16 matrix support (AMX tiles or AVX512-BF16)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except Exception:  # pragma: no cover - defensive, depends on the torch build
                pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def default_autocast_dtype(device: torch.device | str | None = None) -> torch.dtype | None:
    """The autocast dtype the fast path should run in on ``device``, or ``None`` for plain float32.

    ``torch.bfloat16`` on CUDA devices that support it and on CPUs with AMX or AVX512-BF16 (where bf16
    matrix products are many times faster than float32); ``None`` elsewhere (float16 autocast is never chosen
    automatically: SAM's activations are not float16-safe without loss scaling).
    """
    device = torch.device("cuda" if device is None and torch.cuda.is_available() else (device or "cpu"))
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_fast_bf16() else None
    return None


def autocast_context(device: torch.device | str | None, dtype: torch.dtype | str | None = "auto"):
    """``torch.autocast`` for ``device`` in ``dtype`` (``"auto"``: :func:`default_autocast_dtype`), or a no-op."""
    device = torch.device(device if device is not None else "cpu")
    if isinstance(dtype, str):
        if dtype != "auto":
            dtype = {
                "bf16": torch.bfloat16,
                "bfloat16": torch.bfloat16,
                "fp16": torch.float16,
                "float16": torch.float16,
                "fp32": None,
                "float32": None,
                "none": None,
            }[dtype.lower()]
        else:
            dtype = default_autocast_dtype(device)
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------------------------------------------
# Attention kernels
# --------------------------------------------------------------------------------------------------------------
def _rel_terms(attn: SamVisionAttention, query: torch.Tensor, height: int, width: int):
    """SAM's decomposed relative terms for ``query`` (B, heads, H*W, hd), unscaled as in transformers.

    Returns ``rel_h`` (B, heads, H, W, H) and ``rel_w`` (B, heads, H, W, W).
    """
    rel_pos_h = attn.get_rel_pos(height, height, attn.rel_pos_h)  # (H, Hk, hd)
    rel_pos_w = attn.get_rel_pos(width, width, attn.rel_pos_w)  # (W, Wk, hd)
    b, n, _, d = query.shape
    q = query.reshape(b, n, height, width, d)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", q, rel_pos_h.to(q.dtype))
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", q, rel_pos_w.to(q.dtype))
    return rel_h, rel_w


def _one_hot_coords(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(H*W, H+W): the one-hot row and column of each key, row-major token order (built by comparison, so
    ``torch.compile`` traces it without data-dependent checks)."""
    token = torch.arange(height * width, device=device)
    rows = (token[:, None] // width) == torch.arange(height, device=device)[None, :]
    cols = (token[:, None] % width) == torch.arange(width, device=device)[None, :]
    return torch.cat([rows, cols], dim=-1).to(dtype)


def folded_rel_pos_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
    pad_value_to_query: bool | None = None,
    multiple_of: int | None = None,
) -> torch.Tensor:
    """Exact decomposed-rel-pos attention through one SDPA call on augmented queries and keys.

    ``query``/``key``/``value``: (B, heads, H*W, hd); ``rel_h``: (B, heads, H, W, H); ``rel_w``:
    (B, heads, H, W, W).  Returns (B, heads, H*W, hd).
    """
    d = query.shape[-1]
    if pad_value_to_query is None:
        pad_value_to_query = True  # the CPU flash kernel and CUDA flash need equal q/k/v head dims
    if multiple_of is None:
        # CUDA flash wants head dims in multiples of 8; the CPU kernel's bf16 (AMX) path is markedly faster at
        # multiples of 32 (a 14x14-window fold is 64+28=92 wide: padded to 96 it runs ~1.3x faster).
        multiple_of = 8 if query.is_cuda else (32 if query.dtype in (torch.bfloat16, torch.float16) else 1)
    q_aug, k_aug, v_aug = _fold_operands(query, key, value, rel_h, rel_w, scale, multiple_of)
    if not pad_value_to_query:
        v_aug = value
    out = F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0)
    return out[..., :d] if pad_value_to_query else out


def _chunk_sdpa(query, key, value, bias, scale, lse_out):
    """One bias chunk through the fused CPU SDPA kernel; with ``lse_out`` also its log-sum-exp (for the backward)."""
    if lse_out is None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, False, attn_mask=bias, scale=scale
    )
    lse_out.copy_(lse)
    return out


def _bias_chunk_attention(query, key, value, rel_h, rel_w, scale, lse=None, bias_dtype=None):
    """Exact attention at the original head dim, the rel-pos bias materialised a few query rows at a time.

    The bias chunks are written in place, so nothing here is differentiable; :class:`_BiasChunkAttention` gives it a
    backward.  ``lse`` (B, heads, H*W) float32, optional: receives the softmax log-sum-exp of every query (the CPU
    flash kernel's, so the chunks go through its aten op directly).  ``bias_dtype``: the dtype the bias is summed in
    (default the inputs', as in transformers' attention; the kernel adds it in float32 either way).  The training
    attention asks for float32, so that its backward's recomputed scores are exactly the forward's.  Inference keeps
    the inputs' dtype: a float32 bias made a vit_b bf16 forward ~5 % slower (6.38 s against 6.05 s, median of 4
    interleaved forwards; its chunks are twice the bytes), and bf16 rounds the bias as the stock bf16 path does.
    """
    b, n, seq, d = query.shape
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    if bias_dtype is not None:
        rel_h, rel_w = rel_h.to(bias_dtype), rel_w.to(bias_dtype)
    per_row = n * width * seq  # bias elements of one query row of one image
    compiling = torch.compiler.is_compiling()
    out = query.new_empty(b, seq, n, d)
    out_view = out.transpose(1, 2)  # (B, heads, seq, d) view the chunks are written into
    if per_row * height <= _BIAS_CHUNK_ELEMENTS:
        # Whole images fit the budget: chunk along the batch (windows of a windowed layer land here).
        images = min(b, max(1, _BIAS_CHUNK_ELEMENTS // (per_row * height)))
        images = -(-b // -(-b // images))  # same number of chunks, evenly sized
        buf = None if compiling else rel_h.new_empty(images * per_row * height)
        for s in range(0, b, images):
            e = min(b, s + images)
            if compiling:  # out= into a view does not trace; inductor fuses the plain add anyway
                bias = rel_h[s:e, ..., :, None] + rel_w[s:e, ..., None, :]
            else:
                bias = buf[: (e - s) * per_row * height].view(e - s, n, height, width, height, width)
                torch.add(rel_h[s:e, ..., :, None], rel_w[s:e, ..., None, :], out=bias)
            out_view[s:e] = _chunk_sdpa(
                query[s:e],
                key[s:e],
                value[s:e],
                bias.reshape(e - s, n, seq, seq),
                scale,
                None if lse is None else lse[s:e],
            )
        return out_view
    rows = max(1, _BIAS_CHUNK_ELEMENTS // per_row)
    rows = -(-height // -(-height // rows))  # same number of chunks, evenly sized
    buf = None if compiling else rel_h.new_empty(rows * per_row)
    for i in range(b):
        for r in range(0, height, rows):
            m = min(rows, height - r)
            if compiling:
                bias = rel_h[i, :, r : r + m, :, :, None] + rel_w[i, :, r : r + m, :, None, :]
            else:
                bias = buf[: m * per_row].view(n, m, width, height, width)
                torch.add(rel_h[i, :, r : r + m, :, :, None], rel_w[i, :, r : r + m, :, None, :], out=bias)
            qs = slice(r * width, (r + m) * width)
            out_view[i : i + 1, :, qs] = _chunk_sdpa(
                query[i : i + 1, :, qs],
                key[i : i + 1],
                value[i : i + 1],
                bias.reshape(1, n, m * width, seq),
                scale,
                None if lse is None else lse[i : i + 1, :, qs],
            )
    return out_view


def _fold_operands(query, key, value, rel_h, rel_w, scale, multiple_of):
    """The augmented (query, key, value) of the folded attention; see :func:`folded_rel_pos_attention`."""
    b, n, seq, d = query.shape
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    tail = (-(d + height + width)) % multiple_of
    parts_q = [query * scale, rel_h.reshape(b, n, seq, height), rel_w.reshape(b, n, seq, width)]
    coords = _one_hot_coords(height, width, query.device, query.dtype)
    if tail:
        parts_q.append(query.new_zeros(b, n, seq, tail))
        coords = F.pad(coords, (0, tail))
    q_aug = torch.cat(parts_q, dim=-1)
    k_aug = torch.cat([key, coords.expand(b, n, seq, coords.shape[-1])], dim=-1)
    v_aug = F.pad(value, (0, q_aug.shape[-1] - d))
    return q_aug, k_aug, v_aug


def _bias_chunk_attention_backward(query, key, value, rel_h, rel_w, out, lse, grad_out, scale):
    """Exact gradients of the rel-pos attention at the head dim, the scores recomputed a chunk at a time.

    For a chunk of (image, head, query-row) blocks: ``S = scale * Q K^T + bias`` (the bias from ``rel_h``/``rel_w``,
    added in float32), ``P = exp(S - lse)`` with the forward's log-sum-exp, ``dS = P * (dO V^T - delta)`` with
    ``delta = rowsum(dO * O)``, and then ``dQ = scale * dS K``, ``dK += scale * dS^T Q``, ``dV += P^T dO`` and the
    relative terms' gradients as sums of ``dS`` over the key columns (for ``rel_h``) and key rows (for ``rel_w``) of
    the key grid.  Five GEMMs at the head dim where the folded flash backward runs five at ``hd + H + W`` (three of
    them on zero padding): about half its time for a vit_b global layer (benchmarks/RESULTS.md).  The scores and
    their gradients are float32; the GEMMs run in the inputs' dtype (as the flash kernels' do).
    """
    b, n, seq, d = query.shape
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    dtype = query.dtype
    grad_out = grad_out.to(dtype)
    delta = (grad_out.float() * out.float()).sum(-1)  # (B, heads, seq)
    rh = rel_h.reshape(b, n, seq, height)
    rw = rel_w.reshape(b, n, seq, width)
    grad_q = torch.empty(b, n, seq, d, dtype=dtype, device=query.device)
    grad_k = torch.zeros(b, n, seq, d, dtype=torch.float32, device=query.device)
    grad_v = torch.zeros(b, n, seq, d, dtype=torch.float32, device=query.device)
    grad_h = torch.empty(b, n, seq, height, dtype=rel_h.dtype, device=rel_h.device)
    grad_w = torch.empty(b, n, seq, width, dtype=rel_w.dtype, device=rel_w.device)
    # chunk sizes: query rows first, then heads, then images, within the score budget
    budget = max(1, _BACKWARD_CHUNK_ELEMENTS)
    rows = max(1, min(seq, budget // seq))
    rows = -(-seq // -(-seq // rows))  # same number of chunks, evenly sized
    heads = max(1, min(n, budget // (rows * seq))) if rows == seq else 1
    images = max(1, min(b, budget // (n * rows * seq))) if heads == n else 1
    for i0 in range(0, b, images):
        i1 = min(b, i0 + images)
        for h0 in range(0, n, heads):
            h1 = min(n, h0 + heads)
            pair = (slice(i0, i1), slice(h0, h1))
            count = (i1 - i0) * (h1 - h0)  # (image, head) pairs in this block, batched through bmm
            key_blk = key[pair].reshape(count, seq, d)
            value_blk = value[pair].reshape(count, seq, d)
            # the outputs are contiguous and a block spans whole images or heads of one image: views, no copies
            grad_q_blk, grad_k_blk = grad_q[pair].view(count, seq, d), grad_k[pair].view(count, seq, d)
            grad_v_blk = grad_v[pair].view(count, seq, d)
            grad_h_blk, grad_w_blk = grad_h[pair].view(count, seq, height), grad_w[pair].view(count, seq, width)
            for r0 in range(0, seq, rows):
                r1 = min(seq, r0 + rows)
                block = (*pair, slice(r0, r1))
                q_blk = query[block].reshape(count, r1 - r0, d)
                g_blk = grad_out[block].reshape(count, r1 - r0, d)
                scores = torch.bmm(q_blk, key_blk.transpose(1, 2)).float().mul_(scale)  # (pairs, rows, seq)
                grid = scores.view(count, r1 - r0, height, width)
                grid.add_(rh[block].reshape(count, r1 - r0, height, 1))
                grid.add_(rw[block].reshape(count, r1 - r0, 1, width))
                probs = scores.sub_(lse[block].reshape(count, r1 - r0, 1)).exp_()
                grad_s = torch.bmm(g_blk, value_blk.transpose(1, 2)).float()
                grad_s.sub_(delta[block].reshape(count, r1 - r0, 1)).mul_(probs)
                grad_grid = grad_s.view(grid.shape)
                grad_h_blk[:, r0:r1] = grad_grid.sum(-1)  # summed in float32, then stored
                grad_w_blk[:, r0:r1] = grad_grid.sum(-2)
                grad_s_low, probs_low = grad_s.to(dtype), probs.to(dtype)
                torch.bmm(grad_s_low, key_blk, out=grad_q_blk[:, r0:r1]).mul_(scale)
                grad_k_blk.add_(torch.bmm(grad_s_low.transpose(1, 2), q_blk), alpha=scale)  # float32 sums
                grad_v_blk.add_(torch.bmm(probs_low.transpose(1, 2), g_blk))
    return grad_q, grad_k.to(dtype), grad_v.to(dtype), grad_h.view(rel_h.shape), grad_w.view(rel_w.shape)


class _BiasChunkAttention(torch.autograd.Function):
    """CPU training attention: the bias-chunk forward and a chunked exact backward, both at the head dim.

    Forward: :func:`_bias_chunk_attention` (SDPA at width ``hd`` plus a bias chunk, about half the time of the
    ``hd + H + W`` wide folded forward), keeping the softmax log-sum-exp.  Backward:
    :func:`_bias_chunk_attention_backward`, which recomputes the scores a chunk at a time from that log-sum-exp.
    """

    @staticmethod
    def forward(ctx, query, key, value, rel_h, rel_w, scale):
        b, n, seq, _ = query.shape
        lse = query.new_empty(b, n, seq, dtype=torch.float32)
        out = _bias_chunk_attention(query, key, value, rel_h, rel_w, scale, lse=lse, bias_dtype=torch.float32)
        ctx.scale = scale
        ctx.save_for_backward(query, key, value, rel_h, rel_w, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, rel_h, rel_w, out, lse = ctx.saved_tensors
        grads = _bias_chunk_attention_backward(query, key, value, rel_h, rel_w, out, lse, grad_out, ctx.scale)
        return (*grads, None)


def _flex_attention(query, key, value, rel_h, rel_w, scale):
    from torch.nn.attention.flex_attention import flex_attention

    b, n, seq, _ = query.shape
    height, width = rel_h.shape[-1], rel_w.shape[-1]
    rh = rel_h.reshape(b, n, seq, height)
    rw = rel_w.reshape(b, n, seq, width)

    def score_mod(score, bi, hi, qi, ki):
        return score + rh[bi, hi, qi, ki // width] + rw[bi, hi, qi, ki % width]

    return flex_attention(query, key, value, score_mod=score_mod, scale=scale)


def _auto_mode(query, key, value, rel_h, rel_w) -> str:
    """Bias chunks on CPU (inference and training, every dtype), the folded SDPA elsewhere and when compiling.

    Measured on 2-core CPUs (benchmarks/RESULTS.md): the CPU flash kernel at the original head dim with a bias chunk
    takes about half the time of the 3x wider folded product, in float32 and in bf16; with gradients flowing the
    bias-chunk forward is paired with a chunked backward at the head dim (:class:`_BiasChunkAttention`).  On CUDA
    the folded product keeps SDPA on its flash/memory-efficient kernels, which a dense bias would not.
    """
    if query.device.type != "cpu" or torch.compiler.is_compiling():
        return "fold"
    return "bias_chunks"


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def rel_pos_attention(attn: SamVisionAttention, query, key, value, height: int, width: int, mode: str = "auto"):
    """SAM attention with decomposed relative positions for tokens on an ``height`` x ``width`` grid.

    ``query``/``key``/``value``: (B, heads, H*W, hd).  Returns (B, heads, H*W, hd) (possibly a strided view).
    """
    if not attn.use_rel_pos:
        return F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
    rel_h, rel_w = _rel_terms(attn, query, height, width)
    if mode == "auto":
        mode = _auto_mode(query, key, value, rel_h, rel_w)
    if mode == "fold":
        return folded_rel_pos_attention(query, key, value, rel_h, rel_w, attn.scale)
    if mode == "bias_chunks":
        if not _needs_grad(query, key, value, rel_h, rel_w):
            return _bias_chunk_attention(query, key, value, rel_h, rel_w, attn.scale)
        if query.device.type == "cpu" and not torch.compiler.is_compiling():
            return _BiasChunkAttention.apply(query, key, value, rel_h, rel_w, attn.scale)
        return folded_rel_pos_attention(query, key, value, rel_h, rel_w, attn.scale)
    if mode == "flex":
        return _flex_attention(query, key, value, rel_h, rel_w, attn.scale)
    raise LoSamValueError(f"unknown attention mode {mode!r}; expected one of {ATTENTION_MODES}")


# --------------------------------------------------------------------------------------------------------------
# Module forwards
# --------------------------------------------------------------------------------------------------------------
class _FastAttentionMixin:
    """Forward of ``SamVisionAttention`` on the token grid, windowing done inside (no padded LN/proj work)."""

    _losam_fast = True
    _losam_attention_mode = "auto"

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False, window_size: int = 0):
        # hidden_states: (B, H, W, C) -- the whole grid (window_size > 0) or already-partitioned windows
        batch, height, width, channels = hidden_states.shape
        heads = self.num_attention_heads
        head_dim = channels // heads
        mode = self._losam_attention_mode
        qkv = _linear(self.qkv, hidden_states)  # (B, H, W, 3C)
        if window_size > 0:
            ws = window_size
            nh, nw = -(-height // ws), -(-width // ws)
            windows = batch * nh * nw
            # Windows are written straight from the un-padded grid: one copy, no padded intermediate.
            buf = qkv.new_empty(3, batch, nh, nw, heads, ws, ws, head_dim)
            grid_view = buf.permute(1, 2, 5, 3, 6, 0, 4, 7)  # (B, nh, ws, nw, ws, 3, heads, hd)
            src = qkv.reshape(batch, height, width, 3, heads, head_dim)
            for gh, wh, ih, ch, lh in _window_parts(height, ws):
                for gw, ww, iw, cw, lw in _window_parts(width, ws):
                    grid_view[:, wh, ih, ww, iw] = src[:, gh, gw].view(batch, ch, lh, cw, lw, 3, heads, head_dim)
            rem_h, rem_w = height % ws, width % ws
            if rem_h or rem_w:
                # The stock path zero-pads the normed tokens before qkv; qkv(0) is what those tokens project to.
                pad = _linear(self.qkv, hidden_states.new_zeros(1, channels)).to(qkv.dtype).view(3, heads, head_dim)
                if rem_h:
                    grid_view[:, nh - 1, rem_h:] = pad
                if rem_w:
                    grid_view[:, :, :, nw - 1, rem_w:] = pad
            query, key, value = buf.view(3, windows, heads, ws * ws, head_dim).unbind(0)
            out = rel_pos_attention(self, query, key, value, ws, ws, mode)  # (B*nh*nw, heads, ws*ws, hd)
            # Back to the grid, padding dropped, again in one copy.
            win = out.reshape(batch, nh, nw, heads, ws, ws, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
            grid = out.new_empty(batch, height, width, heads, head_dim)
            for gh, wh, ih, ch, lh in _window_parts(height, ws):
                for gw, ww, iw, cw, lw in _window_parts(width, ws):
                    grid[:, gh, gw].view(batch, ch, lh, cw, lw, heads, head_dim).copy_(win[:, wh, ih, ww, iw])
            out = grid.view(batch, height, width, channels)
        else:
            seq = height * width
            # (B, heads, H*W, hd) each.  On CPU one copy into (3, B, heads, H*W, hd) pays for itself: the CPU flash
            # kernel and the backward's GEMMs read rows 3*C apart in the strided views, and a vit_b global layer's
            # bias-chunk attention takes ~0.75 s on those against ~0.55 s after the copy in bf16 (RESULTS.md).
            qkv = qkv.reshape(batch, seq, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
            if qkv.device.type == "cpu":
                qkv = qkv.contiguous()
            query, key, value = qkv.unbind(0)
            out = rel_pos_attention(self, query, key, value, height, width, mode)
            out = out.transpose(1, 2).reshape(batch, height, width, channels)
        return _linear(self.proj, out), None


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``; for a plain frozen ``nn.Linear`` under autocast, with the weight cast cached.

    Autocast only caches its casts of leaf tensors that require grad, so a frozen encoder's weights are cast to bf16
    again in every forward (about 0.2 GB of traffic for vit_b, 1.3 GB for vit_h, plus one small op per weight).  The
    cache holds the same bf16 values autocast would compute; it is keyed on the weights' storage and version
    counter, so ``load_state_dict``/``.to()``/in-place edits invalidate it. Anything else (hooks, LoRA-style
    replacement modules, trainable weights, ``torch.compile`` tracing) takes the module's own forward.
    """
    dtype = _autocast_dtype(x.device.type)
    if (
        dtype is None
        or type(module) is not nn.Linear
        or module.weight.requires_grad
        or (module.bias is not None and module.bias.requires_grad)
        or module._forward_hooks
        or module._forward_pre_hooks
        or torch.compiler.is_compiling()
    ):
        return module(x)
    weight, bias = module.weight, module.bias
    key = (
        dtype,
        weight.device,
        weight.data_ptr(),
        weight._version,
        None if bias is None else (bias.data_ptr(), bias._version),
    )
    cached = module.__dict__.get("_losam_cast")
    if cached is None or cached[0] != key:
        # a normal tensor even when first called under inference_mode, so training can use it afterwards
        with torch.inference_mode(False), torch.no_grad():
            cached = (key, weight.to(dtype), None if bias is None else bias.to(dtype))
        module.__dict__["_losam_cast"] = cached
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.to(dtype), cached[1], cached[2])


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(mlp) is not SamMLPBlock or mlp._forward_hooks or mlp._forward_pre_hooks:
        return mlp(x)
    return _linear(mlp.lin2, mlp.act(_linear(mlp.lin1, x)))


def _window_parts(size: int, ws: int):
    """Split one grid axis into the part covered by whole windows and the remainder.

    Yields ``(grid slice, window-index slice, in-window slice, number of windows, tokens per window)``.
    """
    full, rem = divmod(size, ws)
    if full:
        yield slice(0, full * ws), slice(0, full), slice(None), full, ws
    if rem:
        yield slice(full * ws, size), slice(full, full + 1), slice(0, rem), 1, rem


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` with type promotion done by explicit (vectorised) conversions; same values as ``a + b``."""
    if a.dtype != b.dtype:
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dtype), b.to(dtype)
    return a + b


class _FastPatchEmbeddingsMixin:
    """``SamPatchEmbeddings`` whose (B, H, W, C) output is contiguous.

    The stock module returns ``conv(x).permute(0, 2, 3, 1)``, a channels-first tensor seen channels-last. Every
    elementwise op downstream then inherits that permuted layout (TensorIterator follows its first input), so the
    whole residual stream runs in a layout where adds are not vectorised and every LayerNorm/Linear copies its
    input first.  Running the convolution on a channels_last input gives the same values in a contiguous grid.
    """

    _losam_fast = True

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch_size, num_channels, height, width = pixel_values.shape
        if num_channels != self.num_channels:
            raise LoSamValueError(
                "Make sure that the channel dimension of the pixel values match with the one set in the configuration."
            )
        if height != self.image_size[0] or width != self.image_size[1]:
            raise LoSamValueError(
                f"Input image size ({height}*{width}) doesn't match model ({self.image_size[0]}*{self.image_size[1]})."
            )
        embeddings = self.projection(pixel_values.contiguous(memory_format=torch.channels_last))
        return embeddings.permute(0, 2, 3, 1).contiguous()


class _FastLayerMixin:
    """Forward of ``SamVisionLayer`` that hands the whole grid to the fast attention (windowing inside)."""

    _losam_fast = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not hidden_states.is_contiguous():
            # keep the residual stream contiguous (see _FastPatchEmbeddingsMixin); a no-op after the first layer
            hidden_states = hidden_states.contiguous()
        residual = hidden_states
        hidden_states = self.layer_norm1(hidden_states)
        if getattr(self.attn, "_losam_fast", False):
            hidden_states, _ = self.attn(hidden_states, window_size=self.window_size)
        else:  # attention replaced by something we do not know: stock windowing around it
            if self.window_size > 0:
                height, width = hidden_states.shape[1], hidden_states.shape[2]
                hidden_states, padding_shape = self.window_partition(hidden_states, self.window_size)
            hidden_states, _ = self.attn(hidden_states=hidden_states)
            if self.window_size > 0:
                hidden_states = self.window_unpartition(hidden_states, self.window_size, padding_shape, (height, width))
        # Under autocast the branches come back in bf16 while the residual stream stays float32. Converting first
        # gives the same values as type promotion, but runs vectorised (a mixed-dtype add on CPU does not).
        hidden_states = _add(residual, hidden_states)
        return _add(hidden_states, _mlp(self.mlp, self.layer_norm2(hidden_states)))


_FAST_CLASSES: dict[type, type] = {}


def _fast_class(cls: type, mixin: type) -> type:
    if getattr(cls, "_losam_fast", False):
        return cls
    if cls not in _FAST_CLASSES:
        # Subclass of the instance's own class: isinstance checks, parameters and state-dict keys are unchanged,
        # and GradientCheckpointingLayer re-wraps the new forward so transformers' checkpointing still applies.
        name = f"Fast{cls.__name__}"
        if name in globals() and getattr(globals()[name], "_losam_stock_class", None) is not cls:
            name = f"Fast{cls.__module__.replace('.', '_')}_{cls.__name__}"
        fast = type(name, (mixin, cls), {"__module__": __name__, "__qualname__": name, "_losam_stock_class": cls})
        globals()[name] = fast  # importable by name, so a pickled model (torch.save(model)) loads again
        _FAST_CLASSES[cls] = fast
    return _FAST_CLASSES[cls]


def _vision_layers(module: nn.Module) -> Iterator[SamVisionLayer]:
    for m in module.modules():
        if isinstance(m, SamVisionLayer):
            yield m


def enable_fast_path(
    encoder: nn.Module,
    attention: str = "auto",
    gradient_checkpointing: bool | None = None,
) -> nn.Module:
    """Switch every ``SamVisionLayer`` inside ``encoder`` to the fast path (in place; returns ``encoder``).

    Args:
        encoder: a ``SamVisionEncoder`` or any module containing ``SamVisionLayer`` instances (e.g. wrapped by a
            PEFT adapter as ``base_layer``).
        attention: ``"auto"`` (bias chunks on CPU in every dtype, with their chunked backward where gradients flow;
            folded SDPA on GPU and under ``torch.compile``), ``"fold"``, ``"bias_chunks"`` (on GPU with gradients
            it falls back to the fold) or ``"flex"`` (FlexAttention; meant for ``torch.compile`` on GPU).
        gradient_checkpointing: if set, turn activation checkpointing of each frozen block on/off (non-reentrant
            ``torch.utils.checkpoint``; only active in training mode with gradients enabled).  Useful for large
            batches: each block then keeps only its input for the backward pass.
    """
    if attention not in ATTENTION_MODES:
        raise LoSamValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    found = False
    for module in encoder.modules():
        if isinstance(module, SamPatchEmbeddings):
            module.__class__ = _fast_class(type(module), _FastPatchEmbeddingsMixin)
    for layer in _vision_layers(encoder):
        found = True
        layer.__class__ = _fast_class(type(layer), _FastLayerMixin)
        attn = layer.attn
        if isinstance(attn, SamVisionAttention):
            attn.__class__ = _fast_class(type(attn), _FastAttentionMixin)
            attn._losam_attention_mode = attention
        if gradient_checkpointing is not None:
            if not hasattr(layer, "_losam_stock_checkpointing"):
                layer._losam_stock_checkpointing = (
                    layer.__dict__.get("gradient_checkpointing", None),
                    layer.__dict__.get("_gradient_checkpointing_func", None),
                )
            layer.gradient_checkpointing = bool(gradient_checkpointing)
            if gradient_checkpointing:
                layer._gradient_checkpointing_func = functools.partial(
                    torch.utils.checkpoint.checkpoint, use_reentrant=False
                )
    if not found:
        raise LoSamValueError(f"{type(encoder).__name__} contains no SamVisionLayer")
    return encoder


def disable_fast_path(encoder: nn.Module, clear_cache: bool = True) -> nn.Module:
    """Restore transformers' stock forward on every ``SamVisionLayer`` inside ``encoder`` (in place).

    ``clear_cache=False`` keeps the fast path's cached bf16 weight casts (about half the encoder's float32 size) for
    switching back and forth, as the benchmark does; the stock forward never reads them.
    """
    for module in encoder.modules():
        if isinstance(module, SamPatchEmbeddings) and getattr(type(module), "_losam_fast", False):
            module.__class__ = type(module)._losam_stock_class
    for layer in _vision_layers(encoder):
        if getattr(type(layer), "_losam_fast", False):
            layer.__class__ = type(layer)._losam_stock_class
        if clear_cache:
            for module in layer.modules():
                module.__dict__.pop("_losam_cast", None)  # cached bf16 weight casts
        attn = layer.attn
        if getattr(type(attn), "_losam_fast", False):
            attn.__class__ = type(attn)._losam_stock_class
            attn.__dict__.pop("_losam_attention_mode", None)
        if hasattr(layer, "_losam_stock_checkpointing"):
            flag, func = layer.__dict__.pop("_losam_stock_checkpointing")
            for name, value in (("gradient_checkpointing", flag), ("_gradient_checkpointing_func", func)):
                if value is None:
                    layer.__dict__.pop(name, None)
                else:
                    setattr(layer, name, value)
    return encoder


def fast_path_enabled(encoder: nn.Module) -> bool:
    """True when every ``SamVisionLayer`` inside ``encoder`` runs the fast path (False if there are none)."""
    layers = list(_vision_layers(encoder))
    return bool(layers) and all(getattr(type(layer), "_losam_fast", False) for layer in layers)


# The fast classes of transformers' own modules exist from import on, so pickles of fast-path models unpickle in a
# fresh process.
for _cls, _mixin in (
    (SamVisionLayer, _FastLayerMixin),
    (SamVisionSdpaAttention, _FastAttentionMixin),
    (SamVisionAttention, _FastAttentionMixin),
    (SamPatchEmbeddings, _FastPatchEmbeddingsMixin),
):
    _fast_class(_cls, _mixin)
del _cls, _mixin
