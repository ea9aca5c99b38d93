"""The deployment sections of the configuration model (`prismatic.config` holds the model and
re-exports these): where the store is reached (`s3`) and how Dagster runs a round's steps
(`orchestration`: executor, k8s, Ray, instance storage). Imports nothing of the project."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """A section of prism.yaml: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class S3Config(Section):
    """How an `s3://bucket/prefix` store is reached (docs/data-model.md#store-layout). Credentials always come from the
    standard AWS chain (environment, profile, instance role), through dagster-aws's S3Resource.

    endpoint_url: an S3-compatible endpoint (MinIO, moto, ...); None: `AWS_ENDPOINT_URL` or AWS itself.
    region_name, profile_name: None: the AWS chain's.
    part_size_mb: a table file larger than this is uploaded in parts of this size (S3's minimum is 5);
      the object appears only when the last part is in, so a reader never sees part of one.
    lock_lease_s: a round lock object whose holder stopped refreshing it for this long is stale.
    """

    endpoint_url: str | None = None
    region_name: str | None = None
    profile_name: str | None = None
    part_size_mb: int = Field(64, ge=5)
    lock_lease_s: float = Field(300.0, gt=0)


class K8sConfig(Section):
    """The k8s executor (dagster-k8s `k8s_job_executor`): one Kubernetes job per step.

    namespace, image, service_account_name: where and what each step pod runs (image None: the
      image of the run's own pod).
    env_secrets: Kubernetes secrets whose keys become the step pods' environment (AWS credentials,
      the Postgres password, the generator's API key).
    shard_gpus: GPUs requested by each gradient-feature shard's pod (`nvidia.com/gpu`).
    """

    namespace: str = "default"
    image: str | None = None
    service_account_name: str | None = None
    env_secrets: list[str] = Field(default_factory=list)
    shard_gpus: int = Field(1, ge=0)


class RayConfig(Section):
    """The ray executor: gradient-feature shards (and generation replicas) as Ray work on a cluster.

    address: the cluster to join: `host:port` of a head's GCS (`ray start --head` prints it),
      `ray://host:10001` through Ray Client, or `auto` (the cluster of `RAY_ADDRESS` or the one this
      machine runs).
    num_cpus_per_shard, num_gpus_per_shard: the resources each feature shard asks the cluster for
      (one actor per shard; it loads the proxy once and computes the shard's batches with
      max(1, round(num_cpus_per_shard)) torch threads).
    retry_deadline_s: how long, in seconds from its first loss, a feature shard or a generation
      replica's chunk whose actor died (its node killed or lost) keeps being started again, with
      backoff, on nodes that are alive, before the round fails.
    generation_replicas: with `generator.backend: vllm`, generate on this many vLLM replicas, Ray
      actors that each hold the model for the run (0: one engine in the run's process).
    num_cpus_per_replica, num_gpus_per_replica: the resources each generation replica asks for.
    runtime_env: Ray's runtime environment of the shards and replicas (env_vars, working_dir, pip, ...).
    """

    address: str = "auto"
    num_cpus_per_shard: float = Field(1.0, ge=0)
    num_gpus_per_shard: float = Field(0.0, ge=0)
    retry_deadline_s: float = Field(300.0, gt=0)
    generation_replicas: int = Field(0, ge=0)
    num_cpus_per_replica: float = Field(1.0, ge=0)
    num_gpus_per_replica: float = Field(0.0, ge=0)
    runtime_env: dict[str, Any] = Field(default_factory=dict)


class PostgresConfig(Section):
    """Dagster instance storage on PostgreSQL (dagster-postgres): runs, events, schedules.

    host, port, db_name, username: the server and database the instance connects to, and as whom.
    password_env: name of the environment variable holding the password (never the password itself).
    """

    host: str = "localhost"
    port: int = Field(5432, gt=0)
    db_name: str = "dagster"
    username: str = "dagster"
    password_env: str = "PRISM_POSTGRES_PASSWORD"


class OrchestrationConfig(Section):
    """How Dagster runs a round's steps and where its instance keeps its records.

    executor: `in_process` (every step in the run's process: one vLLM engine, one proxy load),
      `multiprocess` (one process per step, up to `max_concurrent` at once: feature shards run side
      by side), `k8s` (one Kubernetes job per step, see `k8s`) or `ray` (feature shards as Ray work
      on a cluster, see `ray`).
    max_concurrent: multiprocess: steps at once (0: the number of CPUs).
    storage: `sqlite` (files in `$PRISM_HOME/dagster`) or `postgres` (see `postgres`), for many
      concurrent runs and a deployed daemon and webserver.
    """

    executor: Literal["in_process", "multiprocess", "k8s", "ray"] = "in_process"
    max_concurrent: int = Field(0, ge=0)
    k8s: K8sConfig = K8sConfig()
    ray: RayConfig = RayConfig()
    storage: Literal["sqlite", "postgres"] = "sqlite"
    postgres: PostgresConfig = PostgresConfig()
