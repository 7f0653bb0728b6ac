"""CodeGen (CodeGenForCausalLM): fused qkv_proj stored as 4 chunks ordered q, v, k (re-laid out to
q, k, v at load), partial interleaved rotary, parallel residual, gelu_new, untied lm_head with bias."""
from __future__ import annotations

import re

import torch
from torch import nn

from ..config import (MAX_INTERMEDIATE, MAX_LAYERS, MAX_POSITIONS, MAX_ROTARY_TABLE_BYTES, MAX_VOCAB,
                           ConfigFields, ModelConfig)
from ..layers.attention import AttentionMetadata, SelfAttention
from ..layers.linear import ACTIVATIONS, FUSED_ACTS, MLP, embedding, logits_fp32, project
from ..layers.program import DecoderProgram
from ..kernel_package import host_memory, reference

# CodeGen was trained model-parallel on 4 TPU cores: its qkv_proj rows are QKV_CHUNKS chunks of
# [q | v | k] (the config check refuses an n_embd they do not divide).
QKV_CHUNKS = 4


def relayout_qkv(weight: torch.Tensor) -> torch.Tensor:
    """[3 * hidden, hidden] in CodeGen's (chunk, {q, v, k}, rows) order -> rows q, then k, then v."""
    hidden = weight.shape[1]
    chunks = weight.view(QKV_CHUNKS, 3, hidden // QKV_CHUNKS, hidden)
    q, v, k = chunks.unbind(1)  # each [QKV_CHUNKS, hidden // QKV_CHUNKS, hidden]
    out = _empty_like_rows(weight, weight.shape[0])
    return torch.cat([q.reshape(hidden, hidden), k.reshape(hidden, hidden), v.reshape(hidden, hidden)], out=out)


def _empty_like_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """[rows, weight.shape[1]] in weight's dtype, on huge pages on the CPU (kernels/host_memory.py)."""
    if weight.device.type != "cpu":
        return torch.empty(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
    return host_memory.empty((rows, weight.shape[1]), weight.dtype)


class CodeGenBlock(nn.Module):
    def __init__(self, config: ModelConfig, ops):
        super().__init__()
        h = config.hidden_size
        self.ln_1 = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.attn = SelfAttention(ops, h, config.num_heads, config.attention_scale, window=0,
                                  rotary_dim=config.rotary_dim, interleaved=True,
                                  qkv_bias=False, out_bias=False)
        self.mlp = MLP(h, config.intermediate_size, config.activation)
        self.in_proj: nn.Module | None = None  # packed CPU linears: qkv_proj and fc_in as one GEMM
        self.qkv_width = 3 * h

    def merge_projections(self, linear_cls) -> None:
        """Packed CPU linears (Int8Linear, Bf16Linear): qkv_proj and fc_in read the same ln_1 output,
        so one GEMM computes both ([3 * hidden + inner, hidden] weights, ln_1 in its input pass, the
        gelu applied to the fc_in columns in its epilogue)."""
        if self.mlp.act_name not in FUSED_ACTS or self.in_proj is not None:
            return
        qkv, fc_in = self.attn.qkv_proj, self.mlp.fc_in
        rows = qkv.out_features + fc_in.out_features
        weight = _empty_like_rows(qkv.weight, rows)
        bias = torch.empty(rows, dtype=fc_in.bias.dtype, device=weight.device)
        if not weight.is_meta:  # meta: the structure alone (engine/worker/prepared_weights.py)
            torch.cat([qkv.weight.detach(), fc_in.weight.detach()], out=weight)
            bias[:qkv.out_features] = 0.0 if qkv.bias is None else qkv.bias.detach()
            bias[qkv.out_features:] = fc_in.bias.detach()
        self.in_proj = linear_cls(weight, bias)
        self.attn.qkv_proj = self.mlp.fc_in = None

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, cos_sin: torch.Tensor,
                last: bool = False) -> torch.Tensor:
        """Parallel residual: x + attn(ln_1(x)) + mlp(ln_1(x)), added in that order. last: return
        only the rows meta.last_rows (every row's K and V are still stored)."""
        keep = meta.last_rows if last else slice(None)
        if self.in_proj is not None:
            y = self.in_proj(x, norm=self.ln_1, act_start=self.qkv_width)
            x = self.attn.attend(y[:, :self.qkv_width], meta, cos_sin, residual=x[keep], last=last)
            return project(self.mlp.fc_out, y[keep, self.qkv_width:], residual=x)
        h = self.ln_1(x)
        x = self.attn(h, meta, cos_sin, residual=x[keep], last=last)
        return self.mlp(h[keep], residual=x)


class CodeGenForCausalLM(nn.Module):
    ARCHITECTURE = "CodeGenForCausalLM"  # config.json's `architectures`
    WEIGHT_MAP = [
        (r"transformer\.wte\.weight", "wte.weight"),
        (r"transformer\.h\.(\d+)\.ln_1\.(weight|bias)", r"layers.\1.ln_1.\2"),
        (r"transformer\.h\.(\d+)\.attn\.qkv_proj\.weight", r"layers.\1.attn.qkv_proj.weight"),
        (r"transformer\.h\.(\d+)\.attn\.out_proj\.weight", r"layers.\1.attn.out_proj.weight"),
        (r"transformer\.h\.(\d+)\.mlp\.fc_in\.(weight|bias)", r"layers.\1.mlp.fc_in.\2"),
        (r"transformer\.h\.(\d+)\.mlp\.fc_out\.(weight|bias)", r"layers.\1.mlp.fc_out.\2"),
        (r"transformer\.ln_f\.(weight|bias)", r"ln_f.\1"),
        (r"lm_head\.(weight|bias)", r"lm_head.\1"),
    ]
    IGNORED = re.compile(r".*attn\.(causal_mask|masked_bias|bias|embed_positions)$")

    @classmethod
    def from_hf_config(cls, f: ConfigFields) -> ModelConfig:
        """transformers' CodeGenConfig fields -> ModelConfig, each one checked."""
        hidden, num_heads = f.heads("n_embd", "n_head")
        if hidden % QKV_CHUNKS:
            raise f.error("n_embd", f"must be a multiple of {QKV_CHUNKS} (qkv_proj chunks), got {hidden}")
        head_dim = hidden // num_heads
        rotary_dim = f.integer("rotary_dim", head_dim, high=head_dim)  # null: rotate the whole head
        if rotary_dim % 2:
            raise f.error("rotary_dim", f"must be even (it rotates pairs), got {rotary_dim}")
        n_ctx = f.integer("n_ctx", 2048, high=MAX_POSITIONS)
        max_positions = f.integer("n_positions", n_ctx, high=MAX_POSITIONS)
        if max_positions * rotary_dim * 4 > MAX_ROTARY_TABLE_BYTES:
            raise f.error("n_positions", f"{max_positions} x rotary_dim {rotary_dim} needs a rotary "
                                         f"table over {MAX_ROTARY_TABLE_BYTES} bytes")
        num_layers = f.integer("n_layer", high=MAX_LAYERS)
        return ModelConfig(
            architecture=cls.ARCHITECTURE, vocab_size=f.integer("vocab_size", high=MAX_VOCAB),
            hidden_size=hidden, num_layers=num_layers, num_heads=num_heads,
            intermediate_size=f.integer("n_inner", 4 * hidden, high=MAX_INTERMEDIATE),
            max_position_embeddings=max_positions,
            layer_norm_eps=f.eps("layer_norm_epsilon", 1e-5),
            activation=f.choice("activation_function", "gelu_new", ACTIVATIONS),
            tie_word_embeddings=f.boolean("tie_word_embeddings", False),
            layer_windows=[0] * num_layers,
            attention_scale=head_dim ** -0.5,
            rotary_dim=rotary_dim,
        )

    def __init__(self, config: ModelConfig, ops):
        super().__init__()
        self.config, self.ops = config, ops
        self.wte = embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(CodeGenBlock(config, ops) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.tie_weights()
        self.cos_sin: torch.Tensor | None = None  # [max_positions, rotary_dim] fp32, see post_load
        # The layers as one C++ call on the CPU backend.
        self.program = DecoderProgram(ops, self._record_program, len(self.layers))

    def map_weight(self, name: str):
        if self.IGNORED.match(name):
            return ()
        if name == "lm_head.weight" and self.config.tie_word_embeddings:
            return ()
        for pattern, target in self.WEIGHT_MAP:
            if re.fullmatch(pattern, name):
                return re.sub(pattern, target, name), None
        return None

    def transform_weight(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return relayout_qkv(tensor) if name.endswith("qkv_proj.weight") else tensor

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight

    def post_load(self) -> None:
        device = self.wte.weight.device
        self.cos_sin = reference.rotary_cos_sin(self.config.rotary_dim,
                                      self.config.max_position_embeddings).to(device)

    def forward(self, input_ids: torch.Tensor, modality: torch.Tensor, remap: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, modality: [num_tokens] -> residual stream [num_tokens, hidden], or of the rows
        meta.last_rows when set (ln_f is applied by compute_logits)."""
        x = self.ops.gated_embedding(input_ids, modality, remap, self.wte.weight, None, meta.positions)
        done = self.program.forward(x, meta)  # the first layers as one C++ call, in place
        for i in range(done, len(self.layers)):
            last = meta.last_rows is not None and i == len(self.layers) - 1
            x = self.layers[i](x, meta, self.cos_sin, last=last)
        return x

    def _record_program(self, cpu_program, dtype: torch.dtype):
        """Each layer as CodeGenBlock.forward runs it with merged projections, over three buffers:
        y = in_proj(ln_1(x)) [q | k | v | gelu(fc_in)], a = attention, x1 = x + out_proj(a), and
        x = x1 + fc_out(y's fc_in columns). None when a layer's ops are not all packed C++ ones."""
        c, program = self.config, self.program
        h = c.hidden_size
        layers = self.layers
        if any(layer.in_proj is None for layer in layers):
            return None
        prog = cpu_program.LayerProgram(h, dtype)
        qkv_width = layers[0].qkv_width
        y = prog.buffer(qkv_width + c.intermediate_size, dtype)
        a, x1 = prog.buffer(h, dtype), prog.buffer(h, dtype)
        watched = []
        for layer in layers:
            linears = (layer.in_proj, layer.attn.out_proj, layer.mlp.fc_out)
            in_proj, out_proj, fc_out = (program.packed(linears[0], dtype, layer.ln_1),
                                         program.packed(linears[1], dtype), program.packed(linears[2], dtype))
            attention = program.attention(layer.attn.attn, self.cos_sin)
            if None in (in_proj, out_proj, fc_out, attention):
                return None
            prog.linear(in_proj, src=0, dst=y, act_start=qkv_width)
            prog.store_kv(attention[0], y, c.num_heads, q_col=0, k_col=h, v_col=2 * h)
            prog.attend(attention[1], y, c.num_heads, q_col=0, dst=a)
            prog.linear(out_proj, src=a, dst=x1, residual=0)
            prog.linear(fc_out, src=y, dst=0, residual=x1, src_col=qkv_width)
            watched += [(linear, "_bound") for linear in linears]
            watched += [(layer.attn.attn, "_store_kv"), (layer.attn.attn, "_attend")]
        return prog, watched

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] (the residual stream of forward) -> fp32 logits of ln_f then lm_head."""
        return logits_fp32(self.lm_head, self.ln_f, hidden)
