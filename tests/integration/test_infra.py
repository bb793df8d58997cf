"""Static checks of the deployment files: prefect.yaml and infra/ (no containers are started)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import PROJECT_ROOT

INFRA = PROJECT_ROOT / "infra"


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text(encoding="utf-8"))


#: The deployments `gptops serve` also serves (process pool); the others run on GPU workers.
SERVED = {"nightly", "retrain", "retrain-on-data"}


def test_prefect_yaml_declares_the_deployments(prefect_yaml):
    deps = {d["name"]: d for d in prefect_yaml["deployments"]}
    assert set(deps) == SERVED | {"retrain-gpu", "retrain-k8s"}
    for d in deps.values():
        assert d["entrypoint"] == "flows/pipeline.py:training_pipeline"
        assert d["concurrency_limit"]["limit"] == 1
        assert d["concurrency_limit"]["collision_strategy"] in ("ENQUEUE", "CANCEL_NEW")
        assert "workdir" in d["parameters"]
    assert {deps[n]["work_pool"]["name"] for n in SERVED} == {"gptops-pool"}
    assert deps["retrain-gpu"]["work_pool"]["name"] == "gptops-gpu"
    assert deps["retrain-k8s"]["work_pool"]["name"] == "gptops-k8s"
    # The schedule itself is compared with the code in test_prefect_yaml_matches_serve.
    (nightly,) = deps["nightly"]["schedules"]
    assert nightly.get("active", True)
    assert all(not deps[n].get("schedules") for n in deps if n != "nightly")


def test_prefect_yaml_is_valid_for_prefect_deploy(prefect_yaml):
    """Prefect's own model of prefect.yaml accepts it, schedules included."""
    from prefect.cli.deploy._models import PrefectYamlModel, RawScheduleConfig

    model = PrefectYamlModel.model_validate(prefect_yaml)
    assert [d.name for d in model.deployments] == ["nightly", "retrain", "retrain-on-data",
                                                   "retrain-gpu", "retrain-k8s"]
    for d in model.deployments:
        for s in d.schedules or []:
            RawScheduleConfig.model_validate(s if isinstance(s, dict) else s.model_dump())


def test_prefect_yaml_entrypoint_loads_the_flow(prefect_yaml):
    from prefect.flows import load_flow_from_entrypoint

    entry = prefect_yaml["deployments"][0]["entrypoint"]
    path, name = entry.split(":")
    assert (PROJECT_ROOT / path).is_file()
    flow = load_flow_from_entrypoint(str(PROJECT_ROOT / path) + f":{name}")
    assert flow.name == "training_pipeline"
    assert {"profile", "max_steps", "overrides", "workdir"} <= set(flow.parameters.properties)


def _yaml_spec(d: dict) -> dict:
    """What a prefect.yaml deployment states, in the shape of ``_built_spec``."""
    limit = d.get("concurrency_limit")
    if isinstance(limit, int):
        limit = {"limit": limit}
    return {
        "entrypoint": d["entrypoint"],
        "description": d.get("description"),
        "tags": sorted(d.get("tags") or []),
        "schedules": [(s["cron"], s.get("timezone"), s.get("day_or", True), s.get("active", True))
                      for s in d.get("schedules") or []],
        "concurrency": ((limit["limit"], limit.get("collision_strategy", "ENQUEUE"))
                        if limit else None),
    }


def _built_spec(dep) -> dict:
    """The same fields of a RunnerDeployment built by flows.deploy.build_deployments."""
    opts = dep.concurrency_options
    return {
        "entrypoint": dep.entrypoint,
        "description": dep.description,
        "tags": sorted(dep.tags),
        "schedules": [(s.schedule.cron, s.schedule.timezone, s.schedule.day_or, s.active)
                      for s in dep.schedules],
        "concurrency": ((dep.concurrency_limit, opts.collision_strategy.value if opts
                         else "ENQUEUE") if dep.concurrency_limit else None),
    }


def _serve_defaults() -> dict:
    """The schedule options `gptops serve` passes on when none are given (its CLI defaults)."""
    import inspect

    from flows.cli import serve

    sig = inspect.signature(serve).parameters
    return {"cron": sig["cron"].default, "timezone": sig["timezone"].default}


