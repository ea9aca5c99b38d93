"""Scale-out by config, no cluster and no server: the k8s executor, Postgres storage, the S3 IO manager
and the shard GPU request load from prism.yaml as configured; dagster.yaml validates against Dagster's
instance schema without connecting; the multiprocess executor gets its limit; bad combinations fail."""

import os
import socket

import kubernetes
import pytest
import yaml
from dagster import in_process_executor, op
from dagster._core.instance.config import dagster_instance_config
from dagster_aws.s3 import S3PickleIOManager
from dagster_k8s.job import get_user_defined_k8s_config
from dagster_k8s.models import k8s_model_from_dict

from prism_assets.automation.instance import write_instance_settings
from prism_assets.definitions import build_definitions
from prism_assets.scaleout import shard_op_tags
from prismatic.config_file import load_config
from prismatic.errors import InputError

PASSWORD = "pg-SECRET-5f2a91"

K8S = """
store: s3://bucket/prefix
s3:
  endpoint_url: http://minio.example:9000
  region_name: eu-west-1
orchestration:
  executor: k8s
  max_concurrent: 6
  k8s:
    namespace: prism
    image: registry.example/prism:1.2
    service_account_name: prism-runner
    env_secrets: [prism-aws, prism-postgres]
    shard_gpus: 1
  storage: postgres
  postgres:
    host: db.example
    port: 6543
    db_name: dagster_prism
    username: prism
    password_env: PRISM_TEST_PG_PASSWORD
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("PRISM_STORE", raising=False)
    monkeypatch.setenv("PRISM_TEST_PG_PASSWORD", PASSWORD)


def make_home(tmp_path, text):
    home = tmp_path / "home"
    home.mkdir()
    (home / "prism.yaml").write_text(text)
    return home


def executor_config(executor_def) -> dict:
    resolved = executor_def.config_schema.resolve_config({})
    assert resolved.success, resolved.errors
    return resolved.value["config"]


def test_k8s_executor_postgres_storage_and_s3_io_manager_load_from_config(tmp_path):
    home = make_home(tmp_path, K8S)
    defs = build_definitions(str(home))
    for name in ("prism_round", "seed_job", "round_checks"):
        job = defs.resolve_job_def(name)
        assert job.executor_def.name == "k8s"
        assert job.resource_defs["io_manager"].configurable_resource_cls is S3PickleIOManager
    settings = executor_config(defs.resolve_job_def("prism_round").executor_def)
    assert settings["job_namespace"] == "prism"
    assert settings["job_image"] == "registry.example/prism:1.2"
    assert settings["service_account_name"] == "prism-runner"
    assert settings["env_secrets"] == ["prism-aws", "prism-postgres"]
    assert settings["env_vars"] == [f"PRISM_HOME={home}", "PRISM_STORE=s3://bucket/prefix"]
    assert settings["max_concurrent"] == 6

    io_manager = defs.resources["io_manager"]
    assert isinstance(io_manager, S3PickleIOManager)
    assert (io_manager.s3_bucket, io_manager.s3_prefix) == ("bucket", "prefix/_dagster_io")
    s3 = io_manager.s3_resource
    assert (s3.endpoint_url, s3.region_name, s3.profile_name) == ("http://minio.example:9000", "eu-west-1", None)
    assert s3.aws_access_key_id is None and s3.aws_secret_access_key is None  # the AWS chain's
    assert {"prism_home", "store", "generator", "proxy"} <= set(defs.resources)

    # A shard op with these tags gets a pod whose container asks for one GPU.
    tags = shard_op_tags(load_config(home))

    @op(tags=tags)
    def shard():
        pass

    container = get_user_defined_k8s_config(shard.tags).container_config
    resources = k8s_model_from_dict(kubernetes.client.V1Container, {"name": "step", **container}).resources
    assert resources.limits == {"nvidia.com/gpu": "1"}
    assert shard_op_tags(load_config(home).orchestration) == tags


def test_postgres_dagster_yaml_validates_without_connecting(tmp_path):
    home = make_home(tmp_path, K8S)
    path = write_instance_settings(home / "dagster", load_config(home).orchestration)
    text = path.read_text()
    assert PASSWORD not in text
    written = yaml.safe_load(text)
    assert written["storage"] == {"postgres": {"postgres_db": {
        "hostname": "db.example", "port": 6543, "db_name": "dagster_prism", "username": "prism",
        "password": {"env": "PRISM_TEST_PG_PASSWORD"}, "scheme": "postgresql+psycopg2"}}}
    assert written["telemetry"] == {"enabled": False}
    validated, instance_class = dagster_instance_config(str(path.parent))  # Dagster's schema; no connection
    assert instance_class is None
    db = validated["storage"]["postgres"]["postgres_db"]
    assert db["password"] == {"env": "PRISM_TEST_PG_PASSWORD"} and db["port"] == 6543
    assert validated["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}


def test_storage_key_follows_prism_yaml_and_other_keys_stay(tmp_path):
    home = make_home(tmp_path, K8S)
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("run_monitoring:\n  enabled: true\ntelemetry:\n  enabled: true\n")
    postgres = load_config(home).orchestration
    sqlite = postgres.model_copy(update={"storage": "sqlite"})
    for orchestration in (postgres, sqlite, postgres, sqlite):
        written = yaml.safe_load(write_instance_settings(dagster_home, orchestration).read_text())
        assert written["run_monitoring"] == {"enabled": True} and written["telemetry"] == {"enabled": True}
        if orchestration.storage == "postgres":
            assert written["storage"]["postgres"]["postgres_db"]["hostname"] == "db.example"
        else:
            assert "storage" not in written
        assert dagster_instance_config(str(dagster_home))[0]["run_monitoring"]["enabled"] is True


@pytest.mark.parametrize(("limit", "expected"), [(3, 3), (0, os.cpu_count())])
def test_multiprocess_executor_gets_max_concurrent(tmp_path, limit, expected):
    home = make_home(tmp_path, f"orchestration:\n  executor: multiprocess\n  max_concurrent: {limit}\n")
    defs = build_definitions(str(home))
    executor_def = defs.resolve_job_def("prism_round").executor_def
    assert executor_def.name == "multiprocess"
    assert executor_config(executor_def)["max_concurrent"] == expected
    assert executor_config(executor_def)["start_method"] == {  # steps fork from a server that imported the code
        "forkserver": {"preload_modules": ["prism_assets.definitions"]}}
    assert "io_manager" not in defs.resources  # Dagster's default: files, which local processes share
    assert shard_op_tags(load_config(home)) == {}


@pytest.mark.parametrize("store", [None, "/data/prism-store"])
def test_k8s_executor_with_a_local_store_is_a_config_error(tmp_path, store):
    text = "orchestration:\n  executor: k8s\n" + (f"store: {store}\n" if store else "")
    home = make_home(tmp_path, text)
    with pytest.raises(InputError) as raised:
        build_definitions(str(home))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{home / 'prism.yaml'}: field 'orchestration.executor': ")
    assert (store or str(home / "store")) in message
    assert "s3://bucket/prefix" in message and "own pod" in message
    assert raised.value.field == "orchestration.executor"


def test_default_is_in_process_and_sqlite(tmp_path):
    home = make_home(tmp_path, "orchestration:\n  storage: sqlite\n")
    defs = build_definitions(str(home))
    assert defs.resolve_job_def("prism_round").executor_def is in_process_executor
    assert set(defs.resources) == {"prism_home", "store", "generator", "proxy"}
    assert shard_op_tags(load_config(home)) == {}
    written = yaml.safe_load(write_instance_settings(home / "dagster", load_config(home).orchestration).read_text())
    assert written == {"telemetry": {"enabled": False}, "concurrency": {"pools": {"granularity": "run",
                                                                                  "default_limit": 1}}}


RAY = """
orchestration:
  executor: ray
  ray:
    address: 127.0.0.1:{port}
    num_cpus_per_shard: 2
    num_gpus_per_shard: 1
    retry_deadline_s: 5
    runtime_env: {{env_vars: {{HF_HOME: /models/hf}}}}
