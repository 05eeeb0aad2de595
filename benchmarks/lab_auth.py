"""What read authentication and the body cap cost, on a real `obow lab serve` process (SQLite).

    PYTHONPATH=. python benchmarks/lab_auth.py

Seeds 50 runs with 20 KB specs, then times 300 sequential `GET /runs?limit=50` (after 20 warm-up
requests) with a bearer token, with a dashboard session, without credentials (the 401) and, on a
second server with `OBOW_LAB_PUBLIC_READ=1`, open; and a 10 MB `POST /runs` body, declared and chunked
(the 413). Prints p50 / p95 in ms and the list's size in bytes.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

from benchmarks.lab_load import serve
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.models import Run
from server.services import tokens


def seed(url: str, runs: int = 50, spec_bytes: int = 20_000) -> str:
    """`runs` finished runs with large specs; returns a token."""
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        rows = [
            {"kind": "pretrain", "name": f"r{i}", "spec": {"blob": "x" * spec_bytes}, "queue": "gpu",
             "state": "succeeded"}
            for i in range(runs)
        ]
        session.execute(insert(Run), rows)
        session.commit()
        token = tokens.create_token(session, "bench")
    engine.dispose()
    return token


def latencies(client: httpx.Client, n: int = 300, **kwargs: Any) -> str:
    for _ in range(20):
        client.get("/api/v1/runs", params={"limit": 50}, **kwargs)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.get("/api/v1/runs", params={"limit": 50}, **kwargs)
        times.append((time.perf_counter() - start) * 1000)
    p95 = sorted(times)[int(n * 0.95)]
    return f"HTTP {response.status_code}  p50 {statistics.median(times):.1f} ms  p95 {p95:.1f} ms  " \
           f"{len(response.content)} bytes"


def main() -> None:
    for public in ("0", "1"):
        home = Path(tempfile.mkdtemp())
        url = f"sqlite:///{home / 'lab.db'}"
        token = seed(url)
        auth = {"Authorization": f"Bearer {token}"}
        with serve(url, home, env={"OBOW_LAB_PUBLIC_READ": public}) as base, httpx.Client(
            base_url=base, timeout=30
        ) as client:
            if public == "1":
                print("public read, no credentials:", latencies(client))
                continue
            print("bearer token:              ", latencies(client, headers=auth))
            with httpx.Client(base_url=base, timeout=30) as browser:
                browser.post("/login", data={"token": token})
                print("dashboard session:         ", latencies(browser))
            print("no credentials (401):      ", latencies(client))
            body = json.dumps({"kind": "pretrain", "spec": {"name": "a" * 10 * 2**20}}).encode()
            headers = {**auth, "Content-Type": "application/json"}
            for label, content in (
                ("declared", body),
                ("chunked", (body[i : i + 65536] for i in range(0, len(body), 65536))),
            ):
                start = time.perf_counter()
                response = client.post("/api/v1/runs", content=content, headers=headers)
                print(f"10 MB body, {label}: HTTP {response.status_code} in "
                      f"{(time.perf_counter() - start) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
