"""`codeinfer generate`: complete one prompt and print it (optionally streamed)."""
from __future__ import annotations

import argparse
import sys

from ...engine_args import EngineArgs


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="complete a prompt",
                              description="Complete PROMPT with a model and print the completion.")
    p.add_argument("prompt", help="text to complete ('-' reads standard input)")
    p.add_argument("--max-tokens", type=int, default=64, help="most new tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 discourages repeating tokens (small models loop without it)")
    p.add_argument("--n", type=int, default=1, help="number of completions")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    EngineArgs.add_cli_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ... import LLM, SamplingParams
    from ...core.llm_engine import LLMEngine

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                            max_tokens=args.max_tokens, stop=args.stop,
                            seed=args.seed)
    if not args.stream:
        out = LLM(**EngineArgs.from_cli_args(args).to_dict()).generate(prompt, params, use_tqdm=False)[0]
        for completion in out.outputs:
            if args.n > 1:
                print(f"--- completion {completion.index} ({completion.finish_reason})")
            print(prompt + completion.text)
        return 0
    engine = LLMEngine.from_engine_args(EngineArgs.from_cli_args(args))
    engine.add_request("cli", prompt, params)
    printed = [0] * args.n
    sys.stdout.write(prompt)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.error is not None:
                raise RuntimeError(f"generation failed: {out.error}")
            for c in out.outputs:
                if args.n == 1:
                    sys.stdout.write(c.text[printed[c.index]:])
                    printed[c.index] = len(c.text)
            sys.stdout.flush()
            if out.finished and args.n > 1:
                for c in out.outputs:
                    print(f"\n--- completion {c.index} ({c.finish_reason})\n{prompt}{c.text}")
    sys.stdout.write("\n")
    return 0
