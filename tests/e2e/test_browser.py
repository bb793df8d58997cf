"""The user's path through both UIs, in headless Debian Chromium via Playwright.

``gptops serve`` on free ports → Prefect UI: Deployments → retrain → Run → Custom run → set
max_steps → Submit → the deployment's Runs tab → the flow run page until Completed → MLflow UI:
the registered model page and the new version with its lineage tags. Screenshots of each step
go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest

from tests.conftest import PROJECT_ROOT
from tests.e2e.conftest import make_small_workspace
from tests.serving import start_serve, stop_serve

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.serial]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SHOTS = PROJECT_ROOT / "test-artifacts" / "browser"
MAX_STEPS = 20


@pytest.fixture(scope="module")
def served_small(tmp_path_factory, data_ready):
    ws = make_small_workspace(tmp_path_factory.mktemp("browser") / "ws", data_ready)
    log = ws.parent / "serve-browser.log"  # not the serve test's log: both live in basetemp
    proc, api, ui = start_serve(ws, log)
    yield {"api": api, "ui": ui, "ws": ws, "log": log, "proc": proc}
    assert stop_serve(proc) == 0


@pytest.fixture()
def page():
    from playwright.sync_api import sync_playwright

    assert __import__("os").path.exists(CHROMIUM), "apt-get install -y chromium"
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(30_000)
        try:
            yield pg
        finally:
            pg.screenshot(path=str(SHOTS / "99-last.png"), full_page=True)
            browser.close()


def api_get(url: str, body: dict | None = None) -> object:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - local URL
        return json.load(r)


def shot(pg, n: int, name: str) -> None:
    pg.screenshot(path=str(SHOTS / f"{n:02d}-{name}.png"), full_page=True)


def test_retrain_from_the_prefect_ui_registers_a_version_in_mlflow(served_small, page):
    from playwright.sync_api import expect

    pg, api, ui = page, served_small["api"], served_small["ui"]
    base = api.removesuffix("/api")

    # 1. Prefect UI: the deployments list shows both deployments
    pg.goto(f"{base}/deployments")
    expect(pg.get_by_role("link", name="retrain", exact=True)).to_be_visible()
    expect(pg.get_by_role("link", name="nightly", exact=True)).to_be_visible()
    expect(pg.get_by_text("Can't connect to Server API")).to_have_count(0)
    shot(pg, 1, "deployments")

    # 2. the retrain deployment → Run → Custom run
    pg.get_by_role("link", name="retrain", exact=True).click()
    run_button = pg.get_by_role("button", name="Run", exact=True)
    expect(run_button).to_be_visible()
    shot(pg, 2, "retrain-deployment")
    run_button.click()
    pg.get_by_text("Custom run", exact=True).click()
    expect(pg).to_have_url(re.compile(r"/deployments/deployment/[0-9a-f-]+/run"))
    def field(label: str):
        title = re.compile(rf"^{label}( \(Optional\))?$")
        return pg.locator(".schema-form-property").filter(
            has=pg.locator(".schema-form-property__label", has_text=title))

    prop = field("max_steps")
    expect(prop).to_have_count(1)
    shot(pg, 3, "custom-run-form")

    # 3. the form, built from the flow's typed parameters: profile is a dropdown of the known
    # profiles; the numbers show the workspace's effective defaults (no "None" toggle)
    profile = field("profile")
    expect(profile.get_by_text("tiny").first).to_be_visible()
    expect(profile.locator(".p-select")).to_have_count(1)  # a dropdown, not a text box
    deployment = api_get(f"{api}/deployments/filter", {"deployments": {"name": {
        "any_": ["retrain"]}}})[0]
    schema = deployment["parameter_openapi_schema"]["properties"]
    from gpt.config import profile_names

    # the dropdown's choices: every profile of params.yaml
    assert sorted(schema["profile"]["enum"]) == sorted(profile_names()) == [
        "gpt2-124m", "gpt2-continue", "tiny"]
    assert schema["max_steps"]["type"] == "integer"  # a plain number, no "None" alternative
    expect(prop.locator("input")).to_have_value("30")  # params.yaml: train.max_steps=30
    expect(field("finetune_steps").locator("input")).to_have_value("60")
    expect(prop.get_by_role("button", name="None", exact=True)).to_have_count(0)
    prop.locator("input").fill(str(MAX_STEPS))
    shot(pg, 4, "form-filled")  # the dropdown shot above keeps number 4 too
    pg.get_by_role("button", name="Submit", exact=True).click()
    t_click = time.perf_counter()
    # back on the deployment's Runs tab, the new run is listed; open its page
    expect(pg).to_have_url(re.compile(r"/deployments/deployment/[0-9a-f-]+\?tab=Runs"))
    run_link = pg.locator('a[href*="/runs/flow-run/"]').first
    expect(run_link).to_be_visible()
    shot(pg, 5, "flow-run-submitted")
    run_link.click()
    expect(pg).to_have_url(re.compile(r"/runs/flow-run/[0-9a-f-]{36}"))
    run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", pg.url).group(1)
    shot(pg, 6, "flow-run-page")

    run = api_get(f"{api}/flow_runs/{run_id}")
    assert run["parameters"]["max_steps"] == MAX_STEPS
    assert run["parameters"]["workdir"] == str(served_small["ws"])

    # 4. wait for the run (Prefect API), keeping the run page open
    deadline = time.time() + 360  # ~80 s on an idle 2-core machine; CI machines are busier
    while run["state_type"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.time() < deadline, f"flow run still {run['state_name']}"
        time.sleep(2)
        run = api_get(f"{api}/flow_runs/{run_id}")
    t_done = time.perf_counter() - t_click
    assert run["state_type"] == "COMPLETED", served_small["log"].read_text()[-4000:]
    pg.reload()
    expect(pg.get_by_text("Completed").first).to_be_visible()
    shot(pg, 7, "flow-run-completed")
    pg.get_by_text("Artifacts", exact=True).first.click()
    expect(pg.get_by_text("mlflow-base-model").first).to_be_visible()
    shot(pg, 8, "flow-run-artifacts")

    # 5. the new version in MLflow, tagged with this flow run
    versions = api_get(f"{ui}/ajax-api/2.0/mlflow/model-versions/search?filter="
                       "name%3D%27gptops-base%27")["model_versions"]
    mine = [v for v in versions
            if {"key": "prefect_flow_run_id", "value": run_id} in v.get("tags", [])]
    assert mine, versions
    version = mine[0]["version"]
    t_registered = time.perf_counter() - t_click

    pg.goto(f"{ui}/#/models/gptops-base")
    expect(pg.get_by_text(f"Version {version}").first).to_be_visible()
    shot(pg, 9, "mlflow-registered-model")
    pg.goto(f"{ui}/#/models/gptops-base/versions/{version}")
    expect(pg.get_by_text(run_id).first).to_be_visible()
    for tag in ("data_version", "git_commit", "model_key", "prefect_flow_run_id"):
        expect(pg.get_by_text(tag, exact=True).first).to_be_visible()
    shot(pg, 10, "mlflow-model-version-tags")

    # 6. the MLflow run structure: one parent run per flow run, named after it, with one nested
    # child per training step that ended with its step (no overlaps) and logged its input data
    exp = api_get(f"{ui}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=gptops")
    exp_id = exp["experiment"]["experiment_id"]
    found = api_get(f"{ui}/ajax-api/2.0/mlflow/runs/search", {
        "experiment_ids": [exp_id], "max_results": 100,
        "filter": f"tags.prefect_flow_run_id = '{run_id}'"})["runs"]

    def tag(r: dict, key: str) -> str | None:
        return next((t["value"] for t in r["data"].get("tags", []) if t["key"] == key), None)

    parents = [r for r in found if tag(r, "mlflow.parentRunId") is None]
    assert [r["info"]["run_name"] for r in parents] == [run["name"]]
    parent = parents[0]
    children = sorted((r for r in found if tag(r, "mlflow.parentRunId")
                       == parent["info"]["run_id"]), key=lambda r: int(r["info"]["start_time"]))
    assert [r["info"]["run_name"].split()[0] for r in children] == ["pretrain", "finetune", "sft"]
    for a, b in zip(children, children[1:], strict=False):
        assert int(a["info"]["end_time"]) <= int(b["info"]["start_time"])
    assert int(children[-1]["info"]["end_time"]) <= int(parent["info"]["end_time"])
    pretrain_run = children[0]
    datasets = pretrain_run["inputs"]["dataset_inputs"]
    assert [d["dataset"]["digest"] for d in datasets] == [tag(parent, "data_version")]
    pg.goto(f"{ui}/#/experiments/{exp_id}/runs/{pretrain_run['info']['run_id']}")
    expect(pg.get_by_text(datasets[0]["dataset"]["name"]).first).to_be_visible()
    expect(pg.get_by_text(run["name"]).first).to_be_visible()  # its parent, by name
    shot(pg, 11, "mlflow-child-run-with-dataset")

    timings = {"click_to_completed_s": round(t_done, 1),
               "click_to_registered_version_s": round(t_registered, 1),
               "flow_run_id": run_id, "model_version": version}
    (SHOTS / "timings.json").write_text(json.dumps(timings, indent=2))
    print(timings)
