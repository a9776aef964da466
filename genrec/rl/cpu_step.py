"""The CPU decode path of genrec.rl.rollout.RolloutGenerator.

On a CPU (float32 Llama-style models with plain Linear layers) three things decide the speed; on
the 2-core AMD EPYC of bench/ppo_throughput.py they take a rollout from 1.4-1.8x the speed of
`generate` to 3-4.2x (bench/results/ppo_throughput.md):
- large linears run through oneDNN with weights packed once per weight version (`packed_linear`):
  MKL's fp32 GEMM runs these shapes at half oneDNN's speed there (32x128 @ 128x4096: 0.35 vs
  0.15 ms). The packed copies take as much memory as the weights;
- the prefill runs norms, linears and MLPs on the prompt tokens alone (no left padding), attention
  on them right-padded under a plain causal mask, and in the last layer only the K/V past each
  row's last position (`RolloutGenerator._prefill_packed`);
- each decode step is one torch.compile'd graph (`_decode_cpu`) instead of ~100 eager ops whose
  dispatch cost more than their kernels. It only reads the KV cache (a graph that writes an input
  copies it whole each step); the caller writes the new column. Compiling takes 5-20 s once per
  process and batch size (`compile_cpu=False` keeps the eager step; a failed compile falls back to
  it with a warning). What remains of a step at batch 32 is about half reading the KV cache in
  attention, which no kernel choice changes, and a third the linears.
"""
from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F

from genrec.rl.sampling import _rope, _sample_blocked, _sample_with_uniform

# ------------------------------------------------------------------------------ oneDNN linears
# weight data_ptr -> (weight, its version when packed, oneDNN-packed copy). Entries belong to the
# generator that packed them and leave with it (`_PackedWeights`).
_PACKED: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
_LINEAR_LIB: torch.library.Library | None = None
# A oneDNN call costs ~10 us whatever its size (MKL's ~1.5 us) plus ~4 us through the op: below about
# 2^20 multiply-adds (rows x out x in) MKL wins, e.g. for the 128x128 o_proj up to batch 32.
_ONEDNN_MIN_WORK = 1 << 20


def _onednn_available() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _packed_linear_impl(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, silu: bool = False,
                        mul: torch.Tensor | None = None) -> torch.Tensor:
    entry = _PACKED.get(w.data_ptr())
    packed = entry is not None and entry[1] == w._version and entry[0].shape == w.shape and x.dtype == torch.float32
    if not packed or (silu and mul is not None):  # not packed, or the weight changed since: always correct
        out = F.silu(F.linear(x, w, b)) if silu else F.linear(x, w, b)
        return out if mul is None else out * mul
    rows = x.reshape(-1, x.shape[-1])
    if mul is None:
        out = torch.ops.mkldnn._linear_pointwise(rows, entry[2], b, "swish" if silu else "none", [], "")
    else:
        out = torch.ops.mkldnn._linear_pointwise.binary(rows, mul.reshape(rows.shape[0], -1), entry[2], b, "mul")
    return out.view(*x.shape[:-1], w.shape[0])


def _register_packed_linear() -> None:
    """Define torch.ops.genrec.packed_linear (once per process): an op rather than a Python call so
    that a compiled graph calls it as an opaque kernel. Inductor itself only sends linears to oneDNN
    when the weights are frozen constants, which they cannot be here (PPO updates them in place)."""
    global _LINEAR_LIB
    if _LINEAR_LIB is None:
        lib = torch.library.Library("genrec", "FRAGMENT")
        lib.define("packed_linear(Tensor x, Tensor w, Tensor? b, bool silu=False, Tensor? mul=None) -> Tensor")
        lib.impl("packed_linear", _packed_linear_impl, "CPU")
        torch.library.register_fake("genrec::packed_linear",
                                    lambda x, w, b, silu=False, mul=None: x.new_empty((*x.shape[:-1], w.shape[0])),
                                    lib=lib)
        _LINEAR_LIB = lib


