"""Visual words in the lab: the `words` child run (cpu queue, checkpoint from the parent), the cached
gallery built from a real `run_words` output, and the vocabulary-collapse badge."""

from __future__ import annotations

import re
import shutil

import pytest

from server.core import artifacts as artifact_store
from server.core.models import Artifact, Run
from server.services.words import collapsed_levels, page_of_words
from worker.tasks import execute_run


@pytest.fixture(params=["sqlite"])
def backend(request) -> str:  # nothing here depends on the database dialect
    return request.param


def _pretrain_row(lab, checkpoint, last_metrics: dict | None = None) -> int:
    """A finished pretraining run whose checkpoint artifact is a real tiny OBoW checkpoint."""
    with lab.session() as session:
        run = Run(kind="pretrain", name="tiny", spec={}, state="succeeded", queue="gpu",
                  last_metrics=last_metrics or {}, metric_keys=sorted(last_metrics or {}))
        session.add(run)
        session.flush()
        target = artifact_store.run_dir(lab.settings.artifact_root, run.id) / checkpoint.name
        target.parent.mkdir(parents=True)
        shutil.copy(checkpoint, target)
        artifact_store.record(session, lab.settings.artifact_root, run.id, target, "checkpoint", {})
        session.commit()
        return run.id


def test_collapse_badge_derivation_from_latest_metrics():
    assert collapsed_levels({}) == [] and collapsed_levels(None) == []
    rows = {"collapse_lev@0": 0.0, "collapse_lev@1": 1.0, "words_used_lev@1": 0.02, "loss_total": 1.0}
    assert collapsed_levels(rows) == ["lev@1"]
    assert collapsed_levels({"collapse_lev@0": 1.0, "collapse_lev@1": 1.0}) == ["lev@0", "lev@1"]
    assert collapsed_levels({"collapse_lev@0": 0.0, "words_used_lev@0": 1.0}) == []


def test_page_of_words_offsets_paging_and_search():
    index = {"words": [{"word": w, "usage": 1.0, "patches": [{"image_id": 0, "box": [0, 0, 1, 1], "score": 1.0}] * 3}
                       for w in (7, 3, 11, 40, 2)]}
    first = page_of_words(index, 0, per_page=2)
    assert (first["pages"], first["total"], [i["word"] for i in first["items"]]) == (3, 5, [7, 3])
    # row = position in the index, column = patch position: label 64 px, patches 48 px + 2 px gaps
    assert [(p["x"], p["y"]) for p in first["items"][1]["patches"]] == [(64, 50), (114, 50), (164, 50)]
    found = page_of_words(index, 0, per_page=2, word=2)
    assert found["page"] == 2 and [i["word"] for i in found["items"]] == [2] and not found["missing"]
    assert found["items"][0]["patches"][0]["y"] == 4 * 50
    assert page_of_words(index, 0, per_page=2, word=99)["missing"]
    assert page_of_words(index, 99, per_page=2)["page"] == 2  # clamped to the last page


def test_words_child_run_spec_and_queue(lab, tiny_checkpoint):
    parent = _pretrain_row(lab, tiny_checkpoint)
    assert lab.anon.post(f"/api/v1/runs/{parent}/words", json={}).status_code == 401
    assert lab.client.post(f"/api/v1/runs/{parent}/words", json={"words": 0}, headers=lab.auth).status_code == 422
    response = lab.client.post(f"/api/v1/runs/{parent}/words", json={}, headers=lab.auth)
    assert response.status_code == 201, response.text
    child = response.json()
    assert (child["kind"], child["queue"], child["parent_id"], child["state"]) == ("words", "cpu", parent, "queued")
    with lab.session() as session:
        (ckpt,) = session.query(Artifact).filter_by(run_id=parent, kind="checkpoint").all()
    # the parent's checkpoint, pinned for the child (a running pretraining deletes superseded ones)
    assert child["spec"]["checkpoint"] == str(lab.settings.artifact_root.resolve() / "pinned" / f"{ckpt.sha256}.pt")
    assert {k: child["spec"][k] for k in ("words", "patches", "max_images")} == {
        "words": 64, "patches": 8, "max_images": 2000}
    assert lab.enqueue.sent[-1] == (child["id"], "cpu")
    state = lab.client.get(f"/api/v1/runs/{parent}/words").json()
    assert state["latest"]["id"] == child["id"] and state["gallery_run_id"] is None and state["levels"] == {}
    assert lab.client.post("/api/v1/runs/424242/words", json={}, headers=lab.auth).status_code == 404


def test_gallery_page_from_a_real_words_run(lab, tiny_checkpoint):
    parent = _pretrain_row(lab, tiny_checkpoint, {"collapse_lev@0": 1.0, "loss_total": 2.0})
    page = lab.client.get(f"/runs/{parent}")
    assert 'id="generate-words"' in page.text and "vocabulary collapse: lev@0" in page.text
    assert "No gallery yet" in lab.client.get(f"/runs/{parent}/words").text

    body = {"words": 20, "patches": 3, "max_images": 48}
    child = lab.client.post(f"/api/v1/runs/{parent}/words", json=body, headers=lab.auth).json()
    assert execute_run(child["id"], lab.settings) == "succeeded", lab.client.get(f"/api/v1/runs/{child['id']}").json()
    state = lab.client.get(f"/api/v1/runs/{parent}/words").json()
    assert state["gallery_run_id"] == child["id"]
    assert sorted(state["levels"]) == ["block3", "block4"]
    level = "block4"  # shown first: the last level
    sheet_id = state["levels"][level]["sheet_id"]
    total = state["levels"][level]["words"]
    assert 16 < total <= 20  # enough words for a second page

    html = lab.client.get(f"/runs/{parent}/words").text
    assert f"page 1 of 2 · {total} words" in html and 'id="next-page"' in html
    assert len(re.findall(r'class="word[ "]', html)) == 16
    assert f"/api/v1/artifacts/{sheet_id}/image" in html and "background-position: -64px -0px" in html
    second = lab.client.get(f"/runs/{parent}/words?level={level}&page=1").text
    assert len(re.findall(r'class="word[ "]', second)) == total - 16 and 'id="prev-page"' in second
    # search: the last word of the index jumps to page 2 and is highlighted
    index = lab.client.get(f"/api/v1/runs/{child['id']}/artifacts").json()
    (index_row,) = [a for a in index if a["kind"] == "words-index" and a["options"]["level"] == level]
    words = lab.client.get(index_row["download_url"]).json()["words"]
    last = words[-1]["word"]
    found = lab.client.get(f"/runs/{parent}/words?level={level}&word={last}").text
    assert "page 2 of 2" in found and f'class="word found" data-word="{last}"' in found
    assert 'id="word-missing"' in lab.client.get(f"/runs/{parent}/words?word=999999").text
    other = lab.client.get(f"/runs/{parent}/words?level=block3&word=").text  # the level switch's form
    assert f"/api/v1/artifacts/{state['levels']['block3']['sheet_id']}/image" in other

    image = lab.client.get(f"/api/v1/artifacts/{sheet_id}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert lab.client.get(f"/api/v1/artifacts/{index_row['id']}/image").status_code == 404  # sheets only
