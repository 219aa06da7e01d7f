"""Cluster mode rehearsed on one machine (`make run-services`, short version): ads_full against a PostgreSQL-backed
MLflow server, Redis as Feast's online store, a two-node Ray cluster and BentoML services in their own processes;
every server is stopped at the end."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest

from adflow import services
from adflow.config import load_settings
from adflow.runner import run_pipeline
from tests.conftest import SMALL

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(services.missing_programs()),
        reason=f"missing {services.missing_programs()}: `make system-deps` installs Debian's postgresql and redis-server",
    ),
]


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_ads_full_against_real_servers(tmp_path: Path) -> None:
    import psycopg2
    import redis

    from adflow.registry import CHAMPION, alias_version
    from adflow.tracking import client

    base = [*SMALL, "ab.enabled=true", "ab.requests=200", f"placement.workspace={tmp_path / 'ws'}",
            f"placement.runs_dir={tmp_path / 'runs'}"]  # fmt: skip
    with services.start(tmp_path / "servers") as svc:
        assert services.ray_nodes(svc.ray_address) == 2  # the head and a separate worker node
        s = load_settings("tiny", "services", [*base, *svc.overrides()])
        summary = run_pipeline(s, show=False)
        status = {st.name: st.status for st in summary.stages}
        assert summary.status == "succeeded", summary.error
        assert status == {"synth": "succeeded", "ingest": "skipped", "validate": "succeeded",
                          "creative": "succeeded", "moon": "succeeded", "features": "succeeded",
                          "train_ctr": "succeeded", "gate": "succeeded", "register": "succeeded",
                          "abtest": "succeeded"}  # fmt: skip
        ab = next(st for st in summary.stages if st.name == "abtest").metrics
        assert ab["http_5xx"] == 0 and ab["aa_test"] == 1

        # MLflow's runs and registry are in PostgreSQL, reached through the server
        c = client(svc.mlflow_uri)
        assert alias_version(c, s.registry.model_name, CHAMPION) == 1
        assert summary.mlflow["tracking_uri"] == svc.mlflow_uri
        dsn = svc.postgres_url.replace("postgresql+psycopg2://", "postgresql://")
        with psycopg2.connect(dsn) as db, db.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM runs")
            n_runs = cur.fetchone()[0]
            cur.execute("SELECT name FROM registered_models")
            models = [r[0] for r in cur.fetchall()]
        assert n_runs >= 9 and models == [s.registry.model_name]
        # Feast's online store is the Redis server: materialized feature rows are there
        host, port = svc.redis_url.split(":")
        assert redis.Redis(host=host, port=int(port)).dbsize() > 100

    # everything started is stopped
    assert not _up(f"{svc.mlflow_uri}/health")
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host=host, port=int(port), socket_timeout=1).ping()
    pg_port = svc.postgres_url.rsplit(":", 1)[1].split("/")[0]
    isready = services._pg_bin("pg_isready")
    assert isready and subprocess.run([isready, "-h", "127.0.0.1", "-p", pg_port]).returncode != 0
