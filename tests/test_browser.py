"""MLflow's UI as a researcher uses it, in a real headless Chromium (issue 13): a store made by a tiny
sweep (digits, 2 trials, 4 steps), served by a real ``mlflow ui`` on 127.0.0.1, opened with Playwright.

Asserted in the browser: the experiment's runs page lists the sweep's parent and, expanded, both its
children; MLflow's compare-runs page shows both trials' searched parameters and a metric chart (its Plotly
parallel-coordinates plot with a val_fid_domain axis spanning both trials' values); a sample grid logged as an
MLflow image (``val_samples``) shows, loaded with a non-zero size and in view, in its image-grid card on a trial's
"Model metrics" tab (opened full screen, at the last logged step).

Needs Playwright for Python (the ``test`` extra) and Debian's ``chromium`` (``apt-get install -y chromium``;
Playwright's own browser download needs the internet). Marked ``browser``: left out of the default run,
``python -m pytest -q -m browser`` runs it (``.ci/run`` does). MLflow 3.17's UI is a React app: every check
waits for its element with a deadline (pages took up to ~70 s to draw on a loaded 2-core machine).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator import sweep, tracking
from orchestrator.cli import main

pytestmark = pytest.mark.browser

WAIT_MS = 300_000  # per element; the React app fetches and draws after the page loads

TINY_MFH = """
metric: val_fid_domain
mode: min
params:
  lr:          {distribution: loguniform, low: 1.0e-4, high: 3.0e-3}
  memory_size: {distribution: int, low: 8, high: 16}
