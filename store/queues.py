"""The broker message that points a worker at a job: task name, queues, exchange and the Celery settings both
sides must agree on.

The API publishes ``l2.run_job`` by name with `celery_enqueuer` and never imports the worker's code; the
worker (`worker.celery_app`) builds its Celery app from the same `celery_config`, adding its task module.

Why these settings:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a job's message is acknowledged only after the job has
  finished, so a worker that dies mid-job leaves the message to be delivered again; the pipeline's claim step
  makes a second delivery finish the job once (it returns without work when the job already ended).
* ``worker_prefetch_multiplier = 1``: a worker busy with a 20-minute GPU job must not hold the next message
  hostage while an idle worker waits.
* explicit ``cpu`` / ``gpu`` queues with ``task_create_missing_queues`` off: a typo in a queue name fails at
  enqueue time instead of creating a queue no worker listens to.
* Redis ``visibility_timeout`` far longer than any job: otherwise Redis hands a still-running job to a second
  worker after an hour. Jobs abandoned by a killed worker are found sooner by the workers' sweep
  (`worker.claims.requeue_abandoned`), not by this timeout.
* No result backend: the job row in the database is the result.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from threading import Lock

import redis
from celery import Celery
from kombu import Exchange, Queue
from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.exc import OperationalError

TASK_NAME = "l2.run_job"
QUEUES = ("cpu", "gpu")
EXCHANGE = "l2"
# Longer than any job is allowed to run; see the module docstring.
REDIS_VISIBILITY_TIMEOUT_S = 7 * 24 * 3600

Enqueue = Callable[[str, str], None]  # (job_id, queue)


def is_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://", "redis+socket://"))


def _transport_options(broker_url: str) -> dict:
    if is_redis(broker_url):
        return {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S}
    return {}


def celery_config(broker_url: str) -> dict:
    """The Celery settings of the API's publisher and the workers' consumer (see the module docstring)."""
    exchange = Exchange(EXCHANGE, type="direct")
    return dict(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=tuple(Queue(name, exchange, routing_key=name) for name in QUEUES),
        task_default_queue="cpu",
        task_default_exchange=EXCHANGE,
        task_default_routing_key="cpu",
        task_create_missing_queues=False,
        task_routes={TASK_NAME: {"queue": "cpu"}},
        broker_transport_options=_transport_options(broker_url),
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        # The job row holds state and progress; Celery's own task-state tracking would be a second truth.
        task_track_started=False,
    )


def make_celery(broker_url: str, include: tuple[str, ...] = ()) -> Celery:
    """A Celery app for ``broker_url``; ``include`` names the task modules a worker loads (none to publish)."""
    app = Celery("l2", broker=broker_url, include=list(include))
    app.conf.update(celery_config(broker_url))
    return app


def send_job(app: Celery, job_id, queue: str) -> None:
    """Publish one ``l2.run_job`` message. Call after the job row is committed: the task reloads it by id."""
    if queue not in QUEUES:
        raise ValueError(f"queue {queue!r} does not exist; use one of {QUEUES}")
    app.send_task(TASK_NAME, args=[job_id], queue=queue, routing_key=queue, exchange=EXCHANGE)


def celery_enqueuer(broker_url: str) -> Enqueue:
    """An enqueue function publishing by task name; its Celery app is built on first use, so creating the
    API never connects to the broker."""
    state: dict = {}
    lock = Lock()

    def enqueue(job_id: str, queue: str) -> None:
        with lock:
            if "app" not in state:
                state["app"] = make_celery(broker_url)
        send_job(state["app"], job_id, queue)

    return enqueue


# -- what the broker holds --
def job_id_of(payload: str | bytes) -> str | None:
    """The job id of one waiting broker message (kombu's JSON envelope of an ``l2.run_job`` task), or None
    for anything else."""
    try:
        message = json.loads(payload)
        if message.get("headers", {}).get("task") != TASK_NAME:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return str(args[0]) if args else None


def waiting_job_ids(broker_url: str, queues: Iterable[str]) -> set[str] | None:
    """Ids of the jobs whose message waits in ``queues`` (not yet delivered to a worker); None when the broker
    cannot be read this way (an unknown transport). What the workers' sweep compares queued jobs against to
    find those whose message was lost (`worker.recovery`)."""
    if is_redis(broker_url):
        client = redis.Redis.from_url(broker_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            payloads = [p for q in queues for p in client.lrange(q, 0, -1)]
        finally:
            client.close()
    elif broker_url.startswith("sqla+"):
        # kombu's SQL transport: one row per message, ``visible`` until a worker fetches it.
        query = text(
            "SELECT m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
            "WHERE m.visible AND q.name IN :queues"
        ).bindparams(bindparam("queues", expanding=True))
        engine = create_engine(broker_url.removeprefix("sqla+"))
        try:
            with engine.connect() as conn:
                payloads = conn.execute(query, {"queues": list(queues)}).scalars().all()
        except OperationalError as exc:
            if "no such table" in str(exc):  # no message was ever published yet
                return set()
            raise
        finally:
            engine.dispose()
    else:
        return None
    return {job for job in map(job_id_of, payloads) if job is not None}
