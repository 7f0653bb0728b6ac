"""GPT-Neo (GPTNeoForCausalLM): learned positions, alternating global/local attention with no
1/sqrt(d) scaling, sequential residual, lm_head tied to wte."""
from __future__ import annotations

import re

import torch
from torch import nn

from ..config import (MAX_INTERMEDIATE, MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB, ConfigFields,
                           ModelConfig)
from ..layers.attention import AttentionMetadata, SelfAttention
from ..layers.linear import ACTIVATIONS, FUSED_ACTS, MLP, embedding, logits_fp32
from ..layers.program import DecoderProgram


def _attention_kinds(f: ConfigFields, num_layers: int) -> list[str]:
    """GPT-Neo's attention_types [[["global", "local"], 6]] -> ["global", "local", ...] of length
    num_layers, which a saved attention_layers (transformers runs that one) must equal."""
    types = f.get("attention_types", [[["global"], num_layers]])
    if not isinstance(types, list) or not all(
            isinstance(t, list) and len(t) == 2 and isinstance(t[0], list) and type(t[1]) is int
            and t[1] >= 1 and all(k in ("global", "local") for k in t[0]) for t in types):
        raise f.error("attention_types", 'must be [[["global" | "local", ...], repeat >= 1], ...]')
    count = sum(len(pattern) * repeat for pattern, repeat in types)  # before expanding: no 10**12 list
    if count != num_layers:
        raise f.error("attention_types", f"describe {count} layers, num_layers is {num_layers}")
    kinds = [kind for pattern, repeat in types for kind in pattern * repeat]
    if f.get("attention_layers", kinds) != kinds:
        raise f.error("attention_layers", "disagrees with attention_types")
    return kinds


class GPTNeoBlock(nn.Module):
    def __init__(self, config: ModelConfig, ops, layer_idx: int):
        super().__init__()
        h = config.hidden_size
        self.ln_1 = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.attn = SelfAttention(ops, h, config.num_heads, config.attention_scale,
                                  config.layer_windows[layer_idx], rotary_dim=0, interleaved=False,
                                  qkv_bias=False, out_bias=True)
        self.ln_2 = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.mlp = MLP(h, config.intermediate_size, config.activation)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, last: bool = False) -> torch.Tensor:
        """last: return only the rows meta.last_rows (every row's K and V are still stored)."""
        x = self.attn(x, meta, None, norm=self.ln_1, residual=x[meta.last_rows] if last else x, last=last)
        return self.mlp(x, norm=self.ln_2, residual=x)


