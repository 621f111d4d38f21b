"""The stream workers as ops see them: what each consumes, how it scales, what it needs.

Each worker is one faust app (consumer group `graduate-<worker>`) scaled by KEDA on the lag of
the topic named here. A consumer group never uses more consumers than the topic has partitions,
so `max_replicas` is capped by the catalog's partition count (see `replica_cap`).
"""
from __future__ import annotations

from dataclasses import dataclass

from services.common import catalog
from services.common.catalog import TopicSpec

WEB_PORT = 6066
# Shared volumes (PersistentVolumeClaim name, mount path): dataset snapshots go from the curator to
# the trainer; the trainer writes the model repository that Triton serves.
VOLUMES = {
    "datasets": ("graduate-datasets", "/var/lib/graduate/datasets"),
    "model-repository": ("graduate-model-repository", "/models"),
}


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    input: TopicSpec  # the topic whose consumer-group lag scales it
    lag_threshold: int  # target lag per replica (KEDA adds a replica above it)
    min_replicas: int
    max_replicas: int  # wanted; the generated value is capped at the input's partitions
    cpu: str
    memory: str
    gpu: bool = False
    cooldown_s: int = 300
    volumes: tuple[str, ...] = ()  # shared claims it mounts, names of VOLUMES
    web: bool = True  # a faust web server on WEB_PORT (/metrics, health); the trainer has none
    job: bool = False  # a KEDA ScaledJob (one Job per pending request) instead of a Deployment

    @property
    def group_id(self) -> str:
        """The faust app id (services.common.streams.app_id) and the trainer's consumer group."""
        return f"graduate-{self.name}"

    @property
    def replica_cap(self) -> int:
        return min(self.max_replicas, self.input.partitions)


# The controller scales by the router outcomes' partitions (keyed by task): a replica decides for the
# tasks of the partitions it holds (services/controller/ownership.py). The trainer trains for minutes
# inside one event, so it does not scale on throughput the way the others do. The trainer (an aiokafka consumer,
# not a faust app, so no web port) is a KEDA ScaledJob: lag 1 starts a Job on a GPU node, which
# trains, commits, and exits once the topic is drained (--exit-when-drained), freeing the GPU.
WORKERS: tuple[WorkerSpec, ...] = (
    WorkerSpec("profiler", catalog.CALLS_CAPTURED, lag_threshold=2000, min_replicas=1, max_replicas=12,
               cpu="500m", memory="512Mi"),
    WorkerSpec("curator", catalog.CALLS_CAPTURED, lag_threshold=2000, min_replicas=1, max_replicas=12,
               cpu="500m", memory="1Gi", volumes=("datasets",)),
    WorkerSpec("shadow", catalog.CALLS_CAPTURED, lag_threshold=500, min_replicas=1, max_replicas=12,
               cpu="1", memory="512Mi"),
    WorkerSpec("judge", catalog.SHADOW_RESULTS, lag_threshold=2000, min_replicas=1, max_replicas=12,
               cpu="500m", memory="512Mi"),
    WorkerSpec("controller", catalog.ROUTER_OUTCOMES, lag_threshold=5000, min_replicas=1, max_replicas=12,
               cpu="500m", memory="512Mi"),
    WorkerSpec("trainer", catalog.RETRAIN_REQUESTS, lag_threshold=1, min_replicas=0, max_replicas=1,
               cpu="4", memory="16Gi", gpu=True, volumes=("datasets", "model-repository"),
               web=False, job=True),
)


def worker(name: str) -> WorkerSpec:
    for spec in WORKERS:
        if spec.name == name:
            return spec
    raise KeyError(f"no worker named {name!r}")
