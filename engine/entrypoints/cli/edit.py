"""`codeinfer edit FILE -m MESSAGE`: ask a diff model for edits, keep the diffs that apply.

Exit status: 0 when at least one sampled diff applies (and, with --apply, the first was written),
1 when none applies (the file is untouched), 2 on bad input (missing file, prompt too long, ...).
"""
import argparse
import os
import stat
import sys
import tempfile

from ...engine_args import json_object
from ...tools.diff import STOP_MARKERS, apply_diff, build_prompt, extract_candidates, is_diff_model

_COLORS = {"+": "\033[32m", "-": "\033[31m", "@": "\033[36m", "header": "\033[1m"}
_RESET = "\033[0m"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "edit", help="edit a file with a diff model (diff-codegen)",
        description="Sample candidate unified diffs for FILE from a diff model, show those that "
                    "apply, and with --apply write the first one atomically.")
    p.add_argument("file", help="the file to edit")
    p.add_argument("-m", "--message", required=True, help="what to change (a commit message)")
    p.add_argument("--model", default=None,
                   help="diff-model checkpoint folder or Hub id, e.g. diff-codegen-350m-v1 (the "
                        "bundled model writes no diffs)")
    p.add_argument("--force", action="store_true",
                   help='use --model even though none of its names (folder, Hub id, config '
                        '_name_or_path) has "diff" in it')
    p.add_argument("--samples", type=int, default=4, help="candidate diffs to sample")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass")
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens per candidate")
    p.add_argument("--apply", action="store_true", help="write the first applicable candidate")
    p.add_argument("--dtype", default="auto", help="weight/activation dtype (as in generate)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    p.add_argument("--speculative-config", type=json_object, default=None, metavar="JSON",
                   help="speculative decoding as in generate, e.g. '{\"method\": \"ngram\", "
                        "\"num_speculative_tokens\": 4}': a diff re-emits the file's lines, which "
                        "prompt lookup drafts (the diffs are those sampled without it)")
    p.set_defaults(func=run)


def check_diff_model(args: argparse.Namespace) -> None:
    """ValueError, before any model is loaded, when --model is not a diff model (and no --force):
    a plain code model continues the prompt with more code, never with hunks that apply."""
    if args.force or is_diff_model(args.model):
        return
    what = "the bundled model" if args.model is None else repr(args.model)
    raise ValueError(
        f"{what} does not look like a diff model: none of its names (folder, Hub id, config "
        f"_name_or_path) has \"diff\" in it. edit needs a model trained on commits laid out as "
        f"<NME>/<BEF>/<MSG>/<DFF>, such as diff-codegen-350m-v1 (--model DIR); pass --force to "
        f"use this model anyway")


def sample_diffs(prompt: str, args: argparse.Namespace) -> list[str]:
    """Raw model outputs: args.samples samples of one prompt (they share its KV blocks)."""
    from ... import LLM, SamplingParams

    check_diff_model(args)
    llm = LLM(model=args.model, dtype=args.dtype, seed=args.seed,
              speculative_config=getattr(args, "speculative_config", None))
    params = SamplingParams(n=args.samples, temperature=args.temperature, top_p=args.top_p,
                            max_tokens=args.max_tokens, stop=list(STOP_MARKERS))
    output = llm.generate(prompt, params, use_tqdm=False)[0]
    return [completion.text for completion in output.outputs]


def applicable(before: str, raw_outputs) -> list[tuple[str, str]]:
    """[(diff, after)] for the distinct sampled diffs that apply and change the file."""
    kept, seen = [], set()
    for diff in extract_candidates(raw_outputs):
        try:
            after = apply_diff(before, diff)
        except ValueError:
            continue
        if after != before and after not in seen:
            seen.add(after)
            kept.append((diff, after))
    return kept


def colorize(diff: str, enabled: bool) -> str:
    if not enabled:
        return diff
    out = []
    for line in diff.splitlines(keepends=True):
        if line.startswith(("--- ", "+++ ")):
            color = _COLORS["header"]
        else:
            color = _COLORS.get(line[:1])
        out.append(f"{color}{line.rstrip(chr(10))}{_RESET}\n" if color else line)
    return "".join(out)


def write_atomically(path: str, text: str) -> None:
    """Replace the file's contents all at once: temporary file in the same directory + rename."""
    target = os.path.realpath(path)  # keep a symlink a symlink: replace what it points at
    mode = stat.S_IMODE(os.stat(target).st_mode)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target),
                               prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _display_name(path: str) -> str:
    rel = os.path.relpath(path)
    return os.path.basename(path) if rel.startswith("..") else rel


def run(args: argparse.Namespace, generate=None) -> int:
    """generate(prompt, args) -> raw outputs; defaults to sampling the model (tests inject one)."""
    if args.samples < 1:
        print(f"codeinfer edit: error: --samples must be >= 1, got {args.samples}", file=sys.stderr)
        return 2
    try:
        with open(args.file, encoding="utf-8", newline="") as f:
            before = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"codeinfer edit: error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    prompt = build_prompt(_display_name(args.file), before, args.message)
    try:
        raw_outputs = (generate or sample_diffs)(prompt, args)
    except ValueError as exc:
        print(f"codeinfer edit: error: {exc}", file=sys.stderr)
        return 2
    candidates = applicable(before, raw_outputs)
    if not candidates:
        print(f"codeinfer edit: none of the {len(raw_outputs)} sampled diffs applies to "
              f"{args.file}; the file is unchanged", file=sys.stderr)
        return 1
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    for i, (diff, _) in enumerate(candidates, 1):
        print(f"# candidate {i}/{len(candidates)}")
        sys.stdout.write(colorize(diff, color))
    if args.apply:
        try:
            write_atomically(args.file, candidates[0][1])
        except OSError as exc:
            print(f"codeinfer edit: error: cannot write {args.file}: {exc}", file=sys.stderr)
            return 2
        print(f"# applied candidate 1 to {args.file}")
    else:
        print("# rerun with --apply to write candidate 1")
    return 0
