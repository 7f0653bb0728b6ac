"""`codeinfer convert`: pytorch_model.bin checkpoint -> safetensors (weights_only loading; the
conversion and its safety rules are engine/worker/convert.py's)."""
from __future__ import annotations

import argparse

HELP = (
    "Read SRC/pytorch_model*.bin with torch.load(weights_only=True) (tensors only, nothing else is "
    "unpickled) and write DST/model.safetensors plus the files a checkpoint needs: config.json, "
    "generation_config.json, the tokenizer files and CodeCLM's replicated_tokens_map.pkl (files "
    "already in DST are kept). Nothing else in SRC is read. A needed file or .bin that is a symlink "
    "resolving outside SRC (or, for a Hugging Face cache snapshot <repo>/snapshots/<rev>, outside "
    "<repo>/blobs) is refused and nothing is written. Copies keep at most the source's permission "
    "bits (the umask still applies).")


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert a pytorch_model.bin checkpoint to safetensors",
                              description=HELP)
    p.add_argument("src", help="checkpoint folder with pytorch_model*.bin")
    p.add_argument("dst", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...worker.convert import convert_bin_to_safetensors

    for path in convert_bin_to_safetensors(args.src, args.dst):
        print(path)
    return 0
