"""Rollout sampling for PPO: batched, KV-cached, returning tokens and their log-probabilities.

Written by hand rather than through `generate` because rollouts dominate PPO time and `generate`
pays per step for what a rollout does not need (logits processors, stopping criteria objects,
cache bookkeeping, mask building, host syncs): on one H200 it spends 57 ms a step on a 0.5B model
whose weights read in well under 1 ms. Here one decode step is the decoder's own modules (so LoRA
layers and any Llama/Qwen2/Mistral-shaped checkpoint work unchanged) over a preallocated KV cache,
plus sampling on the device; on CUDA the step is captured once as a CUDA graph and replayed, so a
step costs its kernels and not the Python around them.

Shapes: prompts are left-padded to a common width P so every row's next token sits in column P + s
of the cache at step s; `key_valid` marks the cache columns a row may attend to (its prompt tokens
and every generated column). After a row samples EOS it keeps stepping (a static batch is what
makes graphs possible) but its tokens become padding, with log-prob 0 and mask 0.

Log-probs are those of the temperature-scaled distribution, log_softmax(logits / T), before top-p
filtering: the learner computes the same quantity, so rollout and update agree at T != 1.

On a CPU the fused path's prefill runs on the real prompt tokens only and each decode step is one
torch.compile'd graph with oneDNN-packed linears (genrec/rl/cpu_step.py): 3-4x `generate` there.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import torch
import torch.nn.functional as F

from genrec.rl.cpu_step import (
    _compiled_decode,
    _CompileFailed,
    _known_inputs,
    _onednn_available,
    _PackedWeights,
    _register_packed_linear,
    packed_linear,
)
from genrec.rl.sampling import _rope, sample_tokens

log = logging.getLogger("genrec.rl")


@dataclasses.dataclass
class Rollout:
    """Responses for a batch of prompts; tensors on the CPU, response columns trimmed to the longest."""

    prompts: list[list[int]]
    tokens: torch.Tensor  # (B, R) long, pad after the end
    logp: torch.Tensor  # (B, R) float32, 0 on padding
    mask: torch.Tensor  # (B, R) float32, 1 on response tokens (EOS included)
    eos: torch.Tensor  # (B,) bool: the response ended with EOS (else it hit max_new_tokens)
    seconds: float = 0.0  # wall time the sampling took where it ran (a merged rollout: its slowest part)

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1).long()


class UnsupportedModel(ValueError):
    """The model is not a Llama-shaped decoder this generator can drive (use `hf_generate_rollout`)."""


def decoder_parts(model: torch.nn.Module):
    """(causal LM, decoder) of an HF Llama/Qwen2/Mistral-style model, unwrapping a peft model."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(lm, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if decoder is None or not all(hasattr(decoder, n) for n in needed) or not hasattr(lm, "lm_head"):
        raise UnsupportedModel(f"{type(lm).__name__} is not a Llama-style decoder (embed_tokens, layers, norm, "
                               "rotary_emb, lm_head)")
    attn = decoder.layers[0].self_attn
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")):
        raise UnsupportedModel(f"{type(attn).__name__} has no q/k/v/o projections")
    if getattr(lm.config, "use_sliding_window", False) and getattr(lm.config, "sliding_window", None):
        raise UnsupportedModel("sliding-window attention is not implemented here")
    return lm, decoder


