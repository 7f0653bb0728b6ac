"""Engine replicas on Ray Serve behind the one OpenAI app (`codeinfer serve --num-replicas N`).

Ray is an optional extra: this package's modules that need it import it themselves, and nothing
outside the package imports them unless replicas were asked for. `require_ray()` is the one
place that says what to install.

    HTTP -> Serve proxy -> Ingress (build_app over a ReplicaClient, tokenises)
                              -> PrefixAffinityRouter -> EngineReplica x N (AsyncLLM + engine)
"""

from __future__ import annotations

RAY_EXTRA_HINT = ('Ray Serve is not installed; install the extra with `pip install -e ".[ray]"` '
                  "(from a checkout) or `pip install 'codeinfer[ray]'`")


def require_ray() -> None:
    """ImportError naming the `ray` extra when Ray Serve cannot be imported."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{RAY_EXTRA_HINT} ({exc})") from None
