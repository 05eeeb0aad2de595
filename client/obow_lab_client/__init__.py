"""A small Python client of the lab's REST API. HTTP only (httpx): usable from any machine that can
reach the server, with no database, Celery or torch.

    lab = LabClient("http://127.0.0.1:8000", token="obow_...")
    run = lab.submit("pretrain", preset="FashionMNIST/tiny", spec={"optim": {"num_epochs": 1}})
    for key, step, value in lab.stream_metrics(run["id"]):
        print(key, step, value)
    export = lab.export(run["id"], "safetensors")
    lab.wait(export["id"])
    lab.download(lab.artifacts(export["id"])[0]["id"], "weights.safetensors")
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


class LabError(RuntimeError):
    """The server refused a request; `status` and `detail` say why."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class LabClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.is_error:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise LabError(response.status_code, detail)
        return response.json()

    # -- runs ----------------------------------------------------------------------------------------
    def submit(
        self,
        kind: str,
        preset: str | None = None,
        spec: dict[str, Any] | None = None,
        parent_id: int | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        note: str | None = None,
        project: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind, "spec": spec or {}}
        for key, value in (("preset", preset), ("parent_id", parent_id), ("name", name), ("tags", tags),
                           ("note", note), ("project", project)):
            if value is not None:
                body[key] = value
        return self._json(self._http.post("/runs", json=body))

    def kinds(self) -> list[dict[str, Any]]:
        """Run kinds with their queue, weights and path fields and JSON schemas."""
        return self._json(self._http.get("/kinds"))

    def run(self, run_id: int) -> dict[str, Any]:
        return self._json(self._http.get(f"/runs/{run_id}"))

    def runs(self, **filters: Any) -> dict[str, Any]:
        return self._json(self._http.get("/runs", params={k: v for k, v in filters.items() if v is not None}))

    def search(
        self,
        query: str | None = None,
        sort: str | None = None,
        limit: int = 50,
        offset: int = 0,
        top_level: bool = False,
        **filters: Any,
    ) -> dict[str, Any]:
        """A page of runs matching `query` (the list's query language: free words, `kind:` `state:`
        `project:` `tag:` `by:` `archived:yes|any`, `optim.lr>0.01`, `knn_top1_k20>80`), sorted by a
        column, spec key or metric (`-` for descending). A bad query raises LabError 422 naming the token."""
        params = {"q": query, "sort": sort, "limit": limit, "offset": offset, **filters}
        if top_level:
            params["top_level"] = "true"
        return self.runs(**params)

    def update(self, run_id: int, **fields: Any) -> dict[str, Any]:
        """Change a run's `name`, `tags`, `note`, `project` or `archived` (PATCH); the others stay."""
        return self._json(self._http.patch(f"/runs/{run_id}", json=fields))

    def archive(self, run_id: int) -> dict[str, Any]:
        """Hide the run and its children from the default list (nothing is deleted)."""
        return self.update(run_id, archived=True)

    def unarchive(self, run_id: int) -> dict[str, Any]:
        return self.update(run_id, archived=False)

    def usage(self, run_id: int | None = None) -> dict[str, Any]:
        """A run's disk and database use with its children (what `delete` removes), or, without an id,
        the whole artifact store's."""
        return self._json(self._http.get(f"/runs/{run_id}/usage" if run_id is not None else "/usage"))

    def delete(self, run_id: int) -> dict[str, Any]:
        """Delete the run, its children, metrics, logs and files; refused (409) while any is active.
        Returns what was removed."""
        return self._json(self._http.delete(f"/runs/{run_id}"))

    def cancel(self, run_id: int) -> dict[str, Any]:
        return self._json(self._http.post(f"/runs/{run_id}/cancel"))

    def retry(self, run_id: int) -> dict[str, Any]:
        return self._json(self._http.post(f"/runs/{run_id}/retry"))

    def wait(self, run_id: int, timeout: float = 3600.0, poll_s: float = 0.5) -> dict[str, Any]:
        """Poll until the run is finished; returns it (whatever the outcome)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["state"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run['state']} after {timeout:.0f} s")
            time.sleep(poll_s)

    def metrics(self, run_id: int, keys: list[str] | None = None, max_points: int = 2000) -> dict[str, Any]:
        params: dict[str, Any] = {"max_points": max_points}
        if keys:
            params["keys"] = ",".join(keys)
        return self._json(self._http.get(f"/runs/{run_id}/metrics", params=params))

    def download_metrics(self, run_id: int, dest: str | Path, fmt: str = "csv") -> Path:
        """Every stored point of the run at full resolution (`key,step,value,time`), as CSV or JSON
        (`fmt="json"`), streamed to `dest` through a temp file."""
        if fmt not in ("csv", "json"):
            raise ValueError("fmt must be 'csv' or 'json'")
        return self._save(f"/runs/{run_id}/metrics.{fmt}", {}, dest)

    def compare(self, run_ids: list[int]) -> dict[str, Any]:
        """Runs side by side: the spec keys that differ, final metrics, results, evaluation results."""
        return self._json(self._http.get("/compare", params={"runs": ",".join(map(str, run_ids))}))

    def compare_series(self, run_ids: list[int], key: str, x: str = "step", max_points: int = 2000) -> dict[str, Any]:
        """One metric of each run on an x axis: step, epoch, time (seconds since start) or images (seen)."""
        params = {"runs": ",".join(map(str, run_ids)), "key": key, "x": x, "max_points": max_points}
        return self._json(self._http.get("/compare/series", params=params))

    def download_comparison(self, run_ids: list[int], dest: str | Path, fmt: str = "csv") -> Path:
        """The comparison table as CSV (`section,key,<a column per run>`) or JSON."""
        if fmt not in ("csv", "json"):
            raise ValueError("fmt must be 'csv' or 'json'")
        return self._save(f"/compare.{fmt}", {"runs": ",".join(map(str, run_ids))}, dest)

    def _save(self, path: str, params: dict[str, Any], dest: str | Path) -> Path:
        dest = Path(dest)
        partial = dest.with_name(dest.name + ".part")
        with self._http.stream("GET", path, params=params) as response:
            if response.is_error:
                response.read()
                self._json(response)
            with open(partial, "wb") as handle:
                for chunk in response.iter_bytes(1 << 20):
                    handle.write(chunk)
        partial.replace(dest)
        return dest

    def logs(self, run_id: int, limit: int = 200) -> list[dict[str, Any]]:
        return self._json(self._http.get(f"/runs/{run_id}/logs", params={"limit": limit}))

    # -- live events ---------------------------------------------------------------------------------
    def events(
        self, run_id: int, last_event_id: str | None = "0-0-0", timeout: float = 3600.0
    ) -> Iterator[tuple[str, dict]]:
        """(event, data) from the SSE stream until the run ends; reconnects with Last-Event-ID after a
        dropped connection. The default id replays the run from its start; None starts from now."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                with self._http.stream(
                    "GET", f"/runs/{run_id}/events", headers=headers, timeout=None
                ) as response:
                    if response.is_error:
                        response.read()
                        self._json(response)
                    fields: dict[str, str] = {}
                    for line in response.iter_lines():
                        if line:
                            name, _, value = line.partition(":")
                            fields[name] = value.removeprefix(" ")
                            continue
                        if "event" in fields:
                            last_event_id = fields.get("id", last_event_id)
                            if fields["event"] == "end":
                                return
                            yield fields["event"], json.loads(fields.get("data", "{}"))
                        fields = {}
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
                time.sleep(1.0)
        raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f} s")

    def stream_metrics(self, run_id: int, **kwargs: Any) -> Iterator[tuple[str, int, float]]:
        """(key, step, value) for every point of the run, live, until it ends."""
        for event, data in self.events(run_id, **kwargs):
            if event == "metrics":
                for key, step, value, _ in data["points"]:
                    yield key, step, value

    # -- artifacts -----------------------------------------------------------------------------------
    def artifacts(self, run_id: int) -> list[dict[str, Any]]:
        return self._json(self._http.get(f"/runs/{run_id}/artifacts"))

    def export(
        self, run_id: int, format: str, options: dict[str, Any] | None = None, artifact_id: int | None = None
    ) -> dict[str, Any]:
        """Convert the run's newest checkpoint (or the one `artifact_id` names) to `format`."""
        body: dict[str, Any] = {"format": format, "options": options or {}}
        if artifact_id is not None:
            body["artifact_id"] = artifact_id
        return self._json(self._http.post(f"/runs/{run_id}/exports", json=body))

    # -- evaluations ---------------------------------------------------------------------------------
    def evaluation_defaults(self, run_id: int, kind: str) -> dict[str, Any]:
        """Spec values for a `kind` evaluation of the run (its data and view, CPU-sized) and their cost."""
        return self._json(self._http.get(f"/runs/{run_id}/evaluation-defaults", params={"kind": kind}))

    def card(self, run_id: int) -> dict[str, Any] | None:
        """An evaluation's result card: numbers, protocol, checkpoint, baselines."""
        return self._json(self._http.get(f"/runs/{run_id}/card"))

    def evaluations(self, run_id: int) -> list[dict[str, Any]]:
        """The run's evaluations as result cards, newest first."""
        return self._json(self._http.get(f"/runs/{run_id}/evaluations"))

    def import_checkpoint(self, path: str | Path, name: str = "import") -> dict[str, Any]:
        with open(path, "rb") as handle:
            response = self._http.post(
                "/imports",
                params={"name": name},
                content=handle,
                headers={"Content-Type": "application/octet-stream"},
            )
        return self._json(response)

    # -- sweeps --------------------------------------------------------------------------------------
    def sweep(
        self,
        space: dict[str, dict[str, Any]],
        objective: dict[str, Any],
        kind: str = "pretrain",
        preset: str | None = None,
        spec: dict[str, Any] | None = None,
        method: str = "tpe",
        budget: int = 20,
        parallel: int = 1,
        seed: int = 0,
        direction: str = "maximize",
        pruner: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Start a hyper-parameter sweep; its trials are runs on the lab's workers. `space` maps dotted
        spec keys to `{"type": "choice", "values": [...]}`, `{"type": "uniform"|"loguniform", "low",
        "high"}` or `{"type": "int", "low", "high", "step"}`; `objective` is `{"metric", "source"}`
        (`source` "trial" or an evaluation kind such as "knn", with `eval_spec` overrides)."""
        body: dict[str, Any] = {
            "kind": kind, "spec": spec or {}, "space": space, "method": method, "budget": budget,
            "parallel": parallel, "seed": seed, "objective": objective, "direction": direction,
        }
        for key, value in (("preset", preset), ("pruner", pruner), ("name", name)):
            if value is not None:
                body[key] = value
        return self.create_sweep(body)

    def create_sweep(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start a sweep from the API's body as it is (what a sweep YAML file holds)."""
        return self._json(self._http.post("/sweeps", json=body))

    def sweep_status(self, sweep_id: int) -> dict[str, Any]:
        """The sweep with its trials (params, objective, state, duration), best trial and importances."""
        return self._json(self._http.get(f"/sweeps/{sweep_id}"))

    def sweeps(self, **filters: Any) -> dict[str, Any]:
        return self._json(self._http.get("/sweeps", params={k: v for k, v in filters.items() if v is not None}))

    def cancel_sweep(self, sweep_id: int) -> dict[str, Any]:
        """Stop proposing trials and cancel the running ones."""
        return self._json(self._http.post(f"/sweeps/{sweep_id}/cancel"))

    def wait_sweep(self, sweep_id: int, timeout: float = 24 * 3600.0, poll_s: float = 2.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            sweep = self.sweep_status(sweep_id)
            if sweep["state"] != "running":
                return sweep
            if time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_id} still running after {timeout:.0f} s")
            time.sleep(poll_s)

    def download(self, artifact_id: int, dest: str | Path) -> Path:
        """Stream to `dest` (through a temp file) and check the sha256 the server announces."""
        dest = Path(dest)
        partial = dest.with_name(dest.name + ".part")
        digest = hashlib.sha256()
        with self._http.stream("GET", f"/artifacts/{artifact_id}/download") as response:
            if response.is_error:
                response.read()
                self._json(response)
            expected = response.headers.get("x-content-sha256")
            with open(partial, "wb") as handle:
                for chunk in response.iter_bytes(1 << 20):
                    digest.update(chunk)
                    handle.write(chunk)
        if expected and digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            raise LabError(200, f"sha256 mismatch for artifact {artifact_id}: download corrupted")
        partial.replace(dest)
        return dest
