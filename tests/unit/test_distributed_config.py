"""``[workers] mode`` and ``[celery]``: defaults keep local mode; distributed is validated."""

from __future__ import annotations

import pytest

from qcd.config import load_settings
from qcd.errors import ConfigError
from qcd.workers.celery_app import make_celery, queue_name

PG = "postgresql+psycopg://qcd@db/qcd"


def test_local_is_the_default_and_needs_no_broker() -> None:
    s = load_settings(environ={})
    assert s.workers.mode == "local"
    assert s.celery.pool == "prefork" and s.celery.task_time_limit < s.workers.lease_seconds


@pytest.mark.parametrize("env, key", [
    ({"QCD_WORKERS__MODE": "cluster"}, "workers.mode"),
    ({"QCD_WORKERS__MODE": "distributed"}, "database.url"),
    ({"QCD_WORKERS__MODE": "distributed", "QCD_DATABASE__URL": PG,
      "QCD_CELERY__BROKER_URL": "redis://u:secret@r/0"}, "celery.broker_url"),
    ({"QCD_WORKERS__MODE": "distributed", "QCD_DATABASE__URL": PG,
      "QCD_CELERY__TASK_TIME_LIMIT": "1000", "QCD_CELERY__TASK_SOFT_TIME_LIMIT": "900"},
     "workers.lease_seconds"),
    ({"QCD_CELERY__POOL": "gevent"}, "celery.pool"),
    ({"QCD_CELERY__TASK_SOFT_TIME_LIMIT": "700"}, "celery.task_soft_time_limit"),
    ({"QCD_CELERY__QUEUE_PREFIX": "a b"}, "celery.queue_prefix"),
])
def test_invalid_distributed_settings_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_settings(environ=env)
    assert "secret" not in str(err.value)


def test_queues_per_analyzer_and_gpu_are_durable_and_late_acked() -> None:
    s = load_settings(environ={"QCD_WORKERS__MODE": "distributed", "QCD_DATABASE__URL": PG,
                               "QCD_CELERY__GPU_ANALYZERS": "earl,atrium"})
    assert queue_name(s.celery, "earl") == "qcd.earl.gpu"
    assert queue_name(s.celery, "chest") == "qcd.chest"
    app = make_celery(s.celery, ["earl", "chest"], workers=lambda *a: "ok")
    conf = app.conf
    assert {q.name: q.durable for q in conf.task_queues} == {"qcd.chest": True,
                                                             "qcd.earl.gpu": True}
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["confirm_publish"] is True
    task = app.tasks["qcd.run_job"]
    assert task.acks_late and task.max_retries == s.celery.max_retries