def packed_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, silu: bool = False,
                  mul: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, then SiLU if `silu`, then times `mul` if given, through w's oneDNN-packed copy when
    `_PackedWeights.pack` made one for w as it is now; oneDNN then fuses the SiLU or the product
    into the matmul (in a prefill, a SiLU over a strided half of the gate|up output cost as much as
    the matmul)."""
    return torch.ops.genrec.packed_linear(x, w, b, silu, mul)


class _PackedWeights:
    """The weights one generator packed for oneDNN; repacks only those whose version moved."""

    def __init__(self, owner) -> None:
        self.keys: list[int] = []
        weakref.finalize(owner, _drop_packed, self.keys)

    def pack(self, weights: list[torch.Tensor], batch: int) -> None:
        for w in weights:
            key = w.data_ptr()
            entry = _PACKED.get(key)
            if entry is not None and entry[0] is w and entry[1] == w._version:
                continue
            _PACKED[key] = (w, w._version, torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch))
            if key not in self.keys:
                self.keys.append(key)

    def clear(self) -> None:
        _drop_packed(self.keys)


def _drop_packed(keys: list[int]) -> None:
    for key in keys:
        _PACKED.pop(key, None)
    keys.clear()


# ------------------------------------------------------------------------------ the compiled decode step
def _attend_one(q, keys, values, key_mask, k_new, v_new, scaling: float) -> torch.Tensor:
    """Attention of one query per row: q (B, H, D) over cache columns keys/values (B, Hkv, T, D)
    where key_mask (B, T), plus the row's own new key/value (B, Hkv, D), which is not in the cache
    yet. q is grouped by KV head (B, Hkv, rep, D) so grouped-query models read the cache once."""
    b, heads, d = q.shape
    groups = keys.shape[1]
    q = q.view(b, groups, heads // groups, d)
    k_new, v_new = k_new.unsqueeze(2), v_new.unsqueeze(2)  # (B, Hkv, 1, D)
    s_cache = torch.matmul(q, keys.transpose(-1, -2)) * scaling  # (B, Hkv, rep, T)
    s_cache = s_cache.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    s_new = (q * k_new).sum(-1, keepdim=True) * scaling  # (B, Hkv, rep, 1)
    top = torch.maximum(s_cache.amax(-1, keepdim=True), s_new)
    p_cache, p_new = (s_cache - top).exp(), (s_new - top).exp()
    out = torch.matmul(p_cache, values) + p_new * v_new
    return (out / (p_cache.sum(-1, keepdim=True) + p_new)).reshape(b, heads * d)


def _decode_cpu(token, position, done, key_mask, cache, u, cos_table, sin_table, embed, layers, norm_w, head_w,
                head_b, *, eps: float, scaling: float, num_heads: int, num_kv_heads: int, head_dim: int,
                temperature: float, top_p: float, pad_id: int, eos_id: int):
    """One decode step as a pure function (what `_compiled_decode` compiles): the arithmetic of
    `RolloutGenerator._decode_step`'s fused path (at top_p = 1 with `_sample_blocked`). cache
    (2, L, B, Hkv, T, D) holds columns [0, T) and is only read; key_mask (B, T) marks the ones each
    row sees. Returns (next token, position + 1, finished after it, token and log-prob to record
    (padding once finished), whether the row was live, the new K/V (2, L, B, Hkv, 1, D) for the
    caller to write at column T)."""
    b = token.shape[0]

    def linear(x, w, bias=None):  # decided while tracing: the shapes are static
        return (packed_linear if b * w.shape[0] * w.shape[1] >= _ONEDNN_MIN_WORK else F.linear)(x, w, bias)

    h = F.embedding(token, embed)
    cos, sin = cos_table[position].unsqueeze(1), sin_table[position].unsqueeze(1)  # (B, 1, D)
    new_kv = []
    for i, (ln1, w_qkv, b_qkv, w_o, b_o, ln2, w_gate_up, w_down) in enumerate(layers):
        x = ln1 * F.rms_norm(h, (h.shape[-1],), eps=eps)
        qkv = linear(x, w_qkv, b_qkv).view(b, num_heads + 2 * num_kv_heads, head_dim)
        qk = _rope(qkv[:, : num_heads + num_kv_heads].unsqueeze(2), cos, sin).squeeze(2)  # q and k rotate together
        q, k, v = qk[:, :num_heads], qk[:, num_heads:], qkv[:, num_heads + num_kv_heads:]
        new_kv.append(torch.stack([k, v]))
        h = h + linear(_attend_one(q, cache[0, i], cache[1, i], key_mask, k, v, scaling), w_o, b_o)
        gate, up = linear(ln2 * F.rms_norm(h, (h.shape[-1],), eps=eps), w_gate_up).chunk(2, dim=-1)
        h = h + linear(F.silu(gate) * up, w_down)
    logits = linear(norm_w * F.rms_norm(h, (h.shape[-1],), eps=eps), head_w, head_b)
    if top_p < 1.0:
        new_token, new_logp = _sample_with_uniform(logits, temperature, top_p, u)
    else:
        new_token, new_logp = _sample_blocked(logits, temperature, u)
    record_token = torch.where(done, pad_id, new_token)
    record_logp = torch.where(done, 0.0, new_logp)
    return (new_token, position + 1, done | (new_token == eos_id), record_token, record_logp, ~done,
            torch.stack(new_kv, dim=1).unsqueeze(4))


_COMPILED_DECODE = None


def _compiled_decode():
    """`_decode_cpu` under torch.compile, shared by all generators (dynamo keys the graphs by input
    shapes: one per batch size and sampling setting; the cache length is a dynamic dimension).
    Inductor's default Python wrapper (its C++ one measured within noise of it here, and its on-disk
    cache keeps calls of `packed_linear` serialized with the op's schema at compile time), without
    its size and alignment asserts on every input and op output (5-7% of a step at batch 8; the
    inputs are built by `_decode_compiled` alone)."""
    global _COMPILED_DECODE
    if _COMPILED_DECODE is None:
        _COMPILED_DECODE = torch.compile(_decode_cpu, fullgraph=True, dynamic=False,
                                         options={"size_asserts": False, "alignment_asserts": False})
    return _COMPILED_DECODE


class _CompileFailed(RuntimeError):
    pass


def _known_inputs():
    """Context in which dynamo checks only the guards telling its graphs for a function apart (other
    batch sizes, sampling settings), not those that hold for a call like the previous one: ~5% of a
    small batch's step. Should a graph not fit after all, dynamo raises instead of recompiling."""
    try:
        return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
    except (AttributeError, TypeError):  # an older torch: check them all
        return contextlib.nullcontext()
