"""A wheel built from the repository runs the lab on its own, and the HTTP client installs alone.

The lab's wheel goes into a fresh virtual environment outside the repository. Its third-party
dependencies (torch alone is gigabytes) come from the project's environment through a path entry,
which adds those folders without running their .pth files, so the repository's editable install is not
seen: templates, migrations and static files must come from the wheel. Then `obow lab db upgrade` and
`obow lab up` run from an empty folder, /healthz answers and a page renders; SIGTERM stops `lab up`
and its worker.

The client's own package (`client/`) is installed into another fresh environment with nothing but
httpx, and talks to that running lab.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from tests.lab.conftest import REPO, _free_port

pytestmark = pytest.mark.slow


def _venv(path: Path, deps_from_project: bool) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )
    if deps_from_project:
        (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _pip_install(python: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-input", *args],
        check=True, timeout=600,
    )


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{url}/api/v1/healthz", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.5)
    raise AssertionError("the lab did not answer: " + log.read_text()[-3000:])


def _processes_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_the_wheel_runs_the_lab_and_the_client_installs_alone(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
        check=True, timeout=600, cwd=tmp_path,
    )
    (wheel,) = dist.glob("obow_lab-*.whl")
    lab_python = _venv(tmp_path / "lab-venv", deps_from_project=True)
    _pip_install(lab_python, "--no-deps", str(wheel))

    where = tmp_path / "elsewhere"
    where.mkdir()
    env = {"PATH": f"{lab_python.parent}:/usr/bin:/bin", "OBOW_LAB_HOME": str(where / "home"), "HOME": str(where)}
    located = subprocess.run(
        [str(lab_python), "-c", "import server, obow, worker; print(server.__file__, obow.__file__)"],
        cwd=where, env=env, capture_output=True, text=True, check=True,
    ).stdout
    assert str(REPO) not in located and str(tmp_path / "lab-venv") in located, located
    upgraded = subprocess.run(
        [str(lab_python.parent / "obow"), "lab", "db", "upgrade"], cwd=where, env=env, capture_output=True,
        text=True, timeout=120,
    )
    assert upgraded.returncode == 0 and "database at head" in upgraded.stdout, upgraded.stderr

    port = _free_port()
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [str(lab_python.parent / "obow"), "lab", "up", "--port", str(port)], cwd=where, env=env,
            stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        assert _wait_healthy(url, up, log)["status"] in ("ok", "degraded")
        login = httpx.get(f"{url}/login", timeout=10)
        assert login.status_code == 200 and "OBoW Lab" in login.text
        assert httpx.get(f"{url}/static/lab.css", timeout=10).status_code == 200
        token = next(
            line.rsplit(" ", 1)[-1] for line in log.read_text().splitlines() if line.startswith("API token")
        )

        client_python = _venv(tmp_path / "client-venv", deps_from_project=False)
        client_src = tmp_path / "client-src"  # pip builds in the source folder: keep the repository clean
        shutil.copytree(REPO / "client", client_src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        _pip_install(client_python, str(client_src))
        script = (
            "import sys; from obow_lab_client import LabClient; "
            f"lab = LabClient({url!r}, token={token!r}); "
            "print(sorted(k['kind'] for k in lab.kinds())); "
            "heavy = [m for m in ('torch', 'sqlalchemy', 'celery', 'server', 'obow') if m in sys.modules]; "
            "print(heavy)"
        )
        talked = subprocess.run(
            [str(client_python), "-c", script], cwd=where, capture_output=True, text=True, timeout=120,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert talked.returncode == 0, talked.stderr
        kinds_line, heavy_line = talked.stdout.strip().splitlines()[-2:]
        assert "pretrain" in kinds_line and heavy_line == "[]"

        workers = _processes_of(up.pid)
        assert workers, "lab up started no worker"
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
    for pid in workers:  # SIGTERM to `lab up` stopped its worker too
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                break
            time.sleep(0.2)
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert os.path.exists(where / "home" / "lab.db")
