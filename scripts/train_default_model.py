#!/usr/bin/env python
"""Train codeinfer's bundled default model on this machine's CPU.

A small CodeGen-architecture model (transformers ``CodeGenForCausalLM``) with its own byte-level
BPE tokenizer, trained from scratch on the Python standard library's ``.py`` files (test
directories and huge generated files skipped). A deterministic, seed-independent subset of the
files (chosen by a hash of their relative path) is held out for evaluation.

The output directory (default ``engine/assets/codegen-tiny-py``) gets config.json,
model.safetensors (bf16 weights), tokenizer.json, tokenizer_config.json, generation_config.json
and a README.md with the seed, corpus, steps, wall time, tokens seen, held-out loss and sample
completions.

Usage (about 15 minutes of training on 2 cores with bf16 autocast):

    .venv/bin/python -m scripts.train_default_model --minutes 15

The learning-rate schedule is time aware: training stops at ``--steps`` or when ``--minutes``
of training wall time have passed, whichever comes first, and the cosine decay follows whichever
of the two is further along, so a slower (shared) machine still ends with a decayed model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NAME = "codegen-tiny-py"
EOS = "<|endoftext|>"

# Pre-tokenization: identifiers, numbers, punctuation runs, single newlines and runs of other
# whitespace are separate pre-tokens; spaces are NOT glued onto the following word (unlike GPT-2's
# regex), so prompts that end in a space or a newline ("def ", "import ", "x = 1\n") tokenize
# exactly as the same text does inside a training file. Indentation runs become single tokens.
SPLIT_PATTERN = r"[\p{L}_][\p{L}\p{N}_]*|\p{N}+|[^\s\p{L}\p{N}_]+|\n|[^\S\n]+"

SKIP_DIRS = {"test", "tests", "idle_test", "encodings", "pydoc_data", "site-packages",
             "dist-packages", "__pycache__", "turtledemo"}
MAX_FILE_BYTES = 200_000
HELDOUT_PER_MILLE = 40  # ~4% of the files


# ----------------------------------------------------------------------------- corpus

def default_stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(relpath: str) -> bool:
    """Deterministic split, independent of the seed and of which other files exist."""
    h = int(hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:8], 16)
    return h % 1000 < HELDOUT_PER_MILLE


def collect_files(root: Path) -> list[str]:
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("_sysconfigdata"):
            continue
        try:
            if p.stat().st_size > MAX_FILE_BYTES or p.stat().st_size == 0:
                continue
        except OSError:
            continue
        files.append(rel.as_posix())
    return files


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


# ----------------------------------------------------------------------------- tokenizer

def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    assert tok.token_to_id(EOS) == 0
    return tok


def encode_stream(tok, texts: list[str]) -> torch.Tensor:
    """Concatenate files, each preceded by <|endoftext|> (the file separator)."""
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.append(eos)
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.int32)


# ----------------------------------------------------------------------------- model

def make_config(vocab_size: int, args, eos_id: int):
    from transformers import CodeGenConfig

    return CodeGenConfig(
        vocab_size=vocab_size,
        n_positions=args.n_positions,
        n_ctx=args.n_positions,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        rotary_dim=args.rotary_dim,
        n_inner=None,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=False,
        architectures=["CodeGenForCausalLM"],
    )


class FastCausalAttention:
    """Training-only speed-up: CodeGen's eager attention upcasts to fp32; use bf16 SDPA instead.

    Mathematically the same causal softmax attention (no padding during training). Evaluation
    and sampling run with the stock transformers implementation (``restore()``).
    """

    def __init__(self):
        import transformers.models.codegen.modeling_codegen as mc
        self.mc = mc
        self.orig = mc.CodeGenAttention._attn

    def enable(self):
        def _attn(mod, query, key, value, attention_mask=None):
            out = F.scaled_dot_product_attention(
                query.to(value.dtype), key.to(value.dtype), value,
                is_causal=True, scale=1.0 / mod.scale_attn)
            return out, None
        self.mc.CodeGenAttention._attn = _attn

    def restore(self):
        self.mc.CodeGenAttention._attn = self.orig


def lr_at(progress: float, step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = min(1.0, max(0.0, progress))
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def heldout_loss(model, windows: list[torch.Tensor], bf16: bool, batch: int = 8) -> tuple[float, int]:
    """Mean next-token NLL (nats) over all targets of the given windows."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        chunk = windows[i:i + batch]
        maxlen = max(len(w) for w in chunk)
        x = torch.zeros(len(chunk), maxlen, dtype=torch.long)
        tgt = torch.full((len(chunk), maxlen), -100, dtype=torch.long)
        for j, w in enumerate(chunk):
            x[j, :len(w)] = w
            tgt[j, :len(w) - 1] = w[1:]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float()[:, :-1].reshape(-1, logits.shape[-1]),
                               tgt[:, :-1].reshape(-1), ignore_index=-100, reduction="sum")
        total += loss.item()
        count += int((tgt[:, :-1] != -100).sum())
    model.train()
    return total / max(count, 1), count


