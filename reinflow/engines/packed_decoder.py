"""The `hf` engine's forward pass: one pass over a packed ``[tokens, hidden]`` batch of mixed
prefill and decode tokens, with the model's own weights laid out for speed.

Speed on CPU (see ``bench/rollout_engine.py``): a decode step is bound by streaming the weights
through GEMMs with a few rows, where MKL's ``nn.Linear`` re-packs every weight on every call. Here
q/k/v and gate/up are fused and every weight (lm_head included) is packed once for oneDNN
(``torch.ops.mkldnn._reorder_linear_weight``): about 2x faster than ``nn.Linear`` at 16 rows; the
residual adds after o_proj and down_proj are the GEMMs' post-ops. Elsewhere (GPU, non-fp32) the
fused weights go through ``F.linear``. Decode attention (fp32) is two batched matmuls and a softmax
over each row's cache row, with one additive mask a pass shared by all layers. Embeddings, rotary
tables, norm weights and activations are the model's own. Keys/values are written into the
`reinflow.engines.kv_cache.StaticKVCache` in place (``index_copy_``). The lm_head runs on the last
position of each sequence only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reinflow.engines.kv_cache import StaticKVCache


class FusedLinear:
    """``x @ weight.T + bias`` for several fused ``nn.Linear`` layers (outputs concatenated).

    With ``packed_rows`` (CPU fp32) the fused weight is packed once for oneDNN: about 2x faster than
    MKL's ``nn.Linear`` (which re-packs the weight on every call) at 4-16 rows, ~25% slower for a
    single row (where MKL uses GEMV), and a row's result is bit-identical whatever the number of rows,
    which keeps seeded sampling independent of the batch. Otherwise the fused weight goes through
    ``F.linear``.
    """

    def __init__(self, linears: list[torch.nn.Linear], packed_rows: int | None) -> None:
        weight = torch.cat([m.weight.detach() for m in linears]) if len(linears) > 1 else linears[0].weight.detach()
        self.bias = None
        if any(m.bias is not None for m in linears):
            self.bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                                   for m in linears])
        self.packed = packed_rows is not None
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, packed_rows) if self.packed else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)`` as a new tensor; packed, the add is a oneDNN post-op of the GEMM
        (bit-identical to the separate add, one pass over the output fewer)."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")
        return residual + F.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class Prefill:
    """One admitted prompt in a pass: its first ``reused`` tokens' keys/values were copied into
    ``slot`` from another row; the rest (``length - reused`` tokens from packed index ``start``) run."""

    slot: int
    start: int
    reused: int
    length: int
    mask: torch.Tensor | None
    """[new tokens, length] causal mask over the reused prefix and the new tokens (None: no prefix)."""

    @property
    def new(self) -> int:
        return self.length - self.reused


@dataclass
class Plan:
    """What one pass computes. Token order: ``decode_rows`` decode tokens, then each prefill's new tokens."""

    decode_rows: int
    decode_positions: torch.Tensor
    """[decode_rows] the column each decode token writes (= its row's cached length)."""
    width: int
    """Columns the decode rows attend over (max position + 1, rounded up to `WIDTH_MULTIPLE`)."""
    prefills: list[Prefill]


@dataclass(frozen=True)
class DecodeInputs:
    """What every layer's decode attention shares in a pass (built once, in `PackedDecoder.forward`)."""

    cache_index: torch.Tensor
    """Where the decode rows' keys/values go: `StaticKVCache.flat_index` of their positions."""
    bias: torch.Tensor
    """[decode_rows, 1, 1, width] additive mask: 0 up to a row's position, -inf after it."""

    @classmethod
    def of(cls, plan: Plan, cache: StaticKVCache, dtype: torch.dtype) -> DecodeInputs:
        positions = plan.decode_positions
        beyond = torch.arange(plan.width, device=positions.device)[None, :] > positions[:, None]
        bias = torch.zeros(beyond.shape, dtype=dtype, device=positions.device).masked_fill_(beyond, -torch.inf)
        return cls(cache.flat_index(positions), bias[:, None, None, :])


