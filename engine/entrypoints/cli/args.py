"""Engine options shared by the subcommands that load a model (generate, serve, bench, ...)."""
from __future__ import annotations

import argparse


_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "kb": 1000, "mib": 1 << 20, "mb": 1000 ** 2, "gib": 1 << 30,
          "gb": 1000 ** 3, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_bytes(text: str) -> int:
    """'2GiB', '512MiB', '1.5G', '1000000' -> bytes (k/m/g alone are binary units)."""
    number = text.strip().rstrip("BbIiKkMmGg")
    unit = text.strip()[len(number):].lower()
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GiB, 512MiB, 1000000)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return int(value)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--model", default=None,
                   help="checkpoint folder (config.json + safetensors + tokenizer); "
                        "default: the bundled codegen-tiny-py model")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "int8"],
                   help="weight/activation dtype (auto = bfloat16; int8 = int8 linear weights and "
                        "per-token int8 GEMM inputs, bfloat16 elsewhere: the fastest CPU mode)")
    g.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "int8"],
                   help="KV-cache element type (auto = the activation dtype; int8 = int8 rows with "
                        "a scale each: half the memory and bandwidth of bf16, CPU kernels only)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--attention-backend", default="auto", choices=["auto", "torch", "cpu", "triton"],
                   help="kernels: torch reference, C++ CPU, or Triton (auto: triton on CUDA, cpu on CPU)")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    g.add_argument("--num-kv-blocks", type=int, default=None,
                   help="KV-cache blocks (default: as many as --kv-cache-memory allows)")
    g.add_argument("--kv-cache-memory", type=parse_bytes, default=None, metavar="SIZE",
                   help="most memory the KV cache may take, e.g. 2GiB, 512MiB or bytes (default: 25%% "
                        "of the available RAM on CPU, at most 2GiB; 85%% of free GPU memory). The cache "
                        "is allocated and zeroed at start-up")
    g.add_argument("--max-num-seqs", type=int, default=256, help="most sequences in one step")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048, help="token budget per step")
    g.add_argument("--no-prefix-caching", action="store_true", help="disable prefix caching")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the kernels (default: one per core, or OMP_NUM_THREADS); "
                        "fewer leave cores to other work on a shared machine")
    g.add_argument("--seed", type=int, default=0, help="random seed (sampling is reproducible for a given seed)")


def engine_kwargs(args: argparse.Namespace) -> dict:
    return dict(model=args.model, dtype=args.dtype, device=args.device,
                attention_backend=args.attention_backend, block_size=args.block_size,
                num_kv_blocks=args.num_kv_blocks, max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens,
                enable_prefix_caching=not args.no_prefix_caching, seed=args.seed,
                kv_cache_dtype=args.kv_cache_dtype, kv_cache_memory_bytes=args.kv_cache_memory,
                num_threads=args.threads)
