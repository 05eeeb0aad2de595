"""Schema and metric storage: migrations give exactly the models' schema; the server refuses an
unmigrated database; downsampling keeps each bucket's extremes (checked against a naive loop)."""

from __future__ import annotations

import math
import random

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from server.app import create_app
from server.db import DatabaseNotMigrated, make_engine, make_sessionmaker
from server.models import Base, Run
from server.services import metrics as metrics_service
from server.settings import Settings
from tests.lab.conftest import _db_url


@pytest.fixture
def db_url(backend, migrated, tmp_path_factory, request) -> str:
    return _db_url(backend, migrated, tmp_path_factory, request)


def test_upgrade_head_gives_the_models_schema(db_url):
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_server_and_cli_refuse_an_unmigrated_database(tmp_path):
    settings = Settings(home=tmp_path, secret_key_value="x")
    with pytest.raises(DatabaseNotMigrated, match="obow lab db upgrade"):
        create_app(settings, enqueue=lambda run: "x")
    from server.cli import lab

    result = CliRunner().invoke(lab, ["token", "create"], env={"OBOW_LAB_HOME": str(tmp_path)})
    assert result.exit_code == 2 and "obow lab db upgrade" in result.output
    result = CliRunner().invoke(lab, ["db", "upgrade"], env={"OBOW_LAB_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        lab, ["token", "create", "--name", "me"], env={"OBOW_LAB_HOME": str(tmp_path)}
    )
    assert result.exit_code == 0 and result.output.startswith("obow_")


def _naive_buckets(points: list[tuple[int, float]], max_points: int) -> list[tuple[int, float]]:
    steps = [s for s, _ in points]
    lo, hi = min(steps), max(steps)
    nb = max_points // 2
    buckets: dict[int, list[tuple[int, float]]] = {}
    for step, value in points:
        buckets.setdefault((step - lo) * nb // (hi - lo + 1), []).append((step, value))
    out = []
    for index in sorted(buckets):
        members = buckets[index]
        out += [
            (min(s for s, _ in members), min(v for _, v in members)),
            (max(s for s, _ in members), max(v for _, v in members)),
        ]
    return out


def test_downsampling_keeps_each_buckets_min_and_max(db_url):
    engine = make_engine(db_url)
    maker = make_sessionmaker(engine)
    rng = random.Random(3)
    points = [(step, math.sin(step / 50) + rng.gauss(0, 0.1)) for step in range(0, 3000, 3)]
    points[417] = (points[417][0], 25.0)  # a spike must survive
    with maker() as session:
        run = Run(kind="faketrain", name="ds", spec={}, metric_keys=["loss"])
        session.add(run)
        session.flush()
        metrics_service.ingest(session, run.id, [("loss", s, v, 0.0) for s, v in points])
        metrics_service.ingest(session, run.id, [("other", s, 1.0, 0.0) for s, _ in points[:5]])
        session.commit()
        steps, values, down, total = metrics_service.series(session, run.id, "loss", 200)
        assert down and total == len(points) and len(steps) <= 200
        expected = _naive_buckets(points, 200)
        assert steps == [s for s, _ in expected]
        assert values == pytest.approx([v for _, v in expected])
        assert max(values) == 25.0 and min(values) == min(v for _, v in points)
        full = metrics_service.series(session, run.id, "loss", 200, step_min=300, step_max=600)
        assert not full[2] and full[0] == list(range(300, 601, 3))
        assert metrics_service.series(session, run.id, "other", 200)[1] == [1.0] * 5
    engine.dispose()
