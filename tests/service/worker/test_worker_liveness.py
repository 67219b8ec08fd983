"""Worker liveness and recovery without Celery: the liveness row /readyz counts, queued jobs whose broker
message was lost, the supervisor that restarts a killed worker, and the worker that stops when its
supervisor is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from test_worker_units import add_job, db, events, row, settings  # noqa: F401  (fixtures)

from store.models import Job, WorkerHeartbeat, utcnow
from store.queues import TASK_NAME, job_id_of, make_celery
from worker.liveness import MainProcessWatch, supervisor_gone
from worker.recovery import LostMessages
from worker.supervisor import WorkerSupervisor


def age(db, job_id, seconds: float) -> None:  # noqa: F811
    with db() as session:
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow() - timedelta(seconds=seconds)))
        session.commit()


# -- lost broker messages ----
def lost_messages(db, sent, waiting, clock):  # noqa: F811
    return LostMessages(
        db,
        ["cpu"],
        broker_url="redis://unused",
        lost_after_s=300,
        enqueue=lambda job_id, queue: sent.append((job_id, queue)),
        waiting=lambda url, queues: waiting,
        confirm_s=10,
        clock=lambda: clock[0],
    )


def test_a_queued_job_without_a_waiting_message_is_published_again_once(db):  # noqa: F811
    lost, waiting, fresh = add_job(db, state="queued"), add_job(db, state="queued"), add_job(db, state="queued")
    age(db, lost, 600)
    age(db, waiting, 600)
    sent, clock = [], [0.0]
    finder = lost_messages(db, sent, {waiting}, clock)
    assert finder.sweep() == []  # seen without a message once: maybe a worker has just fetched it
    clock[0] = 10.0
    assert finder.sweep() == [lost]  # and still 10 s later: lost
    assert sent == [(lost, "cpu")]
    assert any("published again" in m for m in events(db, lost))
    assert row(db, lost).state == "queued"
    clock[0] = 30.0
    # The next sweeps wait another lost_after_s: one message per interval, not one per sweep.
    assert finder.sweep() == [] and len(sent) == 1
    assert fresh not in [j for j, _ in sent]


def test_a_job_claimed_between_two_sweeps_is_not_published_again(db):  # noqa: F811
    job_id = add_job(db, state="queued")
    age(db, job_id, 600)
    sent, clock = [], [0.0]
    finder = lost_messages(db, sent, set(), clock)
    assert finder.sweep() == []
    with db() as session:  # a worker fetched the message and claimed the job meanwhile
        session.execute(update(Job).where(Job.id == job_id).values(state="running"))
        session.commit()
    clock[0] = 10.0
    assert finder.sweep() == [] and sent == []


def test_lost_messages_are_not_guessed_when_the_broker_cannot_be_read(db):  # noqa: F811
    job_id = add_job(db, state="queued")
    age(db, job_id, 600)
    sent, clock = [], [0.0]
    finder = lost_messages(db, sent, None, clock)
    finder.sweep()
    clock[0] = 60.0
    assert finder.sweep() == [] and sent == []


def test_waiting_messages_are_read_back_to_their_job_ids(tmp_path):
    # A real message through kombu's SQL transport, as the embedded default publishes it.
    url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    app = make_celery(url)
    app.send_task(TASK_NAME, args=["job-1"], queue="cpu", routing_key="cpu", exchange="l2")
    from store.queues import waiting_job_ids

    assert waiting_job_ids(url, ["cpu"]) == {"job-1"}
    assert waiting_job_ids(url, ["gpu"]) == set()
    assert job_id_of(b'{"headers": {"task": "other"}}') is None and job_id_of(b"not json") is None


# -- the liveness row ----
def test_the_main_process_reports_itself_alive_and_removes_itself_on_stop(db, settings):  # noqa: F811
    watch = MainProcessWatch(session_factory=db, settings=settings, name="w1@host", queues=["cpu"], enqueue=None)
    watch.report_alive()
    first = _heartbeats(db)
    assert [(h.id, h.name, h.queues) for h in first] == [(watch.identity, "w1@host", "cpu")]
    time.sleep(0.01)
    watch.report_alive()
    assert _heartbeats(db)[0].last_seen > first[0].last_seen
    watch.stop()
    assert _heartbeats(db) == []


def _heartbeats(db):  # noqa: F811
    with db() as session:
        return list(session.execute(select(WorkerHeartbeat)).scalars())


# -- supervision ----
def test_the_supervisor_restarts_a_killed_worker_and_stops_it_for_good(tmp_path):
    marker = tmp_path / "supervisor_pid"
    command = [
        sys.executable,
        "-c",
        "import os, sys, time; p = sys.argv[1]; open(p + '.tmp', 'w').write(os.environ['L2_SUPERVISOR_PID']); "
        "os.replace(p + '.tmp', p); time.sleep(600)",
        str(marker),
    ]
    said = []
    supervisor = WorkerSupervisor(command, stop_timeout_s=5, say=said.append).start()
    try:
        first = supervisor.proc.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 300  # bounds for a busy machine, not timings
        while supervisor.proc.pid == first or supervisor.proc.poll() is not None:
            assert time.monotonic() < deadline, said
            time.sleep(0.05)
        assert supervisor.restarts == 1 and "signal 9" in said[0]
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert marker.read_text() == str(os.getpid())
    finally:
        supervisor.stop()
    assert supervisor.proc.poll() is not None
    time.sleep(1.5)
    assert supervisor.restarts == 1  # stopped on purpose: not restarted


def test_a_worker_whose_supervisor_is_gone_stops_itself(tmp_path):
    # A stand-in for the Celery main process: its liveness thread, told that pid 1 (not our parent) runs it.
    script = textwrap.dedent(
        f"""
        import signal, sys, time
        from store.db import make_engine, make_session_factory
        from store.models import Base
        from store.settings import Settings
        from worker.liveness import MainProcessWatch

        engine = make_engine("sqlite:///{tmp_path / "l2.db"}")
        Base.metadata.create_all(engine)
        settings = Settings(data_dir="{tmp_path}", database_url="sqlite:///{tmp_path / "l2.db"}", supervisor_pid=1)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))  # what Celery's warm shutdown would start
        MainProcessWatch(session_factory=make_session_factory(engine), settings=settings, name="w",
                         queues=["cpu"], enqueue=lambda *a: None).start()
        time.sleep(120)
        sys.exit(0)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 42, out.stderr[-2000:]  # stopped by its own SIGTERM, not at the end of its sleep
    assert "is gone; stopping after the running job" in out.stderr