features:
  shards: 4
"""


def test_ray_executor_runs_steps_in_process_and_shards_in_two_ray_ops(tmp_path):
    home = make_home(tmp_path, RAY.format(port=6379))
    ray = load_config(home).orchestration.ray
    assert (ray.address, ray.num_cpus_per_shard, ray.num_gpus_per_shard) == ("127.0.0.1:6379", 2, 1)
    assert ray.retry_deadline_s == 5
    assert ray.runtime_env == {"env_vars": {"HF_HOME": "/models/hf"}}
    defs = build_definitions(str(home))
    job = defs.resolve_job_def("prism_round")
    assert job.executor_def is in_process_executor
    assert "io_manager" not in defs.resources  # shard results come back through Ray's object store
    graph = next(node for node in job.graph.node_defs if node.name == "gradient_features")
    assert {node.name for node in graph.node_defs} == {"feature_shards_on_ray", "merge_ray_feature_shards"}
    assert shard_op_tags(load_config(home)) == {}


def test_ray_config_refuses_unknown_keys_and_negative_retries(tmp_path):
    home = make_home(tmp_path, "orchestration:\n  executor: ray\n  ray:\n    retry_deadline_s: -1\n")
    with pytest.raises(InputError) as raised:
        load_config(home)
    assert raised.value.field == "orchestration.ray.retry_deadline_s" and raised.value.line == 4
    (tmp_path / "b").mkdir()
    home2 = make_home(tmp_path / "b", "orchestration:\n  ray:\n    adress: 127.0.0.1:6379\n")
    with pytest.raises(InputError) as raised:
        load_config(home2)
    assert raised.value.field == "orchestration.ray.adress" and raised.value.line == 3


def test_an_unreachable_ray_head_is_one_error_naming_the_address(tmp_path):
    import ray

    from prismatic.config import RayConfig
    from prismatic.ray_connect import connect

    with socket.socket() as sock:  # a port nothing listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config_path = tmp_path / "prism.yaml"
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}", "no-port-here"):
        with pytest.raises(InputError) as raised:
            connect(RayConfig(address=address), config_path)
        message = str(raised.value)
        assert raised.value.field == "orchestration.ray.address" and "\n" not in message
        assert message.startswith(f"{config_path}: field 'orchestration.ray.address': ") and address in message
    assert not ray.is_initialized()  # nothing was joined, and no local cluster was started


@pytest.mark.parametrize("executor", ["ray", "in_process"])
def test_generation_replicas_make_a_replica_engine_only_under_the_ray_executor(tmp_path, executor, tiny_model_dir):
    from prismatic.generation.engines.ray_replicas import RayReplicaEngine
    from prismatic.generation.engines.vllm import VLLMEngine
    from resources.generator import GeneratorResource, close_engines
    from resources.home import PrismHome

    home = make_home(tmp_path, f"generator: {{model: {tiny_model_dir}}}\norchestration:\n  executor: {executor}\n"
                               "  ray: {address: '127.0.0.1:1', generation_replicas: 2}\n")
    engine = GeneratorResource(prism_home=PrismHome(home=str(home))).engine()
    try:
        if executor == "ray":  # built, nothing started: no cluster joined, no replica, no model loaded
            assert isinstance(engine, RayReplicaEngine) and engine._replicas == []
            assert engine.ray_config.generation_replicas == 2 and engine.config_path == home / "prism.yaml"
        else:
            assert isinstance(engine, VLLMEngine) and engine._llm is None
    finally:
        close_engines()


def test_prism_run_refuses_an_unreachable_ray_head_before_writing_anything(tmp_path, monkeypatch):
    from prism_cli.runner import run_round
    from prismatic.storage.factory import open_store

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = make_home(tmp_path, RAY.format(port=port))
    monkeypatch.setenv("PRISM_HOME", str(home))  # run_round sets it; restored after the test
    with pytest.raises(InputError) as raised:
        run_round(home, "r000")
    assert raised.value.field == "orchestration.ray.address" and f"127.0.0.1:{port}" in str(raised.value)
    assert open_store(home / "store").tables() == [] and not (home / "dagster").exists()
