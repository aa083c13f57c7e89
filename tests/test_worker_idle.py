"""An idle worker stays awake: no Redis errors while it waits, and an event posted to it reaches
Amplitude within 2 s.

With redis-py 8 (a 5 s socket read timeout by default) an idle `bridge worker` used to log "could not
connect to Redis instance: Timeout reading from socket" every few seconds on a healthy Redis and back off
for up to a minute, while events posted meanwhile waited (23 s was seen). The end-to-end test waits until
the worker's BLPOP has been blocked for longer than that default timeout, watching Redis itself (CLIENT
LIST), not a clock.
"""
from __future__ import annotations

import time

import httpx
import pytest
from redis import Redis

from bridge import worker
from bridge.amplitude.sink import AmplitudeSink
from bridge.settings import Settings
from support.databases import truncate
from support.factories import event_item
from support.processes import SECRET_KEY, bridge_cli, log_records, start_web, start_worker, wait_until

pytestmark = pytest.mark.e2e

REDIS_PY_DEFAULT_SOCKET_TIMEOUT = 5  # redis-py 8's DEFAULT_SOCKET_TIMEOUT


def _blocked_worker_seconds(redis: Redis, db: int) -> int | None:
    """How long the longest BLPOP on database `db` has been blocked, in seconds (None: none is)."""
    idle = [int(c["idle"]) for c in redis.client_list() if c.get("cmd") == "blpop" and int(c["db"]) == db]
    return max(idle) if idle else None


def test_the_workers_redis_client_waits_longer_than_its_blpop(redis_url):
    """The invariant behind the end-to-end test, for every client the worker makes."""
    settings = Settings.from_env({"REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY})
    blocking, sweeping = worker.connections(settings)
    try:
        assert worker.WORKER_TTL_SECONDS - 15 < blocking.connection_pool.connection_kwargs["socket_timeout"]
        assert sweeping.connection_pool is not blocking.connection_pool  # the sweep's connections never BLPOP
        assert sweeping.connection_pool.connection_kwargs["socket_timeout"] <= 10
    finally:
        blocking.close()
        sweeping.close()


@pytest.mark.slow
def test_an_event_posted_to_an_idle_worker_reaches_amplitude_within_2_seconds(postgresql_url, redis_url, tmp_path):
    truncate(postgresql_url)
    db = int(redis_url.rsplit("/", 1)[1])
    with AmplitudeSink(api_keys={"amp-idle-key"}) as sink:
        env = {"DATABASE_URL": postgresql_url.replace("+psycopg", ""), "REDIS_URL": redis_url,
               "AMPLITUDE_BASE_URL": sink.url, "SECRET_KEY": SECRET_KEY, "LOG_LEVEL": "INFO"}
        app = bridge_cli(env, "apps", "create", "--name", "Idle", "--amplitude-api-key", "amp-idle-key")
        web, url = start_web(env, tmp_path / "web.log")
        work = start_worker(env, tmp_path / "worker.log")
        redis = Redis.from_url(redis_url)
        try:
            def idle_past_the_default_timeout():
                assert "ERROR" not in work.output(), work.output()
                blocked = _blocked_worker_seconds(redis, db)
                return blocked is not None and blocked > REDIS_PY_DEFAULT_SOCKET_TIMEOUT + 1

            wait_until(idle_past_the_default_timeout, 30, "the worker's BLPOP to outlast redis-py's default timeout",
                       interval=0.5)
            item = event_item("idle-1", "message.push.clicked", "sub-idle", "user-idle", device_type="AndroidPush")
            posted = time.monotonic()
            answer = httpx.post(f"{url}/v1/apps/{app['app_id']}/events", json=[item], timeout=10,
                                headers={"Authorization": f"Bearer {app['api_key']}"})
            assert answer.status_code == 202, answer.text
            wait_until(lambda: sink.events("amp-idle-key"), 10, "the event to reach Amplitude", interval=0.02)
            delay = time.monotonic() - posted
            assert delay < 2, f"the event reached Amplitude {delay:.1f} s after it was posted"
            assert not [r for r in log_records(work.output(), "text") if r["level"] in ("WARNING", "ERROR", "CRITICAL")]
        finally:
            redis.close()
            work.stop()
            web.stop()