@pytest.mark.parametrize("nice", [0, 7])
def test_the_process_computing_jobs_yields_to_the_api(nice, settings, monkeypatch):  # noqa: F811
    # Run in a child: niceness cannot be lowered again, and this test process must not stay niced.
    code = (
        "import os; from store.settings import Settings; from worker.signals import be_polite; "
        f"be_polite(Settings(worker_nice={nice}, worker_torch_threads=1)); "
        "print(os.nice(0), os.environ['OMP_NUM_THREADS'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(os.nice(0) + nice), "1"]


def test_a_pool_child_knows_when_its_main_process_lost_the_supervisor():
    # This process plays the Celery main process: its parent is the supervisor.
    assert not supervisor_gone(os.getppid(), os.getpid())
    assert supervisor_gone(os.getpid(), os.getpid())  # its parent is someone else now
    assert not supervisor_gone(0, os.getpid())  # not supervised


def test_an_orphaned_worker_leaves_the_job_queued_for_the_next_one(monkeypatch):
    from celery.exceptions import Reject

    from worker import tasks

    monkeypatch.setattr(tasks, "supervisor_gone", lambda supervisor, main: True)
    monkeypatch.setattr(tasks, "claim_job", lambda *a, **k: pytest.fail("an orphaned worker claimed a job"))
    with pytest.raises(Reject) as rejected:
        tasks.run_job.run("job-1")
    assert rejected.value.requeue
