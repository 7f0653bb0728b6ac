"""End-to-end offline throughput and latency: a thin wrapper of `codeinfer bench` (engine/tools/bench.py does
the work, so the installed command needs no repository). Examples:

    python -m benchmarks.make_checkpoints /tmp/ckpt
    python -m benchmarks.throughput --model /tmp/ckpt/codegen-350m --dtypes bfloat16,int8 \
        --concurrency 1,8,32,64 --compare transformers,ctranslate2,openvino --repeat 3 \
        --background-load 1 --quality bfloat16,int8 --json out.json --plot out.png
    python -m benchmarks.throughput --model /tmp/ckpt/pycodegpt-110m --dtypes int8 \
        --prompt-len 1900 --max-tokens 64 --concurrency 1,8 --compare transformers,openvino

GPU readiness (kernels, parity, bandwidth, tokens/s on CUDA) is benchmarks/gpu_check.py.
"""
import sys

from engine.entrypoints.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
