"""Two `engage serve` processes on two loopback ports share one Redis online store.

Each server has a data folder of its own (a copy of the small trained pipeline: its
models, registry and packed SQLite store), as two serving hosts would; only the Redis
online store (tests/conftest.py:redis_server) is shared. They give the same answers for
the same contacts, and a rematerialization by a third folder (a rebuilt snapshot in
which a prospect has bought) changes that contact's stage on both at once, which their
own SQLite files could not show. `slow` (the pipeline) and `scale` (redis-server);
both servers are always stopped (by process id, with timeouts).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engage.config import load_params, resolve_paths
from features.catalog import ENTITY_KEY
from features.snapshots import pick_snapshot
from serving.local_server import free_port
from tests.conftest import SMALL

START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 40
REQUEST_TIMEOUT_S = 30


def _on_redis(connection: str) -> tuple[str, ...]:
    return (*SMALL, "feast.online_store=redis", f"feast.redis_connection_string={connection}")


class EngageServe:
    """``engage serve`` (the command, preflight included) on ``127.0.0.1:<free port>``."""

    def __init__(self, data_dir: Path, sets: tuple[str, ...], now: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        exe = Path(sys.executable).with_name("engage")
        args = [str(exe), *(a for s in sets for a in ("--set", s))]
        args += ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        args += ["--now", now]
        env = dict(os.environ, ENGAGE_DATA_DIR=str(data_dir))
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            args, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"engage serve exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        pytest.fail(f"engage serve not ready in time:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM (engage serve stops its server and workers), then kill what is left."""
        import psutil

        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(family, timeout=10)
        for proc in alive:
            proc.kill()
        self._out.close()


def _predict(url: str, ids: list[str]) -> dict:
    resp = httpx.post(f"{url}/predict", json={"customer_ids": ids}, timeout=REQUEST_TIMEOUT_S)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_two_engage_serve_processes_share_one_redis(pipeline, redis_server, tmp_path):
    import redis

    host, port = redis_server.split(":")
    client = redis.Redis(host=host, port=int(port))
    client.flushdb()
    client.close()
    from features.store import apply_repo, materialize_snapshot, open_store_read_only

    sets = _on_redis(redis_server)
    folders = {}
    for name in ("host_a", "host_b", "builder"):
        folders[name] = tmp_path / name
        shutil.copytree(pipeline.data_dir, folders[name])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGAGE_DATA_DIR", str(folders["builder"]))
        builder = resolve_paths(load_params(overrides=sets))
    # The builder applies its own registry (its sources name its own snapshot files), as
    # `engage features build` does, then loads the latest snapshot into Redis.
    apply_repo(builder)
    snap = pick_snapshot(builder.features_dir)
    assert materialize_snapshot(open_store_read_only(builder), snap.as_of) > 1000

    frame = pd.read_parquet(snap.path, columns=[ENTITY_KEY, "has_purchased"])
    prospects = frame.loc[frame["has_purchased"] == 0, ENTITY_KEY].tolist()
    customers = frame.loc[frame["has_purchased"] == 1, ENTITY_KEY].tolist()
    target = prospects[0]
    ids = [target, *prospects[1:20:2], *customers[:20:2], "NO-SUCH-CUSTOMER"]
    now = (snap.as_of + pd.Timedelta(hours=1)).isoformat()

    servers = []
    try:
        for name in ("host_a", "host_b"):
            servers.append(EngageServe(folders[name], sets, now, tmp_path / f"{name}.log"))
        deadline = time.monotonic() + START_TIMEOUT_S
        for s in servers:
            s.wait_ready(deadline)
        a, b = (_predict(s.url, ids) for s in servers)
        assert a == b
        before = {p["customer_id"]: p for p in a["predictions"]}
        assert before[target]["stage"] in ("Nurture", "Purchase")

        # The builder's rebuilt snapshot: the prospect has bought (a change of half is
        # never held back by the stability rule), rematerialized into the shared Redis.
        table = pq.read_table(snap.path)
        where = table.schema.get_field_index("has_purchased")
        field = table.schema.field(where)
        bought = pc.equal(table.column(ENTITY_KEY), target)
        half = pc.if_else(bought, pa.scalar(1, field.type), table.column(where))
        assert pc.sum(half).as_py() == pc.sum(table.column(where)).as_py() + 1
        table = table.set_column(where, field, half)
        pq.write_table(table, snap.path)
        materialize_snapshot(open_store_read_only(builder), snap.as_of)

        a, b = (_predict(s.url, ids) for s in servers)
        assert a == b
        after = {p["customer_id"]: p for p in a["predictions"]}
        assert after[target]["stage"] in ("Retention", "Exit")
        assert {k: v for k, v in after.items() if k != target} == {
            k: v for k, v in before.items() if k != target
        }
    finally:
        for s in servers:
            s.stop()
    for s in servers:
        assert s.proc.poll() is not None