def make_windows(stream: torch.Tensor, length: int) -> list[torch.Tensor]:
    s = stream.long()
    return [s[i:i + length] for i in range(0, len(s) - 1, length) if len(s[i:i + length]) > 1]


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "engine" / "assets" / DEFAULT_NAME)
    ap.add_argument("--stdlib", type=Path, default=None, help="corpus root (default: this Python's stdlib)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20000, help="max optimizer steps")
    ap.add_argument("--minutes", type=float, default=17.0, help="training wall-time budget")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2.5e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--rotary-dim", type=int, default=16)
    ap.add_argument("--n-positions", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--probe-every", type=int, default=100, help="re-pick 1 or --threads threads every N steps (0: never)")
    ap.add_argument("--no-bf16", action="store_true", help="train in fp32 (slow)")
    ap.add_argument("--save-fp32", action="store_true", help="store fp32 weights instead of bf16")
    return ap.parse_args(argv)


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    bf16 = not args.no_bf16

    from tqdm import tqdm
    from transformers import CodeGenForCausalLM, GenerationConfig

    root = (args.stdlib or default_stdlib()).resolve()
    files = collect_files(root)
    train_files, held_files, train_texts, held_texts = [], [], [], []
    for rel in files:
        text = read_text(root / rel)
        if text is None:
            continue
        if is_heldout(rel):
            held_files.append(rel)
            held_texts.append(text)
        else:
            train_files.append(rel)
            train_texts.append(text)
    n_bytes_train = sum(len(t.encode()) for t in train_texts)
    n_bytes_held = sum(len(t.encode()) for t in held_texts)
    log(f"corpus {root}: {len(train_files)} train files ({n_bytes_train/1e6:.2f} MB), "
        f"{len(held_files)} held-out files ({n_bytes_held/1e6:.2f} MB)")

    tok = train_tokenizer(train_texts, args.vocab_size)
    vocab = tok.get_vocab_size()
    eos_id = tok.token_to_id(EOS)
    train_stream = encode_stream(tok, train_texts)
    held_stream = encode_stream(tok, held_texts)
    log(f"tokenizer: vocab {vocab}; train {len(train_stream)} tokens "
        f"({n_bytes_train/len(train_stream):.2f} bytes/token), held-out {len(held_stream)} tokens")

    config = make_config(vocab, args, eos_id)
    model = CodeGenForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: CodeGen {args.n_layer}L x {args.n_embd}d, {args.n_head} heads, rotary_dim "
        f"{args.rotary_dim}, {n_params/1e6:.2f}M parameters")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    held_windows = make_windows(held_stream, args.n_positions)
    rng = random.Random(args.seed + 1)
    probe = rng.sample(held_windows, min(16, len(held_windows)))

    fast = FastCausalAttention()
    fast.enable()
    gen = torch.Generator().manual_seed(args.seed)
    T, B = args.seq_len, args.batch_size
    n_train = len(train_stream)
    budget = args.minutes * 60.0
    t_train = time.time()
    step, tokens_seen, ema = 0, 0, None
    history = []
    bar = tqdm(total=args.steps, desc="train", mininterval=5.0, file=sys.stdout, dynamic_ncols=False)
    model.train()
    # The 2 cores are shared with other jobs: with one core busy elsewhere, 2 OpenMP threads run far
    # slower than 1. Every --probe-every steps, time a few steps at the other thread count and keep
    # the faster one (those steps still train).
    threads, probe_times, cur_times = args.threads, [], []
    while step < args.steps:
        t_step = time.time()
        elapsed = time.time() - t_train
        progress = max(step / args.steps, elapsed / budget)
        if progress >= 1.0:
            break
        lr = lr_at(progress, step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, n_train - T - 1, (B,), generator=gen)
        batch = torch.stack([train_stream[s:s + T + 1] for s in starts.tolist()]).long()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += B * T
        if args.threads > 1 and args.probe_every > 0:
            dt_step = time.time() - t_step
            phase = (step + args.probe_every - 10) % args.probe_every  # first probe at step 10
            if phase == 0:  # start probing the alternative
                torch.set_num_threads(1 if threads > 1 else args.threads)
            elif phase <= 5:
                probe_times.append(dt_step)
                if phase == 5:
                    t_probe = sum(probe_times[1:]) / 4
                    t_cur = sum(cur_times[-5:]) / max(1, len(cur_times[-5:]))
                    if cur_times and t_probe < 0.9 * t_cur:
                        threads = torch.get_num_threads()
                        log(f"step {step}: switching to {threads} thread(s) "
                            f"({t_probe:.2f}s vs {t_cur:.2f}s per step)")
                    torch.set_num_threads(threads)
                    probe_times, cur_times = [], []
            elif phase > 6:
                cur_times.append(dt_step)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.2e}", refresh=False)
        if step % args.eval_every == 0:
            hl, _ = heldout_loss(model, probe, bf16)
            history.append((step, round(ema, 4), round(hl, 4)))
            log(f"step {step} tokens {tokens_seen/1e6:.2f}M train(ema) {ema:.3f} "
                f"held-out(probe) {hl:.3f} lr {lr:.2e} elapsed {time.time()-t_train:.0f}s")
    bar.close()
    train_seconds = time.time() - t_train
    torch.set_num_threads(args.threads)
    fast.restore()
    log(f"trained {step} steps, {tokens_seen/1e6:.2f}M tokens in {train_seconds:.0f}s")

    # Store weights (bf16 by default) and evaluate exactly what is stored, in fp32, with the
    # stock transformers attention.
    save_dtype = torch.float32 if args.save_fp32 else torch.bfloat16
    model = model.to(save_dtype).to(torch.float32)
    model.eval()
    hl, n_eval = heldout_loss(model, held_windows, bf16=False)
    uniform = math.log(vocab)
    log(f"held-out loss {hl:.4f} nats/token over {n_eval} tokens (uniform ln({vocab}) = {uniform:.4f}); "
        f"{hl/uniform:.3f} x uniform; {hl * len(held_stream) / n_bytes_held / math.log(2):.3f} bits/byte")

    per_file = []
    for rel, text in list(zip(held_files, held_texts))[:8]:
        ids = torch.tensor([eos_id] + tok.encode(text).ids[:1023])
        l, _ = heldout_loss(model, make_windows(ids, args.n_positions), bf16=False)
        per_file.append((rel, l))

    samples = sample_completions(model, tok, eos_id, args.seed)
    for prompt, kind, text in samples:
        log(f"{kind} {prompt!r} -> {text!r}")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("pytorch_model.bin", "model.safetensors.index.json"):
        (out / stale).unlink(missing_ok=True)
    model.to(save_dtype).save_pretrained(out, safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text())
    cfg.setdefault("torch_dtype", cfg.get("dtype", str(save_dtype).replace("torch.", "")))  # transformers 4.x key
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
                     max_length=args.n_positions).save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
        "model_max_length": args.n_positions,
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }, indent=2) + "\n")

    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    write_readme(out, args=args, root=root, train_files=train_files, held_files=held_files,
                 n_bytes_train=n_bytes_train, n_bytes_held=n_bytes_held,
                 n_train_tokens=len(train_stream), n_held_tokens=len(held_stream), vocab=vocab,
                 n_params=n_params, step=step, tokens_seen=tokens_seen,
                 train_seconds=train_seconds, total_seconds=time.time() - t_start, hl=hl,
                 n_eval=n_eval, uniform=uniform, per_file=per_file, samples=samples,
                 history=history, save_dtype=save_dtype, size=size)
    log(f"wrote {out} ({sum(f.stat().st_size for f in out.iterdir() if f.is_file())/1e6:.2f} MB); "
        f"total {time.time()-t_start:.0f}s")
    return 0


