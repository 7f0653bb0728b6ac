"""Engine replicas on Ray Serve behind the one OpenAI app (`codeinfer serve --num-replicas N`).

Ray is an optional extra: this package's modules that need it import it themselves, and nothing
outside the package imports them unless replicas were asked for. `require_ray()` is the one
place that says what to install.

    HTTP -> Serve proxy -> Ingress (build_app over a ReplicaClient, tokenises)
                              -> PrefixAffinityRouter -> EngineReplica x N (AsyncLLM + engine)
"""

from __future__ import annotations

import os
import sys

RAY_EXTRA_HINT = ('Ray Serve is not installed; install the extra with `pip install -e ".[ray]"` '
                  "(from a checkout) or `pip install 'codeinfer[ray]'`")


# Ray resolves 127.0.0.1 given as the node address to the machine's own IP, on purpose (its
# nodes must reach each other); only its single-machine mode (the one macOS and Windows get)
# binds every Ray port to loopback. It is read when ray is first imported.
_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def require_ray(loopback: bool = False) -> None:
    """Import Ray Serve (ImportError naming the `ray` extra when it is missing). loopback: Ray
    instances this process starts, and their processes, listen on 127.0.0.1 only."""
    if loopback:
        assert sys.modules.get("ray") is None, "loopback must be chosen before ray is imported"
        os.environ.update(_LOOPBACK_ENV)
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{RAY_EXTRA_HINT} ({exc})") from None
