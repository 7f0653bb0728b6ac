"""Shapes the paged attention checks share: the kernel tests (every backend) and
benchmarks/gpu_check.py (the Triton kernels on a real GPU)."""

# (name, [(seq_len, q_len), ...], block_size, num_heads, num_kv_heads, head_dim, window, scale or None
# for 1/sqrt(head_dim)); lengths 1, 7, 97, 300+, the 256 window crossed.
ATTENTION_CASES = [
    ("decode", [(1, 1), (7, 1), (97, 1), (300, 1), (256, 1)], 16, 4, 4, 64, 0, 0.125),
    ("prefill_window", [(1, 1), (7, 7), (97, 97), (300, 300)], 8, 2, 2, 80, 256, 1.0),
    ("mixed_chunked", [(300, 45), (97, 1), (5, 0), (7, 7), (300, 1)], 32, 3, 3, 32, 256, None),
    ("gqa", [(97, 97), (40, 1), (33, 20)], 16, 4, 2, 128, 0, None),
    ("small_window", [(97, 97), (300, 1), (300, 30)], 16, 2, 2, 64, 16, 1.0),
]
