"""The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models ...")."""
import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n, c correct, is correct).

    = 1 - C(n-c, k) / C(n, k), computed as a stable product: 1 - prod_{i=n-c+1..n} (1 - k/i).
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts, k: int) -> float:
    """Mean pass@k over problems; counts is an iterable of (n, c) with every n >= k."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("no problems to score")
    return float(np.mean(values))