class RolloutGenerator:
    """Samples responses from a causal LM; keep one per model (the KV cache and graphs are reused).

    The model's weights may change between calls (weight sync): the cache and graphs read the
    parameters in place, so load new weights with `load_state_dict` / `copy_`, never by replacing
    the parameter tensors, or call `reset()` (also after writes through `.data`, which leave the
    version counters that tell when fused and packed copies are stale unchanged).

    `compile_cpu`: on a CPU, run each decode step as one torch.compile'd graph (see the module
    docstring; float32 Llama-style models with plain Linear layers and SiLU; others step eagerly).
    """

    def __init__(self, model: torch.nn.Module, *, pad_id: int, eos_id: int | None, cuda_graph: bool = True,
                 compile_cpu: bool = True):
        self.model = model
        self.lm, self.decoder = decoder_parts(model)
        self.pad_id, self.eos_id = pad_id, eos_id
        config = self.lm.config
        attn = self.decoder.layers[0].self_attn
        self.num_layers = len(self.decoder.layers)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.scaling = float(attn.scaling)
        self.use_cuda_graph = cuda_graph
        self.compile_cpu = compile_cpu
        self._packed = _PackedWeights(self)
        self.reset()

    def reset(self) -> None:
        self._cache: torch.Tensor | None = None  # (2, L, B, Hkv, T, D): keys, values
        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None
        self._fused: list[dict] | None = None
        self._fused_from: tuple | None = None  # (address, version) of the weights _fused copies
        self._graphs: dict = {}
        self._packed.clear()

    def _refresh_fused(self) -> None:
        """Per layer, q|k|v and gate|up weights concatenated into one matrix each, copied in place
        (CUDA graphs hold the buffers' addresses): a decode step then runs ~30 ops a layer instead
        of ~55, which is most of a step's time on small models. Only for plain nn.Linear layers
        with Llama's RMSNorm and gated MLP; anything else (LoRA layers, other norms) keeps calling
        the modules themselves. Skipped while the source weights are unchanged (same address and
        version), so the oneDNN-packed copies stay valid too."""
        fused, sources = [], []
        for layer in self.decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                       getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None), getattr(mlp, "down_proj", None)]
            norms = [layer.input_layernorm, layer.post_attention_layernorm]
            if (any(type(m) is not torch.nn.Linear for m in linears) or hasattr(attn, "q_norm")
                    or not all(hasattr(n, "variance_epsilon") for n in norms) or not hasattr(mlp, "act_fn")
                    or any(m.bias is not None for m in linears[4:])):
                self._fused = None
                return
            sources += [t for m in linears[:3] + linears[4:6] for t in (m.weight, m.bias) if t is not None]
        stamp = tuple((t.data_ptr(), t._version) for t in sources)
        if self._fused is not None and stamp == self._fused_from:
            return
        for layer in self.decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
            w = dict(qkv=torch.cat([q.weight, k.weight, v.weight]),
                     gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
            if q.bias is not None:
                w["qkv_bias"] = torch.cat([q.bias, k.bias, v.bias])
            fused.append(w)
        if self._fused is None or len(self._fused) != len(fused):
            self._fused = [{name: t.detach().clone() for name, t in w.items()} for w in fused]
        else:
            for old, new in zip(self._fused, fused):
                for name, t in new.items():
                    old[name].copy_(t)
        self._fused_from = stamp

    def _rope_for(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of every position < length, (length, D), so a step indexes rows instead of
        recomputing the rotary embedding."""
        if self._rope_table is None or self._rope_table[0].shape[0] < length:
            dummy = torch.zeros(1, 1, 1, dtype=self.lm.lm_head.weight.dtype, device=self.device)
            cos, sin = self.decoder.rotary_emb(dummy, torch.arange(length, device=self.device)[None])
            self._rope_table = (cos[0].contiguous(), sin[0].contiguous())
            self._graphs = {}
        return self._rope_table

    @property
    def device(self) -> torch.device:
        return self.lm.lm_head.weight.device

    # ------------------------------------------------------------------------------ public
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = True) -> Rollout:
        """Sample one response per prompt (lists of token ids). `seed` makes the draw repeatable
        (on CUDA graphs through the device's default generator, reseeded here)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        device, batch = self.device, len(prompts)
        width = max(len(p) for p in prompts)
        total = width + max_new_tokens
        graphs = self._replays_graphs(device)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        valid = torch.zeros((batch, width), dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            valid[row, width - len(prompt):] = True
        ids, valid = ids.to(device), valid.to(device)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)

        self._refresh_fused()
        compiled = self._runs_compiled(device)
        # CUDA graphs want one buffer size whatever the prompt width: round the cache length up. The
        # compiled step reads the cache up to the current column whatever its length (a dynamic
        # dimension); an odd multiple of 16 columns keeps the rows' starts off power-of-two strides
        # (which alias in the CPU caches: 256 columns cost it ~5% at batch 32).
        cache_len = _round_up(total, 256) if graphs else (_round_up(total, 16) | 16 if compiled else total)
        cache_k, cache_v = self._cache_for(batch, cache_len, reuse_longer=compiled)
        self._rope_for(cache_len)
        if graphs:  # capture first: its warm-up steps draw random numbers, and must not shift a seed's draw
            self._graph_for(batch, cache_len, temperature, top_p)
        generator = None
        if seed is not None:
            if graphs:
                torch.cuda.manual_seed(seed)
            else:
                generator = torch.Generator(device=device).manual_seed(seed)
        if device.type == "cpu" and self._fused is not None:
            self._pack_cpu_weights(batch)
            logits = packed_linear(self._prefill_packed(ids, positions, valid), self.lm.lm_head.weight,
                                   self.lm.lm_head.bias)
        else:
            logits = self.lm.lm_head(self._prefill(ids, positions, valid, cache_k, cache_v)[:, -1])
        token, logp = sample_tokens(logits, temperature, top_p, generator)

        tokens = torch.full((batch, max_new_tokens), self.pad_id, dtype=torch.long, device=device)
        logps = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
        alive = torch.zeros((batch, max_new_tokens), dtype=torch.bool, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        state = dict(token=token, logp=logp, finished=finished, position=positions[:, -1] + 1,
                     column=torch.tensor([width], device=device))
        self._record(state, tokens, logps, alive, 0, stop_at_eos)
        sampling = dict(temperature=temperature, top_p=top_p, generator=generator, stop_at_eos=stop_at_eos)
        if compiled:
            try:
                finished = self._decode_compiled(state, valid, tokens, logps, alive, width=width, **sampling)
            except _CompileFailed as error:
                log.warning("compiling the CPU decode step failed; stepping eagerly from now on: %s", error)
                self.compile_cpu = compiled = False
        if not compiled:
            finished = self._decode_eager(state, valid, cache_k, cache_v, tokens, logps, alive, width=width, **sampling)

        used = int(alive.sum(1).max()) if alive.any() else 1
        used = max(used, 1)
        eos = alive.any(1) & (finished if stop_at_eos else torch.zeros_like(finished))
        return Rollout(prompts=[list(p) for p in prompts], tokens=tokens[:, :used].cpu(),
                       logp=logps[:, :used].cpu(), mask=alive[:, :used].float().cpu(), eos=eos.cpu())

    def _decode_eager(self, state, valid, cache_k, cache_v, tokens, logps, alive, *, width, temperature, top_p,
                      generator, stop_at_eos) -> torch.Tensor:
        """Steps 1.. of `generate`: `_decode_step` per step, or its CUDA graph's replay; returns the
        rows' finished flags."""
        batch, max_new_tokens = tokens.shape
        cache_len, device = cache_k.shape[3], cache_k.device
        key_valid = torch.zeros((batch, cache_len), dtype=torch.bool, device=device)
        key_valid[:, :width] = valid
        state = dict(state, key_valid=key_valid)
        graph = None
        if self._replays_graphs(device):  # the graph's own buffers are the state: no copies per step
            graph, static = self._graph_for(batch, cache_len, temperature, top_p)
            for name in ("token", "logp", "position", "column", "key_valid"):
                static[name].copy_(state[name])
            state = dict(static, finished=state["finished"])
        steps = 1
        while steps < max_new_tokens:
            if stop_at_eos and steps % (16 if device.type == "cuda" else 1) == 0 and bool(state["finished"].all()):
                break
            if graph is not None:
                graph.replay()
            else:
                self._decode_step(state, cache_k, cache_v, temperature, top_p, generator, kv_len=width + steps)
            self._record(state, tokens, logps, alive, steps, stop_at_eos)
            steps += 1
        return state["finished"]

    def _decode_compiled(self, state, valid, tokens, logps, alive, *, width, temperature, top_p, generator,
                         stop_at_eos) -> torch.Tensor:
        """`_decode_eager` on a CPU through `_compiled_decode`: per step one graph call, one random
        draw and one cache write. Raises _CompileFailed if the first call does (having changed
        nothing: the caller can step eagerly from the same state and random stream)."""
        kv = self._cache
        batch, max_new_tokens = tokens.shape
        # The graph reads columns [0, column) only, each a prompt column or one already generated:
        # mark them all valid up front, so no mask update per step.
        key_valid = torch.ones((batch, kv.shape[4]), dtype=torch.bool)
        key_valid[:, :width] = valid
        cos_table, sin_table = self._rope_table
        weights, options = self._decode_inputs(temperature, top_p, stop_at_eos)
        step_fn = _compiled_decode()
        token, position, finished = state["token"], state["position"], state["finished"]
        can_stop = stop_at_eos and self.eos_id is not None  # else no row ever finishes
        records = []

        def step(column: int, u: torch.Tensor, first: bool = False):
            cache, key_mask = kv[..., :column, :], key_valid[:, :column]
            if first:
                if column < 2:  # dynamo would specialise a length of 1: read one more column, masked
                    key_mask = key_valid.clone()
                    key_mask[:, column:] = False
                    cache, key_mask = kv[..., :2, :], key_mask[:, :2]
                # one graph for every prompt width and step (an error, so a fallback, if it cannot be)
                for tensor, dim in ((cache, 4), (key_mask, 1), (cos_table, 0), (sin_table, 0)):
                    torch._dynamo.mark_dynamic(tensor, dim)
            out = step_fn(token, position, finished, key_mask, cache, u, cos_table, sin_table, *weights, **options)
            kv[..., column:column + 1, :] = out[-1]
            records.append(out[3:6])
            return out[:3]

        if max_new_tokens > 1 and not (can_stop and bool(finished.all())):
            rng = _rng_state(generator)
            try:  # the first call compiles (or finds the graph for these shapes)
                token, position, finished = step(width, torch.rand((batch, 1), generator=generator), first=True)
            except Exception as error:
                _set_rng_state(generator, rng)
                raise _CompileFailed(f"{type(error).__name__}: {error}") from error
            for column in range(width + 1, width + max_new_tokens - 1):
                if can_stop and bool(finished.all()):
                    break
                u = torch.rand((batch, 1), generator=generator)
                try:  # the call before had the same inputs but for the cache length (a dynamic dimension)
                    with _known_inputs():
                        token, position, finished = step(column, u)
                except RuntimeError:  # dynamo wants to recompile after all (raised before running): let it
                    token, position, finished = step(column, u)
        if records:
            end = len(records) + 1
            for target, column in zip((tokens, logps, alive), zip(*records)):
                target[:, 1:end] = torch.stack(column, dim=1)
        return finished

    # ------------------------------------------------------------------------------ pieces
    def _replays_graphs(self, device: torch.device) -> bool:
        """Whether decode steps 1.. replay one captured CUDA graph (`_graph_for`)."""
        return self.use_cuda_graph and device.type == "cuda"

    def _one_op_attention(self, device: torch.device) -> bool:
        """Whether `_decode_step` attends with one fused op (on a CPU, where the op count is the
        step's cost) rather than plain matmul/softmax ops, which CUDA graphs capture whatever
        attention kernels the build has."""
        return device.type == "cpu"

    def _runs_compiled(self, device: torch.device) -> bool:
        """Whether this call steps through `_compiled_decode` (after `_refresh_fused`)."""
        if not (self.compile_cpu and device.type == "cpu" and self._fused is not None):
            return False
        return (self.lm.lm_head.weight.dtype == torch.float32 and self._silu_mlp()
                and self._norm_eps() is not None)

    def _silu_mlp(self) -> bool:
        """Whether the gated MLP's activation is SiLU (Llama, Qwen2, Mistral), which oneDNN fuses."""
        return type(self.decoder.layers[0].mlp.act_fn).__name__ in ("SiLU", "SiLUActivation")

    def _norm_eps(self) -> float | None:
        """The RMSNorms' common epsilon (None if they differ: the compiled step assumes one)."""
        norms = [n for layer in self.decoder.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        eps = {float(getattr(n, "variance_epsilon", getattr(n, "eps", -1.0))) for n in norms + [self.decoder.norm]}
        return eps.pop() if len(eps) == 1 else None

    def _pack_cpu_weights(self, batch: int) -> None:
        """oneDNN-packed copies of the fused path's linear weights (see `packed_linear`)."""
        _register_packed_linear()
        if not _onednn_available() or self.lm.lm_head.weight.dtype != torch.float32:
            return  # packed_linear then stays plain F.linear
        weights = [self.lm.lm_head.weight]
        for layer, w in zip(self.decoder.layers, self._fused):
            mlp = layer.mlp
            weights += [w["qkv"], layer.self_attn.o_proj.weight, w["gate_up"], mlp.gate_proj.weight, mlp.up_proj.weight,
                        mlp.down_proj.weight]
        self._packed.pack(weights, batch)

    def _decode_inputs(self, temperature: float, top_p: float, stop_at_eos: bool) -> tuple[tuple, dict]:
        """(tensor arguments, constant keyword arguments) of `_decode_cpu` after its per-step ones."""
        layers = []
        for layer, w in zip(self.decoder.layers, self._fused):
            o_proj = layer.self_attn.o_proj
            layers.append((layer.input_layernorm.weight, w["qkv"], w.get("qkv_bias"), o_proj.weight, o_proj.bias,
                           layer.post_attention_layernorm.weight, w["gate_up"], layer.mlp.down_proj.weight))
        head = self.lm.lm_head
        weights = (self.decoder.embed_tokens.weight, layers, self.decoder.norm.weight, head.weight, head.bias)
        stops = stop_at_eos and self.eos_id is not None
        options = dict(eps=self._norm_eps(), scaling=self.scaling, num_heads=self.num_heads,
                       num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, temperature=float(temperature),
                       top_p=float(top_p), pad_id=self.pad_id, eos_id=self.eos_id if stops else -1)
        return weights, options

    def _record(self, state, tokens, logps, alive, step, stop_at_eos) -> None:
        """Store step `step`'s sample; rows already finished record padding."""
        done = state["finished"]
        tokens[:, step] = torch.where(done, self.pad_id, state["token"])
        logps[:, step] = torch.where(done, 0.0, state["logp"])
        alive[:, step] = ~done
        if stop_at_eos and self.eos_id is not None:
            done |= state["token"] == self.eos_id

    def _cache_for(self, batch: int, length: int, reuse_longer: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values), each (L, B, Hkv, T, D): two halves of one buffer, so that the compiled
        step's caller writes a step's keys and values with one copy. `reuse_longer`: keep a buffer
        with more than `length` columns (the compiled step reads only the columns it needs)."""
        shape = (2, self.num_layers, batch, self.num_kv_heads, length, self.head_dim)
        current = None if self._cache is None else self._cache.shape
        if reuse_longer and current is not None and current[:4] + current[5:] == shape[:4] + shape[5:] \
                and current[4] >= length:
            shape = current
        if self._cache is None or self._cache.shape != shape:
            self._cache = torch.zeros(shape, dtype=self.lm.lm_head.weight.dtype, device=self.device)
            self._graphs = {}  # graphs point at the old buffers
        return self._cache[0], self._cache[1]

    def _layer_qkv(self, layer, x, cos, sin):
        attn = layer.self_attn
        b, t, _ = x.shape
        q = attn.q_proj(x).view(b, t, -1, self.head_dim)
        k = attn.k_proj(x).view(b, t, -1, self.head_dim)
        v = attn.v_proj(x).view(b, t, -1, self.head_dim)
        if hasattr(attn, "q_norm"):  # Qwen3-style per-head norms
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        return _rope(q, cos, sin), _rope(k, cos, sin), v

    def _prefill(self, ids, positions, valid, cache_k, cache_v) -> torch.Tensor:
        """Run the prompts, fill cache columns [0, P), return the final hidden states (B, P, H)."""
        b, p = ids.shape
        h = self.decoder.embed_tokens(ids)
        cos, sin = self.decoder.rotary_emb(h, positions)
        causal = torch.ones((p, p), dtype=torch.bool, device=ids.device).tril()
        # A left-pad query sees no valid key; letting it see itself avoids NaNs it never passes on.
        mask = (causal & valid[:, None, None, :]) | torch.eye(p, dtype=torch.bool, device=ids.device)
        rep = self.num_heads // self.num_kv_heads
        for i, layer in enumerate(self.decoder.layers):
            x = layer.input_layernorm(h)
            q, k, v = self._layer_qkv(layer, x, cos, sin)
            cache_k[i, :, :, :p] = k
            cache_v[i, :, :, :p] = v
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
            h = h + layer.self_attn.o_proj(out.transpose(1, 2).reshape(b, p, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.decoder.norm(h)

    def _prefill_packed(self, ids, positions, valid) -> torch.Tensor:
        """`_prefill` for the fused CPU path, returning only the final hidden state at each row's last
        position (B, H). Norms, linears and the MLP run on the N prompt tokens packed without their
        left padding (48-80-token prompts are 20% padding at width 80); attention runs on them laid
        out right-padded, where the causal mask alone keeps each token within its prompt (half the
        work of an explicit (B, P, P) mask); K/V go straight into the cache's left-padded columns.
        In the last layer only each row's last position goes past the K/V."""
        b, p = ids.shape
        heads, groups, d = self.num_heads, self.num_kv_heads, self.head_dim
        lengths = valid.sum(1)
        rows, cols = valid.nonzero(as_tuple=True)  # each prompt token's place in the left-padded layout
        right = rows * p + cols - (p - lengths)[rows]  # ... and in the right-padded (B * P) one
        last = lengths.cumsum(0) - 1  # each row's last token in packed order
        h = self.decoder.embed_tokens(ids[rows, cols])  # (N, H)
        cos_table, sin_table = self._rope_table
        at = positions[rows, cols]
        cos, sin = cos_table[at].unsqueeze(1), sin_table[at].unsqueeze(1)  # (N, 1, D)
        half = d // 2  # rotate_half(x) * sin == roll(x, half) * sin with its first half negated
        sin_signed = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        cache_at = self._cache.permute(2, 4, 0, 1, 3, 5)  # (B, T, 2, L, Hkv, D): K and V of a column
        swish = self._silu_mlp()
        for i, layer in enumerate(self.decoder.layers):
            w, mlp = self._fused[i], layer.mlp
            qkv = packed_linear(_rms_norm(h, layer.input_layernorm), w["qkv"], w.get("qkv_bias"))
            qkv = qkv.view(-1, heads + 2 * groups, d)
            qk = qkv[:, : heads + groups]
            qkv[:, : heads + groups] = torch.addcmul(qk * cos, qk.roll(half, dims=-1), sin_signed)
            # (a row's pad columns keep earlier finite values: every reader masks them out)
            cache_at[rows, cols, :, i] = qkv[:, heads:].unflatten(1, (2, groups))
            if i + 1 < self.num_layers:
                padded = qkv.new_zeros((b * p, heads + 2 * groups, d)).index_copy_(0, right, qkv)
                padded = padded.view(b, p, heads + 2 * groups, d).transpose(1, 2)  # (B, heads, P, D)
                out = F.scaled_dot_product_attention(padded[:, :heads], padded[:, heads: heads + groups],
                                                     padded[:, heads + groups:], is_causal=True, scale=self.scaling,
                                                     enable_gqa=heads > groups)
                out = out.transpose(1, 2).reshape(b * p, heads * d)[right]
            else:
                keys, values = self._cache[0, i, :, :, :p], self._cache[1, i, :, :, :p]
                out = F.scaled_dot_product_attention(qkv[last, :heads].unsqueeze(2), keys, values,
                                                     attn_mask=valid[:, None, None, :], scale=self.scaling,
                                                     enable_gqa=heads > groups).reshape(b, heads * d)
                h = h[last]
            h = h + packed_linear(out, layer.self_attn.o_proj.weight, layer.self_attn.o_proj.bias)
            x = _rms_norm(h, layer.post_attention_layernorm)
            if swish:
                act = packed_linear(x, mlp.up_proj.weight, mul=packed_linear(x, mlp.gate_proj.weight, silu=True))
            else:
                gate, up = packed_linear(x, w["gate_up"]).chunk(2, dim=-1)
                act = mlp.act_fn(gate) * up
            h = h + packed_linear(act, mlp.down_proj.weight)
        return self.decoder.norm(h)

    def _decode_step(self, state, cache_k, cache_v, temperature, top_p, generator, kv_len: int) -> None:
        """Feed each row's last token, write its K/V at `column`, sample the next token.

        Attention is written out for one query per row: q is grouped by KV head (B, Hkv, rep, D), so
        grouped-query models read their cache once instead of repeating it per query head.
        """
        token, column = state["token"], state["column"]
        b = token.shape[0]
        state["key_valid"].index_fill_(1, column, True)
        h = self.decoder.embed_tokens(token.view(b, 1))
        cos_table, sin_table = self._rope_table
        cos, sin = cos_table[state["position"]].unsqueeze(1), sin_table[state["position"]].unsqueeze(1)  # (B, 1, D)
        key_mask = state["key_valid"][:, None, None, :kv_len]
        rep, hkv, d = self.num_heads // self.num_kv_heads, self.num_kv_heads, self.head_dim
        for i, layer in enumerate(self.decoder.layers):
            if self._fused is not None:
                w = self._fused[i]
                x = _rms_norm(h, layer.input_layernorm)
                qkv = F.linear(x, w["qkv"], w.get("qkv_bias")).view(b, 1, self.num_heads + 2 * hkv, d).transpose(1, 2)
                qk = _rope(qkv[:, : self.num_heads + hkv], cos, sin)  # q and k rotate together
                q, k, v = qk[:, : self.num_heads], qk[:, self.num_heads:], qkv[:, self.num_heads + hkv:]
            else:
                x = layer.input_layernorm(h)
                q, k, v = self._layer_qkv(layer, x, cos, sin)
            cache_k[i].index_copy_(2, column, k)
            cache_v[i].index_copy_(2, column, v)
            keys, values = cache_k[i, :, :, :kv_len], cache_v[i, :, :, :kv_len]
            if self._one_op_attention(token.device):
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=key_mask, scale=self.scaling,
                                                     enable_gqa=rep > 1).reshape(b, 1, self.num_heads * d)
            else:
                q = q.reshape(b, hkv, rep, d)
                scores = torch.matmul(q, keys.transpose(-1, -2)).float() * self.scaling
                weights = torch.softmax(scores.masked_fill(~key_mask, float("-inf")), dim=-1).to(values.dtype)
                out = torch.matmul(weights, values).reshape(b, 1, self.num_heads * d)
            h = h + layer.self_attn.o_proj(out)
            if self._fused is not None:
                gate, up = F.linear(_rms_norm(h, layer.post_attention_layernorm), w["gate_up"]).chunk(2, dim=-1)
                h = h + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
            else:
                h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = self.lm.lm_head(self.decoder.norm(h)[:, -1])
        new_token, new_logp = sample_tokens(logits, temperature, top_p, generator)
        state["token"].copy_(new_token)
        state["logp"].copy_(new_logp)
        state["position"].add_(1)
        column.add_(1)

    def _graph_for(self, batch: int, cache_len: int, temperature: float, top_p: float):
        """(graph, static buffers): `_decode_step` captured once as a CUDA graph over static
        buffers (token, logp, position, column, key_valid) that replays read and advance in place."""
        key = (batch, cache_len, temperature, top_p)
        if key not in self._graphs:
            cache_k, cache_v = self._cache[0], self._cache[1]
            device = self.device
            static = dict(token=torch.zeros(batch, dtype=torch.long, device=device),
                          logp=torch.zeros(batch, dtype=torch.float32, device=device),
                          position=torch.zeros(batch, dtype=torch.long, device=device),
                          column=torch.full((1,), cache_len - 1, dtype=torch.long, device=device),
                          key_valid=torch.zeros((batch, cache_len), dtype=torch.bool, device=device))
            # The warm-up steps write their K/V into the LAST cache column, which neither the prefill
            # nor any real step writes (the cache has at least one column more than a call needs),
            # and no row attends to a column before a real step has written it (key_valid); the
            # caller copies the real state into the buffers before the first replay.
            graph = _capture_cuda_graph(
                lambda state: self._decode_step(state, cache_k, cache_v, temperature, top_p, None, kv_len=cache_len),
                static)
            self._graphs[key] = (graph, static)
        return self._graphs[key]


def _capture_cuda_graph(step, static: dict) -> torch.cuda.CUDAGraph:
    """`step(static)` captured as a CUDA graph, after two warm-up steps on copies of the buffers on a
    side stream (as torch.cuda.graphs asks). Replaying the graph runs the step's kernels on `static`."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step({name: buffer.clone() for name, buffer in static.items()})
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(static)
    return graph


def _rng_state(generator: torch.Generator | None) -> torch.Tensor:
    return generator.get_state() if generator is not None else torch.get_rng_state()


def _set_rng_state(generator: torch.Generator | None, state: torch.Tensor) -> None:
    if generator is not None:
        generator.set_state(state)
    else:
        torch.set_rng_state(state)


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """Llama's RMSNorm in one fused op, in float32 like the module, then scaled in the input dtype."""
    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon).to(x.dtype)
    return norm.weight * normed


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), prompts right-aligned so every row's next token sits in the last column."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def hf_generate_rollout(model, prompts: list[list[int]], *, pad_id: int, eos_id: int | None, max_new_tokens: int,
                        temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> Rollout:
    """The same Rollout through transformers' `generate` (any architecture; slower). Log-probs are
    recomputed from the returned scores at the same temperature, before top-p."""
    device = next(model.parameters()).device
    ids, attention = left_pad(prompts, pad_id, device)
    width = ids.shape[1]
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=attention, do_sample=True,
                         temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                         pad_token_id=pad_id, eos_token_id=eos_id, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[:, width:]
    logits = torch.stack(out.logits, dim=1)[:, : tokens.shape[1]]
    logp = torch.log_softmax(logits.float() / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if eos_id is None:
        mask = torch.ones_like(tokens, dtype=torch.bool)
    else:
        is_eos = tokens == eos_id
        mask = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # up to and including the first EOS
    eos = (tokens == eos_id).any(1) if eos_id is not None else torch.zeros(len(prompts), dtype=torch.bool)
    tokens = torch.where(mask, tokens, pad_id)
    return Rollout(prompts=[list(p) for p in prompts], tokens=tokens.cpu(), logp=(logp * mask).cpu(),
                   mask=mask.float().cpu(), eos=eos.cpu())
