"""Evaluate in a real browser on the tiny preset (issue #13): export formats the checkpoint cannot take
are greyed out with the reason and a row's Convert converts that row's checkpoint; an evaluation launched
from the run page comes with the parent's defaults and a cost estimate; its page opens with a result card
whose numbers (and baselines) are the database's; the parent's table and the runs list show them too.
End to end as a user would: the run is named and tagged first (organise) and compared with its evaluation
last (compare)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from playwright.sync_api import expect
from sqlalchemy import create_engine, text

from obow_lab_client import LabClient
from tests.lab.test_browser import live, page  # noqa: F401 - the fixtures: a live lab, a browser page


def _db_result(url: str, run_id: int) -> dict:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            raw = conn.execute(text("SELECT result FROM runs WHERE id = :id"), {"id": run_id}).scalar_one()
    finally:
        engine.dispose()
    return raw if isinstance(raw, dict) else json.loads(raw)


def test_evaluate_from_a_run_with_its_defaults_and_read_the_answer(live, page):  # noqa: F811
    page.set_default_timeout(30_000)
    with LabClient(live.url, live.token) as client:
        parent = client.submit("pretrain", preset="FashionMNIST/tiny", spec={
            "data": {"epoch_size": 64, "batch_size": 16},
            "optim": {"permanent": 1},  # keep both epochs' checkpoints: two rows, two Convert buttons
            "runtime": {"workers": 0, "device": "cpu", "print_freq": 1},
        })
        assert client.wait(parent["id"], timeout=180)["state"] == "succeeded"
        checkpoints = [a for a in client.artifacts(parent["id"]) if a["kind"] == "checkpoint"]
        assert [a["options"]["epoch"] for a in checkpoints] == [1, 2]

    page.goto(f"{live.url}/login?next=/runs/{parent['id']}")
    page.fill('input[name="token"]', live.token)
    page.click('button[type="submit"]')
    page.wait_for_url(f"{live.url}/runs/{parent['id']}")

    # organise: name and tag the run from its page; a shared search link finds it by its tag
    page.click("#edit-run")
    page.fill("#organise-form input[name=name]", "tiny-e2e")
    page.fill("#organise-form input[name=tags]", "e2e, fmnist")
    page.click("#organise-form button[type=submit]")
    expect(page.locator("#run-name")).to_have_text("tiny-e2e")
    page.goto(f"{live.url}/?q=tag%3Ae2e")
    expect(page.locator("#runs-body tr")).to_have_count(1)
    expect(page.locator(f'#runs-body tr[data-run-id="{parent["id"]}"]')).to_contain_text("tiny-e2e")
    page.goto(f"{live.url}/runs/{parent['id']}")

    # item 10: the small-stem, 1/8-width backbone cannot go to torchvision/Caffe2/Detectron2, and says why
    expect(page.locator('#export-format option[value="torchvision"]')).to_be_disabled()
    expect(page.locator('#export-format option[value="caffe2"]')).to_be_disabled()
    expect(page.locator("#export-format")).to_have_value("safetensors")
    expect(page.locator("#export-reason")).to_contain_text("7x7 stem")
    # the Convert button of the epoch-1 row converts epoch 1, not the newest checkpoint
    page.locator(f'#artifacts button.convert[data-artifact="{checkpoints[0]["id"]}"]').click()
    expect(page.locator("a.export-download")).to_be_visible(timeout=60_000)
    with LabClient(live.url, live.token) as client:
        (export,) = [c for c in client.run(parent["id"])["children"] if c["kind"] == "export"]
        assert Path(client.run(export["id"])["spec"]["checkpoint"]).name.startswith(checkpoints[0]["sha256"])

    # item 6: the form comes filled from the parent's spec, with the cost before launch
    page.click('a.evaluate:has-text("Evaluate: knn")')
    page.wait_for_url(re.compile(r"/runs/new\?kind=knn"))
    expect(page.locator("#cost")).to_contain_text("images to process")
    expect(page.locator("#cost")).to_contain_text("12,000 images")  # 1000/class bank + 200/class queries
    expect(page.locator('[data-path="subset"]')).to_have_value("1000")
    expect(page.locator('[data-path="size"]')).to_have_value("40")
    expect(page.locator('[data-path="test_split"]')).to_have_value("test")  # the parent's held-out split
    expect(page.locator("#defaults-notes")).to_contain_text("from the parent's pretrain spec")
    page.fill('[data-path="subset"]', "30")  # smaller for the test: the estimate follows the form
    page.fill('[data-path="test_subset"]', "10")
    expect(page.locator("#cost")).to_contain_text("400 images")
    page.select_option('[data-path="device"]', "cpu")
    page.click("#launch")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    knn_id = int(page.url.rsplit("/", 1)[1])

    # item 7 + 8: the result card's numbers are the database's, and so are the baselines beside them
    expect(page.locator("#state")).to_have_text("succeeded", timeout=120_000)
    value = page.locator('#card-numbers [data-key="top1.20"] .value')
    expect(value).to_be_visible()
    result = _db_result(live.settings.db_url, knn_id)
    assert value.inner_text() == f"{result['top1']['20']:.2f}%"
    expect(page.locator("#card-protocol")).to_contain_text("weighted kNN on FashionMNIST (300 train / 100 test")
    expect(page.locator("#card-checkpoint")).to_contain_text(f"#{parent['id']} epoch 2")
    for features in ("raw_pixels", "random_init"):
        cell = page.locator(f'#card-baselines tr[data-baseline="{features}"] td').nth(1)
        expect(cell).to_have_text(re.compile(r"^\d+\.\d\d%$"), timeout=120_000)
    card = httpx.get(f"{live.url}/api/v1/runs/{knn_id}/card", headers={"Authorization": f"Bearer {live.token}"}).json()
    for baseline in card["baselines"]:
        stored = _db_result(live.settings.db_url, baseline["run_id"])
        shown = page.locator(f'#card-baselines tr[data-baseline="{baseline["features"]}"] td').nth(1).inner_text()
        assert shown == f"{stored['headline']:.2f}%"
        delta = page.locator(f'#card-baselines tr[data-baseline="{baseline["features"]}"] .delta').inner_text()
        assert delta.replace("−", "-").split()[0] == f"{result['top1']['20'] - stored['headline']:+.2f}"

    # the parent's table of its evaluations: the number, not a path
    page.goto(f"{live.url}/runs/{parent['id']}")
    row = page.locator(f'#evaluations tr[data-evaluation="{knn_id}"]')
    expect(row.locator('[data-key="top1.20"] strong')).to_have_text(f"{result['top1']['20']:.2f}%")
    expect(row).to_contain_text("epoch 2")
    expect(page.locator(f'#children tr[data-child="{knn_id}"]')).to_have_count(0)
    # the runs list: the kind's headline (an evaluation is listed under its parent: expand it)
    page.goto(f"{live.url}/")
    page.click(f'tr[data-run-id="{parent["id"]}"] button.expand')
    expect(page.locator(f'tr[data-run-id="{knn_id}"] td.headline')).to_have_text(
        f"kNN top-1 (k=20) {result['top1']['20']:.2f}%"
    )

    # compare: the run beside its evaluation; the parent's column carries the evaluation's number, linked
    page.goto(f"{live.url}/compare?runs={parent['id']},{knn_id}")
    expect(page.locator("#compare-head")).to_contain_text(f"#{parent['id']} tiny-e2e")
    cell = page.locator('#evaluations tr[data-key="knn.top1.20"] td').first
    expect(cell.locator(f'a[href="/runs/{knn_id}"]')).to_have_count(1)
    assert float(cell.locator("span").get_attribute("title")) == result["top1"]["20"]
