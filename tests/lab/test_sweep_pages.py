"""The sweep pages in process: list, the YAML form (errors shown next to the field they name, nothing
stored), the live page, and "Promote best" opening the new-run form filled from a run's spec."""

from __future__ import annotations

import json
import re

from tests.lab.conftest import count_rows


def _login(lab) -> str:
    assert lab.client.post("/login", data={"token": lab.token}, follow_redirects=False).status_code == 303
    return re.search(r'name="csrf" content="([0-9a-f]+)"', lab.client.get("/sweeps/new").text).group(1)


def _form(csrf: str, **over: str) -> dict[str, str]:
    values = {
        "csrf": csrf,
        "name": "lr sweep",
        "kind": "faketrain",
        "preset": "",
        "method": "random",
        "seed": "3",
        "budget": "3",
        "parallel": "1",
        "direction": "minimize",
        "objective_metric": "final_loss",
        "objective_source": "trial",
        "pruner_type": "none",
        "pruner_metric": "loss",
        "pruner_every": "1",
        "spec": "steps: 3",
        "space": "lr: {type: loguniform, low: 0.001, high: 0.5}",
        "eval_spec": "",
        "pruner_options": "",
    }
    values.update(over)
    return values


def test_the_form_starts_a_sweep_and_shows_errors_next_to_their_fields(lab):
    page = lab.client.get("/sweeps/new")
    assert page.status_code == 200 and "model.bow_extractor_opts.inv_delta" in page.text  # the shipped example
    assert lab.client.post("/sweeps/new", data=_form("")).status_code == 401
    csrf = _login(lab)
    assert lab.client.post("/sweeps/new", data=_form("wrong")).status_code == 403
    bad_yaml = lab.client.post("/sweeps/new", data=_form(csrf, space="lr: {type: [unclosed"))
    assert bad_yaml.status_code == 422 and "not valid YAML" in bad_yaml.text
    unknown = lab.client.post("/sweeps/new", data=_form(csrf, space="lrr: {type: uniform, low: 0.1, high: 1}"))
    assert unknown.status_code == 422
    assert re.search(r'data-error-for="space">lrr: unknown key', unknown.text), unknown.text
    assert "lrr: {type: uniform" in unknown.text  # what was typed is kept
    out_of_bounds = lab.client.post("/sweeps/new", data=_form(csrf, space="steps: {type: int, low: 0, high: 9}"))
    assert out_of_bounds.status_code == 422 and "outside the field&#39;s bounds" in out_of_bounds.text
    assert count_rows(lab, "sweeps") == 0 and count_rows(lab, "runs") == 0
    ok = lab.client.post("/sweeps/new", data=_form(csrf), follow_redirects=False)
    assert ok.status_code == 303 and re.fullmatch(r"/sweeps/\d+", ok.headers["location"])
    sweep_page = lab.client.get(ok.headers["location"])
    assert sweep_page.status_code == 200 and "sweep.js" in sweep_page.text and "Promote best" in sweep_page.text
    listing = lab.client.get("/sweeps")
    assert listing.status_code == 200 and 'href="/sweeps"' in listing.text
    assert lab.client.get("/sweeps/424242").status_code == 404


def test_promote_best_fills_the_new_run_form_with_the_runs_spec(lab):
    run = lab.client.post(
        "/api/v1/runs", json={"kind": "faketrain", "spec": {"steps": 7, "lr": 0.0123}}, headers=lab.auth
    ).json()
    page = lab.client.get(f"/runs/new?from_run={run['id']}")
    assert page.status_code == 200
    spec = json.loads(
        re.search(r'<script type="application/json" id="from-spec">(.*?)</script>', page.text, re.S).group(1)
    )
    assert spec == run["spec"]
    assert re.search(r'<option value="faketrain"\s+selected>', page.text)
    plain = lab.client.get("/runs/new")
    assert re.search(r'id="from-spec">null<', plain.text)