def test_prefect_yaml_matches_serve(prefect_yaml, monkeypatch):
    """prefect.yaml states exactly what `gptops serve` deploys (flows/deploy.py builds it)."""
    from flows.deploy import build_deployments, deployment_triggers
    from flows.serve import DEPLOYMENTS

    monkeypatch.chdir(PROJECT_ROOT)  # entrypoints are relative to the project root in both
    built = {d.name: d for d in build_deployments(str(PROJECT_ROOT), **_serve_defaults())}
    names = [d["name"] for d in prefect_yaml["deployments"]]
    assert len(names) == len(set(names))  # no duplicates
    declared = {d["name"]: d for d in prefect_yaml["deployments"] if d["name"] in SERVED}
    assert set(declared) == set(built) == set(DEPLOYMENTS) == SERVED
    for name, dep in built.items():
        assert _yaml_spec(declared[name]) == _built_spec(dep), name
        # prefect.yaml fills workdir from the environment; serve adds the workspace's form values.
        assert set(declared[name].get("parameters") or {}) <= set(dep.parameters), name
        assert [_automation(t) for t in dep.triggers] == [_automation(t) for t in
                                                          deployment_triggers(name)]
        assert dep.flow_name == "training_pipeline"


def _automation(trigger) -> dict:
    """The automation a deployment trigger becomes (for a fixed deployment id)."""
    from uuid import UUID

    trigger.set_deployment_id(UUID(int=1))
    return trigger.as_automation().model_dump(mode="json")


def test_every_deployment_re_runs_a_crashed_run(prefect_yaml):
    """Each deployment's triggers, as `prefect deploy` reads them, are deployment_triggers'
    (rerun_on_crash for all; retrain-on-data's event first for that one)."""
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    from flows.deploy import deployment_triggers, rerun_on_crash

    for d in prefect_yaml["deployments"]:
        triggers = _initialize_deployment_triggers(d["name"], d.get("triggers") or [])
        assert [_automation(t) for t in triggers] == [
            _automation(t) for t in deployment_triggers(d["name"])], d["name"]
        assert _automation(triggers[-1]) == _automation(rerun_on_crash(d["name"]))


def test_deploy_defaults_are_serve_defaults():
    """`python -m flows.deploy` alone and `gptops serve` schedule the same (one constant)."""
    import inspect

    from flows.deploy import NIGHTLY_CRON, NIGHTLY_TIMEZONE, build_deployments
    from flows.serve import serve_all

    assert _serve_defaults() == {"cron": NIGHTLY_CRON, "timezone": NIGHTLY_TIMEZONE}
    for fn in (build_deployments, serve_all):
        sig = inspect.signature(fn).parameters
        assert (sig["cron"].default, sig["timezone"].default) == (NIGHTLY_CRON,
                                                                  NIGHTLY_TIMEZONE), fn
    readme = (PROJECT_ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert f'[--cron "{NIGHTLY_CRON}"] [--timezone {NIGHTLY_TIMEZONE}]' in readme


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text(encoding="utf-8"))


