"""Bytes a decode step reads (engine/tools/bench_bytes.py), against numbers worked out by hand on tiny
configs of both architectures, in bf16, int8 and fp32 storage, bf16 and int8 KV caches."""
from engine.config import ModelConfig
from engine.tools.bench_bytes import Storage, decode_bytes, sequence_bytes, weight_bytes

BF16 = Storage(weight=2, per_channel=0, act=2, kv=2)
FP32 = Storage(weight=4, per_channel=0, act=4, kv=4)
# codeinfer int8: 1-byte weights + fp32 scale + int32 column sum per channel; bf16 elsewhere.
INT8 = Storage(weight=1, per_channel=8, act=2, kv=2)
INT8_KV = Storage(weight=2, per_channel=0, act=2, kv=1, kv_per_row=4)


def codegen() -> ModelConfig:
    # hidden 8, one head of 8, inner 32, one layer, vocab 10, untied lm_head with bias.
    return ModelConfig(architecture="CodeGenForCausalLM", vocab_size=10, hidden_size=8, num_layers=1,
                       num_heads=1, intermediate_size=32, max_position_embeddings=64, layer_norm_eps=1e-5,
                       tie_word_embeddings=False, layer_windows=[0], rotary_dim=4)


def gpt_neo() -> ModelConfig:
    # Two layers (global, local window 2), tied lm_head without bias, learned positions.
    return ModelConfig(architecture="GPTNeoForCausalLM", vocab_size=10, hidden_size=8, num_layers=2,
                       num_heads=1, intermediate_size=32, max_position_embeddings=64, layer_norm_eps=1e-5,
                       tie_word_embeddings=True, layer_windows=[0, 2], learned_positions=True)


def test_codegen_weight_bytes():
    # Linear elements: qkv 24x8 + out 8x8 + fc_in 32x8 + fc_out 8x32 + lm_head 10x8 = 848;
    # output channels 24 + 8 + 32 + 8 + 10 = 82; biases fc_in 32 + fc_out 8 + lm_head 10 = 50;
    # norms ln_1 and ln_f: 2 x (8 + 8) = 32 elements.
    assert weight_bytes(codegen(), BF16) == 848 * 2 + 50 * 2 + 32 * 2 == 1860
    assert weight_bytes(codegen(), INT8) == 848 + 82 * 8 + 50 * 2 + 32 * 2 == 1668


def test_int4_weight_bytes_keep_an_int8_head():
    # int4 groups of 64: 0.5 + 4 / 64 bytes a block weight (768 elements), the lm_head (80) int8 with
    # its 10 channels' 8 bytes; biases and norms bf16 as above.
    int4 = Storage(weight=0.5 + 4 / 64, per_channel=0, act=2, kv=2, head_weight=1, head_per_channel=8)
    assert weight_bytes(codegen(), int4) == 768 * 0.5625 + 80 + 10 * 8 + 50 * 2 + 32 * 2 == 756


def test_gpt_neo_weight_bytes():
    # Per layer: q,k,v 24x8 + out 8x8 + c_fc 32x8 + c_proj 8x32 = 768 elements, 72 channels,
    # biases out 8 + c_fc 32 + c_proj 8 = 48; two layers, then the tied lm_head 10x8 (10 channels,
    # no bias): 1616 elements, 154 channels, 96 biases; norms 2 x 2 + ln_f = 5 x 16 = 80 elements.
    assert weight_bytes(gpt_neo(), BF16) == 1616 * 2 + 96 * 2 + 80 * 2 == 3584
    assert weight_bytes(gpt_neo(), FP32) == 7168
    assert weight_bytes(gpt_neo(), INT8) == 1616 + 154 * 8 + 96 * 2 + 80 * 2 == 3200


def test_codegen_sequence_bytes():
    # One embedding row 8 x 2 bytes; K and V of 5 tokens x 1 head x 8 dims.
    assert sequence_bytes(codegen(), BF16, 5) == 16 + 2 * 5 * 8 * 2 == 176
    # int8 cache: 8 bytes + a 4-byte scale per (token, head) row.
    assert sequence_bytes(codegen(), INT8_KV, 5) == 16 + 2 * 5 * (8 + 4) == 136


def test_gpt_neo_local_layer_reads_its_window_only():
    # Token + position rows (2 x 16 bytes); the global layer reads 5 keys, the local one 2.
    assert sequence_bytes(gpt_neo(), BF16, 5) == 32 + 2 * (5 + 2) * 16 == 256
    assert sequence_bytes(gpt_neo(), BF16, 1) == 32 + 2 * (1 + 1) * 16 == 96
    assert sequence_bytes(gpt_neo(), BF16, 100) == 32 + 2 * (100 + 2) * 16


def test_decode_bytes_sums_the_steps():
    # prompt 3, 3 new tokens: the prefill makes the first, decode steps at contexts 4 and 5;
    # the weights once per step, each of the 2 sequences its own rows.
    seq4 = 16 + 2 * 4 * 16
    assert decode_bytes(codegen(), BF16, 3, 3, 2) == 2 * 1860 + 2 * (seq4 + 176) == 4360
    assert decode_bytes(codegen(), BF16, 3, 1, 2) == 0