fixed: {eval_every: 2, val_generate: 72, n_generate: 40}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, seconds: float) -> None:
    """Poll ``url`` until it answers 200 (the server is up), failing if the server exits or time runs out."""
    deadline = time.time() + seconds
    while True:
        assert proc.poll() is None, f"server exited with {proc.returncode} before answering {url}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.time() < deadline, f"{url} did not answer within {seconds:.0f} s"
        time.sleep(0.5)  # polling the port, not waiting for an event


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A store holding one tiny MFH sweep on digits (the command starts and stops its own local Ray):
    (tracking uri, experiment id, parent run, child runs, folder)."""
    root = tmp_path_factory.mktemp("browser_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    space = root / "space.yaml"
    space.write_text(TINY_MFH)
    rc = main(["sweep", "mfh", "--trials", "2", "--concurrency", "2", "--steps", "4", "--space", str(space),
               "--scheduler", "none", "--tracking-uri", uri, "--experiment", "browser", "--json"])
    assert rc == 0
    c = tracking.client(uri)
    exp_id = tracking.experiment_id(uri, "browser")
    [parent] = c.search_runs([exp_id], "tags.sweep_role = 'parent'")
    kids = sweep.children(uri, parent.info.run_id, exp_id)
    assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
    return uri, exp_id, parent, kids, root


@pytest.fixture(scope="module")
def ui(swept):
    """``mlflow ui`` on the store, on a free 127.0.0.1 port; stopped (its process group, by pid) after."""
    uri, _, _, _, root = swept
    port = _free_port()
    exe = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    log = open(root / "mlflow_ui.log", "w")
    # One worker: with MLflow's default 4, uvicorn's supervisor kills any worker that misses its 5 s health check,
    # and on a loaded 2-core machine every worker kept dying while importing (no answer within 300 s, 2026-11-30).
    # With one worker uvicorn serves in-process, without that supervisor. Job execution off: no job runner processes.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([exe, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True, env=env)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc, 300)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started (its own session)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def page(ui):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is not installed: apt-get install -y chromium (.ci/run does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        pg = browser.new_page(viewport={"width": 1600, "height": 1000})
        pg.set_default_timeout(WAIT_MS)
        yield pg
        browser.close()


def test_experiment_page_lists_the_sweep_parent_and_its_children(swept, ui, page):
    _, exp_id, parent, kids, root = swept
    # The runs table of the experiment ("Model training" view of MLflow 3's UI).
    page.goto(f"{ui}/#/experiments/{exp_id}/runs?workflowType=machine_learning")
    row = page.locator("[role=row]", has_text=parent.info.run_name)
    row.first.wait_for()
    first_child = page.get_by_role("link", name=kids[0].info.run_name, exact=True)
    if not first_child.count():  # children are folded under their parent until expanded
        row.first.locator("button[data-component-id*=runnamecellrenderer]").click()
    for kid in kids:
        link = page.get_by_role("link", name=kid.info.run_name, exact=True)
        link.wait_for()
        assert link.get_attribute("href").endswith(f"/runs/{kid.info.run_id}")
    page.screenshot(path=str(root / "experiment.png"))


def test_compare_runs_shows_parameters_and_a_metric_chart(swept, ui, page):
    from playwright.sync_api import expect

    _, exp_id, _, kids, root = swept
    ids = [k.info.run_id for k in kids]
    page.goto(f"{ui}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([exp_id])}")
    page.get_by_text(kids[1].info.run_name, exact=True).first.wait_for()
    # "Run details" table: its "Run ID:" row gives the column order of the runs.
    run_links = page.locator("tr", has=page.locator("th", has_text=re.compile(r"^Run ID:$"))).locator("th a")
    run_links.first.wait_for()
    order = [t.strip() for t in run_links.all_text_contents()]
    assert sorted(order) == sorted(ids), order
    by_id = {k.info.run_id: k for k in kids}
    # "Parameters" table: one row per searched key (<th>key</th>), each trial's value as MLflow stored it.
    for key in ("lr", "memory_size"):
        row = page.locator("tr", has=page.locator("th", has_text=re.compile(rf"^{key}$")))
        expect(row).to_have_count(1, timeout=WAIT_MS)
        expect(row.locator("td")).to_have_text([by_id[i].data.params[key] for i in order], timeout=WAIT_MS)
    # "Parallel Coordinates Plot" (Plotly parcoords): it starts on the alphabetically first metric (balance_kl);
    # add val_fid_domain in its "Metrics:" select, as a researcher would.
    metrics_select = page.locator("div:text-is('Metrics:') + .du-bois-light-select")
    metrics_select.click()
    page.keyboard.type("val_fid_domain")
    option = page.locator(".du-bois-light-select-item-option", has=page.get_by_text("val_fid_domain", exact=True))
    option.click()
    page.keyboard.press("Escape")
    chart = page.locator(".js-plotly-plot", has=page.locator("text.axis-title", has_text=re.compile("^val_fid_domain$")))
    chart.wait_for()
    titles = chart.locator("text.axis-title").all_text_contents()
    assert {"lr", "memory_size", "val_fid_domain"} <= set(titles), titles
    # The metric's axis spans both trials' last val_fid_domain (its extents, printed to 5 decimals).
    axis = chart.locator("g.y-axis", has=page.locator("text.axis-title", has_text=re.compile("^val_fid_domain$")))
    values = sorted(k.data.metrics["val_fid_domain"] for k in kids)
    expect(axis.locator("text.axis-extent-bottom-text")).to_have_text(f"{values[0]:.5f}", timeout=WAIT_MS)
    expect(axis.locator("text.axis-extent-top-text")).to_have_text(f"{values[-1]:.5f}", timeout=WAIT_MS)
    page.screenshot(path=str(root / "compare.png"), full_page=True)


def test_a_sample_image_shows_on_a_runs_page(swept, ui, page):
    from playwright.sync_api import expect

    uri, exp_id, _, kids, root = swept
    kid = kids[0]
    # What the product logged: ``val_samples`` (the validation grid, log_image(key=..., step=...)) at each eval step.
    files = [a.path for a in tracking.client(uri).list_artifacts(kid.info.run_id, "images")]
    steps = sorted({int(f.split("+step+")[1].split("+")[0]) for f in files if f.startswith("images/val_samples+step+")})
    assert steps, files
    # MLflow 3.17 draws logged images as "image grid" cards among the charts of the run's "Model metrics" tab
    # (one card per key, a step slider under it). The search box keeps only the image cards in view (the
    # 140-odd metric charts are drawn lazily as they scroll in).
    # MLflow's UI fetches each image over /get-artifact and draws it from a blob: URL (its presigned-URL route
    # answers 501 on a local store), so which file the card shows is read from the responses the page received.
    fetched: list[str] = []

    def on_response(response):
        if "/get-artifact?" in response.url and response.status == 200:
            fetched.append(response.url)

    page.on("response", on_response)
    page.goto(f"{ui}/#/experiments/{exp_id}/runs/{kid.info.run_id}/model-metrics")
    page.get_by_placeholder("Search metric charts").fill("val_samples")
    card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
        has=page.get_by_role("heading", name="val_samples", exact=True))
    card.wait_for()
    # In the card the run's parameters fill the space above the image (it is clipped): open the card full screen.
    card.locator("button[data-component-id=fullscreen_button_chartcard]").click()
    dialog = page.get_by_role("dialog", name="val_samples")
    dialog.wait_for()
    slider = dialog.get_by_role("slider")
    expect(slider).to_have_attribute("aria-valuemax", str(steps[-1]), timeout=WAIT_MS)
    expect(slider).to_have_attribute("aria-valuemin", str(steps[0]), timeout=WAIT_MS)
    # The card opens at step 0 ("No image logged at this step"): type the last logged step in the step box.
    step_box = dialog.locator("input[type=number]")
    step_box.fill(str(steps[-1]))
    step_box.press("Tab")  # the box commits its value on blur
    expect(slider).to_have_attribute("aria-valuenow", str(steps[-1]), timeout=WAIT_MS)
    img = dialog.locator("img")
    img.wait_for()
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=WAIT_MS)
    assert img.evaluate("el => el.naturalWidth") > 8
    page.remove_listener("response", on_response)
    # The drawn image was fetched (before its blob: URL existed): the last step's grid of this run.
    wanted = [u for u in fetched if f"val_samples%2Bstep%2B{steps[-1]}%2B" in u and f"run_uuid={kid.info.run_id}" in u]
    assert wanted, fetched
    img.scroll_into_view_if_needed()
    expect(img).to_be_in_viewport(timeout=WAIT_MS)  # drawn where it can be seen, not clipped away
    page.screenshot(path=str(root / "run_images.png"))
