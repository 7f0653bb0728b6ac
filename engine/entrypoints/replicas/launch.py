"""`codeinfer serve --num-replicas N [--ray-address ADDR]`: start (or join) Ray, deploy the app,
serve until SIGTERM/SIGINT, then take down what this process put up.

Without --ray-address a local Ray instance is started, bound to 127.0.0.1 (see require_ray) and
without its dashboard; it ends with this process. With one, the app is deployed on that cluster and deleted
at exit, leaving the cluster (and Serve's proxies) as they were.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from ...engine_args import EngineArgs
from .options import ReplicaOptions

logger = logging.getLogger("codeinfer.serve")


def local_ray_options(num_cpus: int) -> dict:
    """ray.init's arguments for a single-machine instance (bound to loopback when Ray was
    imported through require_ray(loopback=True))."""
    return {"num_cpus": num_cpus, "include_dashboard": False, "configure_logging": False,
            "log_to_driver": False}


def run_replicas(args, app_options: dict) -> int:
    """The serve command's replica mode; args: its parsed command line."""
    import ray
    from ray import serve

    from .deployment import APP_NAME, build_application

    options = ReplicaOptions.from_cli_args(args)
    engine_args = EngineArgs.from_cli_args(args)
    local = options.ray_address is None
    if local:
        ray.init(**local_ray_options(options.local_num_cpus(engine_args.num_threads)))
    else:
        ray.init(address=options.ray_address, configure_logging=False, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        start = time.monotonic()
        app = build_application(engine_args, options, app_options, args.max_queue)
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        logger.info("serving %s on http://%s:%d with %s engine replicas (%.1f s to deploy)",
                    engine_args.model or "the bundled model", args.host, args.port,
                    "%d-%d" % options.replica_range if options.autoscaling else options.num_replicas,
                    time.monotonic() - start)
        while not stop.wait(1.0):
            pass
        return 0
    except RuntimeError as exc:  # Serve's deploy failures (a replica that cannot load the model)
        logger.error("the replicas could not be deployed: %s", exc)
        return 1
    finally:
        _take_down(local, APP_NAME)


def _take_down(local: bool, app_name: str) -> None:
    import ray
    from ray import serve

    try:
        if local:
            serve.shutdown()
        else:
            serve.delete(app_name)
    finally:
        ray.shutdown()
