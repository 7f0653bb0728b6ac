"""`codeinfer serve`: load the model once and answer OpenAI-style completions over HTTP.

SIGTERM/SIGINT: stop accepting connections, let in-flight requests finish for up to
--shutdown-timeout seconds, abort the rest (a stream gets an error event and `data: [DONE]`),
exit 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from ...engine_args import EngineArgs
from ..replicas.options import ReplicaOptions

logger = logging.getLogger("codeinfer.serve")

# vLLM's: level, time, where, message.
LOG_FORMAT = "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"
LOG_DATE_FORMAT = "%m-%d %H:%M:%S"

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Seconds uvicorn waits past --shutdown-timeout, so the requests aborted at the deadline can still
# send their error (and [DONE]) before it cancels whatever is left.
_ANSWER_GRACE_S = 3.0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="OpenAI-compatible completion server",
        description="Serve POST /v1/completions, /tokenize and /detokenize, GET /v1/models, "
                    "/version, /health, /metrics and the OpenAPI page (/docs).")
    p.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                   help="checkpoint folder or Hub id, as `vllm serve MODEL` (or --model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default: 127.0.0.1, which only this machine can reach; "
                        "0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on /v1/*, /tokenize and /detokenize")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting for their first token before new ones get 503")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests may run after SIGTERM before being aborted")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="the least severe messages logged")
    p.add_argument("--disable-log-requests", action="store_true",
                   help="no access-log line per request")
    p.add_argument("--disable-log-stats", action="store_true",
                   help="no periodic engine stats line (throughput, running and waiting "
                        "requests, KV cache usage) while busy")
    p.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=True,
                   help="run the engine in a process of its own (the default), so that HTTP work and the "
                        "engine's steps do not share one GIL (--no-engine-process: on a thread "
                        "of the server process)")
    EngineArgs.add_cli_args(p)
    ReplicaOptions.add_cli_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Until uvicorn installs its own handlers, SIGTERM (e.g. during the model load) exits 0.
    signal.signal(signal.SIGTERM, _exit_now)
    configure_logging(args.log_level)
    if args.model_tag is not None and args.model not in (None, args.model_tag):
        print(f"error: two models: {args.model_tag} and --model {args.model}", file=sys.stderr)
        return 2
    args.model = args.model_tag or args.model
    if args.max_queue < 0:
        print("error: --max-queue must be >= 0", file=sys.stderr)
        return 2
    if args.api_key is not None and not args.api_key.strip():
        print("error: --api-key must not be empty: an empty key would let in any empty bearer "
              "token (leave --api-key out to serve without one)", file=sys.stderr)
        return 2
    if args.host not in _LOOPBACK and args.api_key is None:
        logger.warning("listening on %s without --api-key: anyone who can reach it can use it",
                       args.host)
    try:
        replicas = ReplicaOptions.from_cli_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if replicas.uses_ray:
        return _run_replicas(args, local=replicas.ray_address is None)

    import uvicorn

    from ..async_engine import AsyncLLM
    from ..server import build_app
    from ..server.drain import DrainingServer

    try:
        engine = _load_engine(EngineArgs.from_cli_args(args), args.engine_process)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: cannot load the model: {exc}", file=sys.stderr)
        return 1
    async_llm = AsyncLLM(engine, max_waiting=args.max_queue)
    app = build_app(async_llm, **app_options(args))
    # log_config None: uvicorn's loggers go through ours (one format, with timestamps); its own
    # access log is off, the app writes one line per request with its token counts.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.shutdown_timeout + _ANSWER_GRACE_S,
                            access_log=False, log_config=None)
    # uvicorn re-raises the signal it caught once it has shut down; make that a no-op so a
    # graceful SIGTERM ends with exit status 0.
    signal.signal(signal.SIGTERM, _ignore)
    signal.signal(signal.SIGINT, _ignore)
    server = DrainingServer(config, async_llm, drain_timeout=args.shutdown_timeout)
    server.run()
    return 0 if server.started else 1


def _load_engine(engine_args: EngineArgs, in_process_of_its_own: bool):
    if in_process_of_its_own:
        from ..engine_process import EngineProcess

        return EngineProcess(engine_args)
    from ...core.llm_engine import LLMEngine

    return LLMEngine.from_engine_args(engine_args)


def _run_replicas(args: argparse.Namespace, local: bool) -> int:
    """Engine replicas on Ray Serve behind the same app; fails at once without the extra.
    local: start a Ray instance on loopback (else join --ray-address)."""
    from ..replicas import require_ray

    try:
        require_ray(loopback=local)
    except ImportError as exc:
        print(f"error: --num-replicas / --ray-address need Ray Serve: {exc}", file=sys.stderr)
        return 2
    from ..replicas.launch import run_replicas

    return run_replicas(args, app_options(args))


def app_options(args: argparse.Namespace) -> dict:
    """build_app's keyword arguments from the command line."""
    from ..server.logs import STATS_INTERVAL_S

    return {"api_key": args.api_key, "shutdown_timeout": args.shutdown_timeout,
            "log_requests": not args.disable_log_requests,
            "stats_interval": None if args.disable_log_stats else STATS_INTERVAL_S}


def configure_logging(level: str) -> None:
    """Every logger of the process at `level`, in LOG_FORMAT on standard error."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT,
                        force=True)


def _exit_now(signum, frame):
    raise SystemExit(0)


def _ignore(signum, frame):
    pass
