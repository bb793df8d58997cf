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


def test_prefect_yaml_declares_both_deployments(prefect_yaml):
    deps = {d["name"]: d for d in prefect_yaml["deployments"]}
    assert set(deps) == {"nightly", "retrain"}
    for d in deps.values():
        assert d["entrypoint"] == "flows/pipeline.py:training_pipeline"
        assert d["work_pool"]["name"] == "gptops-pool"
        assert d["concurrency_limit"]["limit"] == 1
        assert d["concurrency_limit"]["collision_strategy"] in ("ENQUEUE", "CANCEL_NEW")
        assert "workdir" in d["parameters"]
    (nightly,) = deps["nightly"]["schedules"]
    assert nightly["cron"] == "0 2 * * *" and nightly["timezone"] == "UTC"
    assert nightly.get("active", True)
    assert not deps["retrain"].get("schedules")


def test_prefect_yaml_is_valid_for_prefect_deploy(prefect_yaml):
    """Prefect's own model of prefect.yaml accepts it, schedules included."""
    from prefect.cli.deploy._models import PrefectYamlModel, RawScheduleConfig

    model = PrefectYamlModel.model_validate(prefect_yaml)
    assert [d.name for d in model.deployments] == ["nightly", "retrain"]
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


def test_pool_setup_matches_serve():
    """The deployments `gptops serve` serves carry the same schedule and limit as prefect.yaml."""
    from flows.deploy import build_deployments

    nightly, retrain = build_deployments(".", "0 2 * * *", "UTC")
    assert nightly.concurrency_limit == retrain.concurrency_limit == 1
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert not retrain.schedules


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
    assert "pip install -e ." in text or "pip install ." in text
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
