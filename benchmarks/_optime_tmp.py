import time, collections, torch, sys
from engine import LLM, SamplingParams
from kernels import cpu, cpu_linear
model = None if sys.argv[1] == "bundled" else sys.argv[1]
llm = LLM(model=model, dtype=sys.argv[4] if len(sys.argv) > 4 else "int8", kv_cache_dtype="int8", enable_prefix_caching=False)
acc = collections.defaultdict(float); cnt = collections.Counter()
class Timed:
    def __init__(s, real): s._real = real
    def __getattr__(s, name):
        f = getattr(s._real, name)
        if not callable(f) or name[0].isupper(): return f
        def w(*a, **k):
            t = time.perf_counter(); r = f(*a, **k); acc[name] += time.perf_counter() - t; cnt[name] += 1; return r
        return w
real = cpu._cpu
gen = torch.Generator().manual_seed(0)
n, L = int(sys.argv[2]), int(sys.argv[3])
prompts = [torch.randint(100, 4000, (L,), generator=gen).tolist() for _ in range(n)]
sp = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
llm.generate(prompt_token_ids=prompts, sampling_params=sp)
cpu._cpu = cpu_linear._cpu = Timed(real)
t = time.perf_counter()
for _ in range(5): llm.generate(prompt_token_ids=prompts, sampling_params=sp)
total = (time.perf_counter() - t) / 5
print(f"prefill {n}x{L} total {total*1e3:.1f} ms")
for k, v in sorted(acc.items(), key=lambda kv: -kv[1]): print(f"  {k:24s} {v/5*1e3:7.2f} ms  {cnt[k]//5} calls")