@dataclass
class LayerWeights:
    """One decoder layer as the packed forward uses it."""

    qkv: FusedLinear
    o: FusedLinear
    gate_up: FusedLinear
    down: FusedLinear
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    eps: float
    layer: torch.nn.Module
    """The model's own layer (its activation, and Qwen3's q/k norms)."""


class PackedDecoder:
    """The model's forward pass over a packed batch of mixed prefill and decode tokens.

    Uses the model's own embedding, rotary tables, activation and norm weights (RMSNorm through
    ``F.rms_norm``, bit-identical to the model's); the linear layers are `FusedLinear`s built from the
    model's weights (rebuild after changing them).
    """

    def __init__(self, model, packed_rows: int | None) -> None:
        self.model = model
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        attention = model.model.layers[0].self_attn
        self.head_dim, self.scaling = attention.head_dim, attention.scaling
        self.qk_norm = config.model_type == "qwen3"
        self.layers = [self._pack_layer(layer, packed_rows) for layer in model.model.layers]
        self.lm_head = FusedLinear([model.lm_head], packed_rows)

    @staticmethod
    def _pack_layer(layer, packed_rows: int | None) -> LayerWeights:
        attention, mlp = layer.self_attn, layer.mlp
        return LayerWeights(
            qkv=FusedLinear([attention.q_proj, attention.k_proj, attention.v_proj], packed_rows),
            o=FusedLinear([attention.o_proj], packed_rows),
            gate_up=FusedLinear([mlp.gate_proj, mlp.up_proj], packed_rows),
            down=FusedLinear([mlp.down_proj], packed_rows),
            input_norm=layer.input_layernorm.weight.detach(),
            post_norm=layer.post_attention_layernorm.weight.detach(),
            eps=layer.input_layernorm.variance_epsilon,
            layer=layer,
        )

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, plan: Plan, cache: StaticKVCache,
                last: torch.Tensor) -> torch.Tensor:
        """Logits ``[len(last), vocab]`` at token indices ``last`` of the packed ``ids [tokens]``."""
        backbone = self.model.model
        hidden = backbone.embed_tokens(ids)
        rotary = rotary_tables(backbone.rotary_emb, hidden, positions)
        decode = DecodeInputs.of(plan, cache, hidden.dtype) if plan.decode_rows else None
        for index, weights in enumerate(self.layers):
            hidden = self._layer(hidden, weights, rotary, plan, cache, index, decode)
        return self.lm_head(backbone.norm(hidden[last]))

    def _layer(self, hidden: torch.Tensor, weights: LayerWeights, rotary: tuple[torch.Tensor, torch.Tensor],
               plan: Plan, cache: StaticKVCache, index: int, decode: DecodeInputs | None) -> torch.Tensor:
        """One decoder layer (pre-norm attention and gated MLP, residuals) on ``hidden [tokens, dim]``."""
        tokens, width = hidden.shape
        qkv = weights.qkv(F.rms_norm(hidden, (width,), weights.input_norm, weights.eps))
        qk_size = (self.heads + self.kv_heads) * self.head_dim
        query_key = qkv[:, :qk_size].view(tokens, self.heads + self.kv_heads, self.head_dim)
        value = qkv[:, qk_size:].view(tokens, self.kv_heads, self.head_dim)
        if self.qk_norm:
            attention = weights.layer.self_attn
            query_key = torch.cat([attention.q_norm(query_key[:, : self.heads]),
                                   attention.k_norm(query_key[:, self.heads :])], dim=1)
        query_key = rotate(query_key, rotary)
        query, key = query_key[:, : self.heads], query_key[:, self.heads :]
        hidden = weights.o.add_to(hidden, self._attend(query, key, value, plan, cache, index, decode))
        normed = F.rms_norm(hidden, (width,), weights.post_norm, weights.eps)
        gate, up = weights.gate_up(normed).chunk(2, dim=-1)
        return weights.down.add_to(hidden, weights.layer.mlp.act_fn(gate).mul_(up))

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: Plan,
                cache: StaticKVCache, index: int, decode: DecodeInputs | None) -> torch.Tensor:
        """Write this pass's keys/values into the cache and attend; returns ``[tokens, heads * dim]``."""
        keys, values = cache.keys[index], cache.values[index]
        parts = []
        rows = plan.decode_rows
        if rows:
            keys.view(-1, self.head_dim).index_copy_(0, decode.cache_index, key[:rows].reshape(-1, self.head_dim))
            values.view(-1, self.head_dim).index_copy_(0, decode.cache_index, value[:rows].reshape(-1, self.head_dim))
            parts.append(self._decode_attention(query[:rows], keys, values, plan, decode))
        for prefill in plan.prefills:
            parts.append(self._prefill_attention(query, key, value, prefill, keys, values))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _prefill_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prefill: Prefill,
                           keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Causal attention of one prompt's new tokens over its reused prefix and themselves."""
        span = slice(prefill.start, prefill.start + prefill.new)
        k, v = key[span].transpose(0, 1), value[span].transpose(0, 1)
        keys[prefill.slot, :, prefill.reused : prefill.length] = k
        values[prefill.slot, :, prefill.reused : prefill.length] = v
        q = query[span].transpose(0, 1)[None]
        if prefill.mask is None:
            out = F.scaled_dot_product_attention(q, k[None], v[None], is_causal=True, enable_gqa=True,
                                                 scale=self.scaling)
        else:
            row = slice(prefill.slot, prefill.slot + 1)
            out = F.scaled_dot_product_attention(q, keys[row, :, : prefill.length], values[row, :, : prefill.length],
                                                 attn_mask=prefill.mask, enable_gqa=True, scale=self.scaling)
        return out[0].transpose(0, 1).reshape(prefill.new, -1)

    def _decode_attention(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, plan: Plan,
                          decode: DecodeInputs) -> torch.Tensor:
        """One query per row against its cache row; the query heads sharing a KV head are packed as
        that head's queries, so no KV head is repeated. fp32 goes through `matmul_attention`; other
        dtypes through SDPA, which keeps the scores in fp32."""
        rows, width = plan.decode_rows, plan.width
        grouped = query.unflatten(1, (self.kv_heads, self.heads // self.kv_heads))
        keys, values = keys[:rows, :, :width], values[:rows, :, :width]
        if query.dtype == torch.float32:
            out = matmul_attention(grouped, keys, values, decode.bias, self.scaling)
        else:
            out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=decode.bias, scale=self.scaling)
        return out.reshape(rows, -1)


def matmul_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """``softmax((query * scale) @ keys^T + bias) @ values`` for ``[rows, heads, queries, dim]`` queries
    against ``[rows, heads, columns, dim]`` keys/values: two batched matmuls and a softmax.

    For a few queries per head this is ~10-15% faster on CPU than SDPA's flash kernel, and a row's
    bits depend neither on the other rows nor on which thread computes it (the flash kernel's
    per-thread scratch buffers sit at different alignments, which changes the last bits).
    """
    scores = torch.matmul(query * scale, keys.transpose(-1, -2)).add_(bias)
    return torch.matmul(scores.softmax(dim=-1), values)


def rotary_tables(rotary_emb: torch.nn.Module, hidden: torch.Tensor,
                   positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's cos/sin tables for ``positions``, shaped ``[tokens, 1, dim]``; the sine's first half
    is negated so that rotate-half becomes a plain half swap (sign flips are exact)."""
    cos, sin = rotary_emb(hidden[None], positions[None])
    half = sin.shape[-1] // 2
    sign = torch.ones(sin.shape[-1], dtype=sin.dtype, device=sin.device)
    sign[:half] = -1
    return cos[0, :, None, :], (sin[0] * sign)[:, None, :]


def rotate(states: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary position embedding of ``states [tokens, heads, dim]``: ``x * cos + rotate_half(x) * sin``."""
    cos, signed_sin = rotary
    half = states.shape[-1] // 2
    swapped = torch.cat((states[..., half:], states[..., :half]), dim=-1)
    return states * cos + swapped * signed_sin