class GPTNeoForCausalLM(nn.Module):
    ARCHITECTURE = "GPTNeoForCausalLM"  # config.json's `architectures`
    # HF name -> (local name, shard of a packed parameter or None). Anything matching IGNORED is a
    # buffer transformers saves (causal masks), not a weight.
    WEIGHT_MAP = [
        (r"transformer\.wte\.weight", "wte.weight", None),
        (r"transformer\.wpe\.weight", "wpe.weight", None),
        (r"transformer\.h\.(\d+)\.ln_(\d)\.(weight|bias)", r"layers.\1.ln_\2.\3", None),
        (r"transformer\.h\.(\d+)\.attn\.attention\.q_proj\.weight", r"layers.\1.attn.qkv_proj.weight", 0),
        (r"transformer\.h\.(\d+)\.attn\.attention\.k_proj\.weight", r"layers.\1.attn.qkv_proj.weight", 1),
        (r"transformer\.h\.(\d+)\.attn\.attention\.v_proj\.weight", r"layers.\1.attn.qkv_proj.weight", 2),
        (r"transformer\.h\.(\d+)\.attn\.attention\.out_proj\.(weight|bias)", r"layers.\1.attn.out_proj.\2", None),
        (r"transformer\.h\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"layers.\1.mlp.fc_in.\2", None),
        (r"transformer\.h\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"layers.\1.mlp.fc_out.\2", None),
        (r"transformer\.ln_f\.(weight|bias)", r"ln_f.\1", None),
        (r"lm_head\.weight", "lm_head.weight", None),
    ]
    IGNORED = re.compile(r".*attn\.attention\.(bias|masked_bias)$")

    @classmethod
    def from_hf_config(cls, f: ConfigFields) -> ModelConfig:
        """transformers' GPTNeoConfig fields -> ModelConfig, each one checked."""
        hidden, num_heads = f.heads("hidden_size", "num_heads")
        num_layers = f.integer("num_layers", high=MAX_LAYERS)
        kinds = _attention_kinds(f, num_layers)
        window = f.integer("window_size", 256, high=MAX_POSITIONS)
        return ModelConfig(
            architecture=cls.ARCHITECTURE, vocab_size=f.integer("vocab_size", high=MAX_VOCAB),
            hidden_size=hidden, num_layers=num_layers, num_heads=num_heads,
            intermediate_size=f.integer("intermediate_size", 4 * hidden, high=MAX_INTERMEDIATE),
            max_position_embeddings=f.integer("max_position_embeddings", high=MAX_POSITIONS),
            layer_norm_eps=f.eps("layer_norm_epsilon", 1e-5),
            activation=f.choice("activation_function", "gelu_new", ACTIVATIONS),
            tie_word_embeddings=f.boolean("tie_word_embeddings", True),
            layer_windows=[window if k == "local" else 0 for k in kinds],
            attention_scale=1.0,  # GPT-Neo does not scale scores by 1/sqrt(head_dim).
            learned_positions=True,
        )

    def __init__(self, config: ModelConfig, ops):
        super().__init__()
        self.config, self.ops = config, ops
        self.wte = embedding(config.vocab_size, config.hidden_size)
        self.wpe = embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(GPTNeoBlock(config, ops, i) for i in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        # The layers as one C++ call on the CPU backend.
        self.program = DecoderProgram(ops, self._record_program, len(self.layers))

    def map_weight(self, name: str):
        """(local name, shard) for a checkpoint tensor name; None if unknown; () if ignored."""
        if self.IGNORED.match(name) or (name == "lm_head.weight" and self.config.tie_word_embeddings):
            return ()
        for pattern, target, shard in self.WEIGHT_MAP:
            if re.fullmatch(pattern, name):
                return re.sub(pattern, target, name), shard
        return None

    def transform_weight(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight

    def post_load(self) -> None:
        pass

    def forward(self, input_ids: torch.Tensor, modality: torch.Tensor, remap: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, modality: [num_tokens] -> residual stream [num_tokens, hidden], or of the rows
        meta.last_rows when set (ln_f is applied by compute_logits, on the sampled rows only)."""
        x = self.ops.gated_embedding(input_ids, modality, remap, self.wte.weight, self.wpe.weight,
                                     meta.positions)
        done = self.program.forward(x, meta)  # the first layers as one C++ call, in place
        for i in range(done, len(self.layers)):
            x = self.layers[i](x, meta, last=meta.last_rows is not None and i == len(self.layers) - 1)
        return x

    def _record_program(self, cpu_program, dtype: torch.dtype):
        """Each layer as GPTNeoBlock.forward runs it, over four buffers: qkv = qkv_proj(ln_1(x)),
        a = attention (windowed on local layers), x1 = x + out_proj(a), m = gelu(fc_in(ln_2(x1))), and
        x = x1 + fc_out(m). None when a layer's ops are not all packed C++ ones (or gelu unfused)."""
        c, program = self.config, self.program
        h = c.hidden_size
        if c.activation not in FUSED_ACTS:
            return None
        prog = cpu_program.LayerProgram(h, dtype)
        qkv, a, x1 = prog.buffer(3 * h, dtype), prog.buffer(h, dtype), prog.buffer(h, dtype)
        m = prog.buffer(c.intermediate_size, dtype)
        watched = []
        for layer in self.layers:
            linears = (layer.attn.qkv_proj, layer.attn.out_proj, layer.mlp.fc_in, layer.mlp.fc_out)
            ops = (program.packed(linears[0], dtype, layer.ln_1), program.packed(linears[1], dtype),
                   program.packed(linears[2], dtype, layer.ln_2), program.packed(linears[3], dtype))
            attention = program.attention(layer.attn.attn, None)
            if None in ops or attention is None:
                return None
            prog.linear(ops[0], src=0, dst=qkv)
            prog.store_kv(attention[0], qkv, c.num_heads, q_col=0, k_col=h, v_col=2 * h)
            prog.attend(attention[1], qkv, c.num_heads, q_col=0, dst=a)
            prog.linear(ops[1], src=a, dst=x1, residual=0)
            prog.linear(ops[2], src=x1, dst=m, act_start=0)
            prog.linear(ops[3], src=m, dst=0, residual=x1)
            watched += [(linear, "_bound") for linear in linears]
            watched += [(layer.attn.attn, "_store_kv"), (layer.attn.attn, "_attend")]
        return prog, watched

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] (the residual stream of forward) -> fp32 logits of ln_f then lm_head."""
        return logits_fp32(self.lm_head, self.ln_f, hidden)