PROMPTS = ["def ", "import ", "for i in range("]


@torch.no_grad()
def sample_completions(model, tok, eos_id: int, seed: int, max_new_tokens: int = 48):
    out = []
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt).ids])
        for kind in ("greedy", "sampled"):
            kw = dict(do_sample=False) if kind == "greedy" else dict(do_sample=True, temperature=0.8, top_p=0.95)
            if kind == "sampled":
                torch.manual_seed(seed)
            g = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               eos_token_id=eos_id, pad_token_id=eos_id, **kw)
            out.append((prompt, kind, tok.decode(g[0].tolist(), skip_special_tokens=False)))
    return out


def write_readme(out: Path, *, args, root, train_files, held_files, n_bytes_train, n_bytes_held,
                 n_train_tokens, n_held_tokens, vocab, n_params, step, tokens_seen, train_seconds,
                 total_seconds, hl, n_eval, uniform, per_file, samples, history, save_dtype, size):
    dt = "bfloat16" if save_dtype == torch.bfloat16 else "float32"
    lines = [
        f"# {out.name}",
        "",
        "codeinfer's bundled default model: a tiny CodeGen-architecture causal LM "
        "(`CodeGenForCausalLM`) with its own byte-level BPE tokenizer, trained from scratch on "
        "CPU on the Python standard library by `scripts/train_default_model.py`. It is a demo "
        "model: it writes Python-looking code, not correct programs.",
        "",
        "## Files",
        "",
        f"- `config.json`: transformers CodeGenConfig (architectures `CodeGenForCausalLM`), "
        f"bos = eos = pad = 0 (`<|endoftext|>`).",
        f"- `model.safetensors`: weights stored in **{dt}** ({n_params:,} parameters; untied `lm_head`).",
        "- `tokenizer.json`: `tokenizers` byte-level BPE: a Split pre-tokenizer (identifiers, numbers, "
        "punctuation runs, each newline, whitespace runs; spaces are not glued to the next word) "
        "followed by the ByteLevel pre-tokenizer (`use_regex=False`) and the ByteLevel decoder. "
        "`<|endoftext|>` (id 0) separates files and is BOS/EOS. No BOS is added on encode.",
        "- `tokenizer_config.json`, `generation_config.json`: for `transformers` loading.",
        "",
        f"Directory size: {size/1e6:.2f} MB.",
        "",
        "## Architecture",
        "",
        f"- vocab {vocab}, n_embd {args.n_embd}, n_layer {args.n_layer}, n_head {args.n_head} "
        f"(head_dim {args.n_embd // args.n_head}), rotary_dim {args.rotary_dim} (GPT-J style interleaved, "
        f"< head_dim), n_positions = n_ctx = {args.n_positions}, n_inner {4 * args.n_embd}, gelu_new.",
        "",
        "## Training",
        "",
        f"- Seed: {args.seed}. Command: `python -m scripts.train_default_model --seed {args.seed} "
        f"--minutes {args.minutes:g} --steps {args.steps}`"
        + (" --no-bf16" if args.no_bf16 else "") + ".",
        f"- Corpus: `.py` files of the Python {sys.version.split()[0]} standard library at "
        f"`{root}`, skipping the directories {', '.join(sorted(SKIP_DIRS))}, `config-*`, "
        f"`_sysconfigdata*` and files over {MAX_FILE_BYTES} bytes.",
        f"- Split: a file is held out iff `int(sha1(relpath)[:8], 16) % 1000 < {HELDOUT_PER_MILLE}` "
        f"(seed independent). Train: {len(train_files)} files, {n_bytes_train/1e6:.2f} MB, "
        f"{n_train_tokens:,} tokens ({n_bytes_train/n_train_tokens:.2f} bytes/token). "
        f"Held out: {len(held_files)} files, {n_bytes_held/1e6:.2f} MB, {n_held_tokens:,} tokens.",
        f"- Optimiser: AdamW (betas 0.9/0.95, weight decay {args.weight_decay}), peak lr {args.lr}, "
        f"{args.warmup} warm-up steps then time-aware cosine decay to {args.min_lr_frac} x peak, grad clip 1.0, "
        f"batch {args.batch_size} x {args.seq_len} tokens (random windows of the concatenated "
        f"corpus), bf16 autocast{'' if not args.no_bf16 else ' (disabled)'}, {args.threads} threads.",
        f"- Steps: {step}. Tokens seen: {tokens_seen:,} ({tokens_seen/n_train_tokens:.2f} epochs). "
        f"Training wall time: {train_seconds:.0f} s ({train_seconds/60:.1f} min); "
        f"whole script: {total_seconds:.0f} s.",
        "",
        "## Held-out evaluation",
        "",
        f"- Held-out loss: **{hl:.4f} nats/token** over {n_eval:,} tokens (all held-out files, "
        f"{args.n_positions}-token windows, stored {dt} weights evaluated in fp32), versus the "
        f"uniform loss ln({vocab}) = {uniform:.4f}: **{hl/uniform:.3f} x uniform**, "
        f"perplexity {math.exp(hl):.2f}, "
        f"{hl * n_held_tokens / n_bytes_held / math.log(2):.3f} bits/byte.",
        "",
        "Per file (first 1024 tokens, preceded by `<|endoftext|>`):",
        "",
        "| held-out file | loss (nats/token) |",
        "|---|---|",
    ]
    lines += [f"| `{rel}` | {l:.4f} |" for rel, l in per_file]
    lines += ["", "All held-out files:", "", ", ".join(f"`{f}`" for f in held_files), ""]
    if history:
        lines += ["Training curve (step, train loss EMA, held-out loss on 16 probe windows):", "",
                  "| step | train | held-out probe |", "|---|---|---|"]
        lines += [f"| {s} | {tr:.3f} | {h:.3f} |" for s, tr, h in history]
        lines.append("")
    lines += ["## Sample completions", "",
              "transformers `generate`, 48 new tokens, no BOS prepended; sampled = temperature 0.8, "
              f"top_p 0.95, `torch.manual_seed({args.seed})`.", ""]
    for prompt, kind, text in samples:
        lines += [f"**{kind}**, prompt `{prompt}`:", "", "```python", text.replace("```", "` ` `"), "```", ""]
    (out / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
