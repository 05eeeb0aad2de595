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
from server.core import metrics as metrics_service
from server.core.db import DatabaseNotMigrated, make_engine, make_sessionmaker
from server.core.models import Base, Run
from server.core.settings import Settings
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
        # 200 points: bucketed by the database; 40 points: bucketed from the stored blocks
        for max_points in (200, 40):
            steps, values, down, total = metrics_service.series(session, run.id, "loss", max_points)
            assert down and total == len(points) and max_points // 2 <= len(steps) <= max_points
            assert steps == sorted(steps) and max(values) == 25.0
            assert min(values) == min(v for _, v in points)
            # every pair (first step, min), (last step, max) is exact for the points between those
            # steps, and the pairs cover every point once (checked against the raw list)
            covered = 0
            for first, vmin, last, vmax in zip(
                steps[::2], values[::2], steps[1::2], values[1::2], strict=True
            ):
                inside = [v for s, v in points if first <= s <= last]
                covered += len(inside)
                assert first < last and (vmin, vmax) == pytest.approx((min(inside), max(inside)))
            assert covered == len(points)
        window = metrics_service.series(session, run.id, "loss", 40, step_min=100, step_max=2000)
        inside = [(s, v) for s, v in points if 100 <= s <= 2000]
        assert window[2] and window[3] == len(inside) and window[0][0] == inside[0][0]
        assert window[0][-1] == inside[-1][0] and max(window[1]) == 25.0
        full = metrics_service.series(session, run.id, "loss", 200, step_min=300, step_max=600)
        assert not full[2] and full[0] == list(range(300, 601, 3))
        assert metrics_service.series(session, run.id, "other", 200)[1] == [1.0] * 5
    engine.dispose()
