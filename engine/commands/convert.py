"""`codeinfer convert`: pytorch_model.bin checkpoint -> safetensors (weights_only loading)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a pytorch_model.bin checkpoint to safetensors",
        description="Read SRC/pytorch_model*.bin with torch.load(weights_only=True) (tensors only, "
                    "nothing else is unpickled) and write DST/model.safetensors plus the json/txt "
                    "config and tokenizer files.")
    p.add_argument("src", help="checkpoint folder with pytorch_model*.bin")
    p.add_argument("dst", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.weights import convert_bin_to_safetensors

    for path in convert_bin_to_safetensors(args.src, args.dst):
        print(path)
    return 0
