"""ReplicaOptions: how many engine replicas, where Ray runs, what each replica reserves.

Pure Python (no Ray): `codeinfer serve` reads these flags and checks them before deciding whether
to import Ray at all."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

# The replica that holds a prompt's prefix keeps getting it until it has this many more ongoing
# requests than the least loaded one: a continuously batched engine takes a few more requests at
# little cost, while a miss re-computes the whole prefix elsewhere.
_ROUTER_IMBALANCE = 8
# prefix-affinity: PrefixAffinityRouter; default: Serve's own (power of two choices), to compare.
ROUTERS = ("prefix-affinity", "default")


@dataclass
class ReplicaOptions:
    num_replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    threads_per_replica: int | None = None
    ray_address: str | None = None
    affinity_blocks: int = 4
    router: str = "prefix-affinity"
    imbalance_threshold: int = _ROUTER_IMBALANCE
    health_check_period_s: float = 2.0

    def __post_init__(self):
        for name in ("num_replicas", "affinity_blocks", "imbalance_threshold"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("min_replicas", "max_replicas", "threads_per_replica"):
            value = getattr(self, name)
            low = 0 if name == "min_replicas" else 1
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{name} must be an integer >= {low} or None, got {value!r}")
        if self.autoscaling:
            low, high = self.replica_range
            if high < max(low, 1):
                raise ValueError(f"max_replicas ({high}) must be >= 1 and >= min_replicas ({low})")
        if not self.target_ongoing_requests > 0:
            raise ValueError(f"target_ongoing_requests must be > 0, got "
                             f"{self.target_ongoing_requests!r}")
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {', '.join(ROUTERS)}, got {self.router!r}")
        if self.ray_address is not None and not self.ray_address.strip():
            raise ValueError("ray_address must not be empty")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def replica_range(self) -> tuple[int, int]:
        """(min, max) replicas when autoscaling (Serve's defaults for a missing bound: at least
        1, at most what it starts with)."""
        low = 1 if self.min_replicas is None else self.min_replicas
        high = max(self.num_replicas, low) if self.max_replicas is None else self.max_replicas
        return low, high

    @property
    def initial_replicas(self) -> int:
        """The replicas to start with: num_replicas, within the autoscaling range."""
        low, high = self.replica_range
        return min(max(self.num_replicas, low), high)

    @property
    def uses_ray(self) -> bool:
        """Replicas were asked for: more than one (now or by autoscaling) or a cluster to join."""
        return self.num_replicas > 1 or self.autoscaling or self.ray_address is not None

    def cpus_per_replica(self, num_threads: int | None) -> int:
        """The CPUs a replica reserves: --threads-per-replica, else the engine's --threads, else 1."""
        return self.threads_per_replica or num_threads or 1

    def local_num_cpus(self, num_threads: int | None) -> int:
        """Logical CPUs of a local Ray instance: the machine's, or what the replicas reserve at
        most when that is more (Ray would otherwise leave replicas pending for ever)."""
        most = self.replica_range[1] if self.autoscaling else self.num_replicas
        return max(os.cpu_count() or 1, most * self.cpus_per_replica(num_threads))

    # ------------------------------------------------------------------ the CLI
    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "replicas", "several engine replicas behind this endpoint, on Ray Serve (the `ray` "
                        "extra: pip install -e \".[ray]\")")
        group.add_argument("--num-replicas", type=int, default=1, metavar="N",
                           help="engine replicas (more than 1 serves through Ray Serve); with "
                                "autoscaling, the number to start with (within the range)")
        group.add_argument("--min-replicas", type=int, default=None, metavar="N",
                           help="autoscale on ongoing requests, down to N replicas")
        group.add_argument("--max-replicas", type=int, default=None, metavar="N",
                           help="autoscale on ongoing requests, up to N replicas")
        group.add_argument("--target-ongoing-requests", type=float, default=8.0, metavar="N",
                           help="autoscaling aims at this many requests in each replica")
        group.add_argument("--threads-per-replica", type=int, default=None, metavar="N",
                           help="CPUs each replica reserves in Ray and its kernel threads "
                                "(default: --threads, else 1)")
        group.add_argument("--ray-address", default=None, metavar="ADDR",
                           help="join this Ray cluster (e.g. 10.0.0.1:6379) instead of starting a "
                                "local Ray instance bound to 127.0.0.1")
        group.add_argument("--affinity-blocks", type=int, default=4, metavar="N",
                           help="the router sends prompts whose first N full KV blocks are "
                                "equal to the same replica (fewer full blocks: least loaded)")
        group.add_argument("--request-router", dest="router", default="prefix-affinity",
                           choices=ROUTERS,
                           help="how requests pick a replica: by prompt prefix (keeps prefix "
                                "caching useful), or Ray Serve's default (least loaded of two "
                                "random replicas)")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ReplicaOptions:
        return cls(num_replicas=args.num_replicas, min_replicas=args.min_replicas,
                   max_replicas=args.max_replicas,
                   target_ongoing_requests=args.target_ongoing_requests,
                   threads_per_replica=args.threads_per_replica, ray_address=args.ray_address,
                   affinity_blocks=args.affinity_blocks, router=args.router)