def test_compose_services(compose):
    services = compose["services"]
    assert {"postgres", "mlflow", "prefect-server", "worker"} <= set(services)
    mlflow = " ".join(services["mlflow"]["command"].split())
    assert "--backend-store-uri postgresql+psycopg://" in mlflow
    assert "--artifacts-destination /mlartifacts" in mlflow and "--serve-artifacts" in mlflow
    assert any(v.startswith("mlartifacts:") for v in services["mlflow"]["volumes"])
    prefect_db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and "@postgres:5432/" in prefect_db
    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "infra/Dockerfile"
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "gptops-pool" in " ".join(worker["command"])
    for name in ("mlflow", "prefect-server"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert set(compose["volumes"]) >= {"pgdata", "mlartifacts"}
    init = (INFRA / "postgres-init.sql").read_text()
    assert "CREATE DATABASE mlflow" in init and "CREATE DATABASE prefect" in init


def test_dockerfile():
    text = (INFRA / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "download.pytorch.org/whl/cpu" in text
    assert 'pip install -e ".[k8s]"' in text  # with the Kubernetes worker
    ignore = (INFRA / "Dockerfile.dockerignore").read_text()
    assert "!gpt/**" in ignore and "!flows/**" in ignore


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    r = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    return [docker, "compose"] if r.returncode == 0 else None


def test_docker_compose_config():
    """`docker compose config` where the compose plugin exists (no engine needed)."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("docker compose is not installed here; the YAML is checked above")
    r = subprocess.run([*cli, "-f", str(INFRA / "docker-compose.yml"), "config", "--quiet"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_psycopg_and_asyncpg_drivers_present():
    """The compose URLs name drivers the image installs (psycopg for MLflow, asyncpg: Prefect)."""
    assert importlib.util.find_spec("psycopg") and importlib.util.find_spec("asyncpg")


# --- scaling out: the GPU worker, the Kubernetes work pool and the multi-node Job -------------

K8S = INFRA / "k8s"
K8S_VERSION = "1.33.0"


def _k8s_docs() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d]
            for p in sorted(K8S.glob("*.yaml"))}


def _validate(resource: dict) -> None:
    """The Kubernetes schema of this API version, strict: unknown fields are errors."""
    import kubernetes_validate

    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def test_every_kubernetes_manifest_is_valid_against_the_schema():
    docs = _k8s_docs()
    assert set(docs) == {"prefect-worker.yaml", "train-multinode.yaml", "workspace-pvc.yaml"}
    kinds = set()
    for resources in docs.values():
        for r in resources:
            _validate(r)
            kinds.add(r["kind"])
    assert kinds == {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "Job",
                     "PersistentVolumeClaim"}


def test_a_schema_violation_is_caught():
    """The validator is not a no-op: a typo in a Job's field fails it."""
    import kubernetes_validate

    job = next(r for r in _k8s_docs()["train-multinode.yaml"] if r["kind"] == "Job")
    bad = {**job, "spec": {**job["spec"], "completionMod": "Indexed"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(bad)


def test_the_kubernetes_work_pool_template_renders_a_valid_gpu_job(prefect_yaml,
                                                                    prefect_server):
    """The base job template, filled by prefect-kubernetes' own job configuration with the
    retrain-k8s deployment's job variables, is a valid Job requesting GPUs."""
    import asyncio
    import json
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

    template = json.loads((K8S / "base-job-template.json").read_text(encoding="utf-8"))
    variables = template["variables"]["properties"]
    default = KubernetesWorker.get_default_base_job_template()
    assert set(default["variables"]["properties"]) <= set(variables)  # the worker's own ones
    (k8s,) = [d for d in prefect_yaml["deployments"] if d["name"] == "retrain-k8s"]
    job_variables = k8s["work_pool"]["job_variables"]
    assert set(job_variables) <= set(variables)
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(
        template, job_variables))
    config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="nightly-run"))
    manifest = config.job_manifest
    _validate(manifest)
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "gptops:gpu"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 8
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/workspace", "/dev/shm"}
    assert {"name": "GPTOPS_WORKDIR", "value": "/workspace"} in container["env"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v]
    pvc = _k8s_docs()["workspace-pvc.yaml"][0]
    assert claims == [pvc["metadata"]["name"]] and "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_the_multinode_job_runs_gptops_pretrain_with_valid_settings():
    """Indexed pods find pod 0 through the headless Service, and the `gptops pretrain` they run
    has settings params.yaml accepts (node rank = the pod's index)."""
    import shlex

    from gpt.config import load_params

    resources = _k8s_docs()["train-multinode.yaml"]
    (svc,) = [r for r in resources if r["kind"] == "Service"]
    (job,) = [r for r in resources if r["kind"] == "Job"]
    spec = job["spec"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"]
    (c,) = pod["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert int(env["NNODES"]) == spec["completions"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] >= 1
    words = shlex.split(c["args"][0].replace("$JOB_COMPLETION_INDEX", "1").replace(
        '"$NNODES"', env["NNODES"]).replace('"$PROFILE"', env["PROFILE"]))
    assert words[:3] == ["exec", "gptops", "pretrain"]
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    params = load_params(PROJECT_ROOT / "params.yaml", env["PROFILE"], sets)
    t = params.launch
    assert (t.nnodes, t.node_rank, t.nproc_per_node) == (2, 1, "auto")
    host, port = t.rdzv_endpoint.rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    assert int(port) == svc["spec"]["ports"][0]["port"]


def test_compose_gpu_worker(compose, prefect_yaml):
    gpu = compose["services"]["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]  # opt-in: CPU machines bring the stack up without it
    assert "whl/cu" in gpu["build"]["args"]["TORCH_INDEX"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    command = " ".join(gpu["command"])
    assert "--name retrain-gpu" in command and "--pool gptops-gpu" in command
    pools = {d["name"]: d["work_pool"]["name"] for d in prefect_yaml["deployments"]}
    assert pools["retrain-gpu"] == "gptops-gpu"
    assert "ARG TORCH_INDEX" in (INFRA / "Dockerfile").read_text()
