"""End-to-end offline throughput: a thin wrapper of `codeinfer bench` (engine/bench.py does the work,
so the installed command needs no repository). Example, the README's table:

    python benchmarks/make_checkpoints.py /tmp/ckpt
    python benchmarks/throughput.py --model /tmp/ckpt/codegen-350m --dtypes bfloat16,int8 \\
        --concurrency 1,8,32,64 --compare transformers,ctranslate2 --quality bfloat16,int8 --plot out.png
"""
import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
