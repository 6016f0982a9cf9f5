"""The secret and the Redis password never reach logs at the default level."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

import celerynb


def test_logs_hold_no_secret_or_password(cluster: celerynb.LocalCluster) -> None:
    password = urlsplit(cluster.settings.broker_url).password
    assert password
    with pytest.raises(celerynb.ChunkError):
        celerynb.cmap(lambda xs: 1 / 0, [1, 2], cluster=cluster, progress=False)
    future = celerynb.cmap_async(lambda xs: xs, list(range(50)), cluster=cluster, progress=False)
    future.cancel()
    logs = {
        "worker": (cluster.dir / "worker.log").read_text(errors="replace"),
        "redis": (cluster.dir / "redis.log").read_text(errors="replace"),
    }
    assert "celery@" in logs["worker"] or "celerynb-local" in logs["worker"]  # a real log
    for name, text in logs.items():
        assert cluster.settings.secret not in text, name
        assert password not in text, name
