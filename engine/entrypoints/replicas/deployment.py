"""The Ray Serve application: an Ingress deployment serving the OpenAI app (build_app, the same
one the single-process server runs) over a ReplicaClient, and the EngineReplica deployment it
calls, routed by PrefixAffinityRouter.

The ingress reserves no CPU: it parses, tokenises and relays SSE, little next to an engine's
steps; each engine replica reserves its --threads-per-replica CPUs (ray_actor_options), and
runs its kernels on that many threads.
"""

from __future__ import annotations

import dataclasses

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from ...engine_args import EngineArgs
from .options import ReplicaOptions
from .replica import EngineReplica
from .router import PrefixAffinityRouter
from .stats import ReplicaCollector, StatsBoard, board_name

APP_NAME = "codeinfer"
# Requests the ingress relays at once: far above what the replicas run, so the replicas'
# own bounds (--max-queue, 503 queue_full) are what clients meet.
_INGRESS_MAX_ONGOING = 4096


@serve.ingress()
class Ingress:
    def __init__(self, engine_handle, engine_args: dict, app_options: dict, max_queue: int):
        from ...core.frontend import EngineFrontend
        from .client import ReplicaClient

        app_name = serve.get_replica_context().app_name
        # Owned by this actor, so it lives and dies with the ingress; replicas look it up.
        board = ray.remote(num_cpus=0)(StatsBoard).options(
            name=board_name(app_name), namespace="serve", get_if_exists=True).remote()
        frontend = EngineFrontend.load(EngineArgs(**engine_args))
        self.client = ReplicaClient(engine_handle, frontend, max_queue, board)
        self.app_options = app_options

    def __serve_build_asgi_app__(self):
        from ..server import build_app

        app = build_app(self.client, **self.app_options)
        app.state.metrics.registry.register(ReplicaCollector(self.client))
        return app


def engine_deployment_options(engine_args: EngineArgs, options: ReplicaOptions,
                              max_queue: int) -> dict:
    """serve.deployment options of the engine replicas."""
    cpus = options.cpus_per_replica(engine_args.num_threads)
    scale = {"num_replicas": options.num_replicas}
    if options.autoscaling:
        low, high = options.replica_range
        scale = {"autoscaling_config": {
            "min_replicas": low, "max_replicas": high, "initial_replicas": options.initial_replicas,
            "target_ongoing_requests": options.target_ongoing_requests}}
    deployment = {**scale, "ray_actor_options": {"num_cpus": cpus},
                  # What one engine holds: the sequences it runs and those it lets wait.
                  "max_ongoing_requests": engine_args.max_num_seqs + max_queue,
                  "health_check_period_s": options.health_check_period_s}
    if options.router == "prefix-affinity":
        deployment["request_router_config"] = RequestRouterConfig(
            request_router_class=PrefixAffinityRouter,
            request_router_kwargs={"block_size": engine_args.block_size,
                                   "affinity_blocks": options.affinity_blocks,
                                   "imbalance_threshold": options.imbalance_threshold})
    return deployment


def build_application(engine_args: EngineArgs, options: ReplicaOptions, app_options: dict,
                      max_queue: int):
    """The bound application for serve.run: the engine options apply to every replica."""
    cpus = options.cpus_per_replica(engine_args.num_threads)
    replica_args = dataclasses.replace(engine_args, num_threads=engine_args.num_threads or cpus)
    engine = serve.deployment(EngineReplica, name="EngineReplica").options(
        **engine_deployment_options(engine_args, options, max_queue))
    ingress = serve.deployment(Ingress, name="Ingress", num_replicas=1,
                               ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=_INGRESS_MAX_ONGOING)
    return ingress.bind(engine.bind(replica_args.to_dict(), max_queue), engine_args.to_dict(),
                        app_options, max_queue)
