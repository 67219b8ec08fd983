"""The worker's pieces on a SQLite database, without Celery: claiming, liveness, the abandoned-job sweep,
throttled progress, the heartbeat's cancel flag, failure messages and the atomic artifact publish."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select

from compression_core.progress import ProgressEvent
from store.db import make_engine, make_session_factory
from store.models import Base, Checkpoint, Dataset, Job, JobEvent, Tenant
from worker import claims
from worker.artifacts import ArtifactPaths, publish
from worker.claims import Outcome, claim_job, owner_identity, requeue_abandoned
from worker.pipeline import json_safe, run_pipeline
from worker.progress import Heartbeat, ProgressWriter, utcnow


@pytest.fixture
def db(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'l2.db'}")
    Base.metadata.create_all(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def settings(tmp_path):
    from store.settings import Settings

    return Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'l2.db'}")


def add_job(db, **values) -> str:
    with db() as session:
        tenant = Tenant(name=f"t-{os.urandom(3).hex()}")
        session.add(tenant)
        session.flush()
        ckpt = Checkpoint(
            tenant_id=tenant.id,
            filename="m.pt",
            path=values.pop("checkpoint_path", "missing.pt"),
            size_bytes=1,
            sha256="",
        )
        data = Dataset(
            tenant_id=tenant.id, name="c", source="upload", path="calib.pt", spec={"kind": "tensors"}
        )
        session.add_all([ckpt, data])
        session.flush()
        job = Job(
            tenant_id=tenant.id,
            checkpoint_id=ckpt.id,
            dataset_id=data.id,
            architecture="digits_cnn",
            target_ratio=10.0,
            options={},
            device=values.pop("device", "cpu"),
            queue="cpu",
            **values,
        )
        session.add(job)
        session.commit()
        return job.id


def row(db, job_id) -> Job:
    with db() as session:
        return session.get(Job, job_id)


def events(db, job_id) -> list[str]:
    with db() as session:
        return [
            e.message
            for e in session.execute(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.created_at)
            ).scalars()
        ]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claim_moves_a_queued_job_to_running_with_one_more_attempt(db):
    job_id = add_job(db)
    outcome, claim = claim_job(job_id, db, stale_after_s=60, me="host-a:1")
    assert outcome is Outcome.CLAIMED and claim.attempt == 1
    job = row(db, job_id)
    assert (job.state, job.attempts, job.worker, job.phase) == ("running", 1, "host-a:1", "loading")
    assert any("attempt 1 started" in m for m in events(db, job_id))


def test_claim_leaves_a_live_attempt_alone_and_takes_over_a_stale_one(db):
    job_id = add_job(db, state="running", attempts=1, worker="other-host:123", updated_at=utcnow())
    assert claim_job(job_id, db, stale_after_s=60, me="host-a:1")[0] is Outcome.BUSY
    with db() as session:
        session.get(Job, job_id).updated_at = utcnow() - timedelta(seconds=120)
        session.commit()
    outcome, claim = claim_job(job_id, db, stale_after_s=60, me="host-a:1")
    assert outcome is Outcome.CLAIMED and claim.attempt == 2
    assert any("previous attempt on other-host:123 stopped" in m for m in events(db, job_id))


def test_claim_takes_over_at_once_when_the_previous_process_on_this_host_is_gone(db):
    worker = f"{owner_identity().rpartition(':')[0]}:{dead_pid()}"
    job_id = add_job(db, state="running", attempts=1, worker=worker, updated_at=utcnow())
    assert claim_job(job_id, db, stale_after_s=3600, me="x:1")[0] is Outcome.CLAIMED


def test_claim_does_nothing_for_a_finished_job(db):
    job_id = add_job(db, state="succeeded", attempts=1)
    assert claim_job(job_id, db, stale_after_s=60)[0] is Outcome.ENDED
    assert row(db, job_id).attempts == 1


def test_claim_cancels_a_queued_job_whose_cancel_was_requested(db):
    job_id = add_job(db, cancel_requested=True)
    assert claim_job(job_id, db, stale_after_s=60)[0] is Outcome.ENDED
    assert row(db, job_id).state == "canceled"


def test_claim_fails_a_job_whose_worker_died_too_often(db):
    job_id = add_job(
        db,
        state="running",
        attempts=claims.MAX_ATTEMPTS,
        worker="gone:1",
        updated_at=utcnow() - timedelta(hours=1),
    )
    assert claim_job(job_id, db, stale_after_s=60, me="x:1")[0] is Outcome.ENDED
    job = row(db, job_id)
    assert job.state == "failed" and "memory" in job.error


def test_sweep_requeues_only_dead_attempts(db):
    me = owner_identity()
    dead = add_job(
        db, state="running", attempts=1, worker=f"{me.rpartition(':')[0]}:{dead_pid()}", updated_at=utcnow()
    )
    alive = add_job(db, state="running", attempts=1, worker=me, updated_at=utcnow())
    sent = []
    requeued = requeue_abandoned(db, ["cpu"], stale_after_s=60, enqueue=lambda j, q: sent.append((j, q)))
    assert requeued == [dead] and sent == [(dead, "cpu")]
    assert row(db, dead).state == "queued" and row(db, alive).state == "running"
    assert any("was lost" in m for m in events(db, dead))


def event(phase: str, fraction: float, **kw) -> ProgressEvent:
    return ProgressEvent(phase=phase, iteration=0, total_iterations=100, fraction=fraction, **kw)


def test_progress_is_written_at_most_once_per_interval_plus_on_phase_changes(db):
    job_id = add_job(db)
    _, claim = claim_job(job_id, db, stale_after_s=60, me="w:1")
    now = [0.0]
    writer = ProgressWriter(job_id, "w:1", claim.attempt, db, min_interval_s=1.0, clock=lambda: now[0])
    for i in range(50):
        now[0] = i * 0.01  # 50 events within half a second
        writer(event("transform", i / 1000, losses={"total": 1.0, "bad": math.nan}))
    assert writer.writes == 1
    now[0] = 0.6
    writer(event("weights", 0.1))  # a phase change is written at once
    assert writer.writes == 2
    now[0] = 10.0
    writer(event("weights", 0.25, estimated_ratio=9.5))
    assert writer.writes == 3
    job = row(db, job_id)
    assert job.phase == "weights" and job.estimated_ratio == 9.5
    assert job.eta_seconds == pytest.approx(30.0)  # 10 s for a quarter: 30 s to go
    assert 0.05 < job.progress < 0.95
    assert "phase weights" in events(db, job_id)


def test_progress_of_a_replaced_attempt_is_not_written(db):
    job_id = add_job(db)
    claim_job(job_id, db, stale_after_s=60, me="w:1")
    ProgressWriter(job_id, "someone-else:2", 1, db)(event("transform", 0.5))
    assert row(db, job_id).phase == "loading"


def test_heartbeat_sees_cancel_requests_and_losing_the_claim(db):
    job_id = add_job(db)
    _, claim = claim_job(job_id, db, stale_after_s=60, me="w:1")
    beat = Heartbeat(job_id, "w:1", claim.attempt, db, interval_s=0.05)
    beat.beat()
    assert not beat.should_cancel()
    with db() as session:
        session.get(Job, job_id).cancel_requested = True
        session.commit()
    beat.beat()
    assert beat.should_cancel() and not beat.lost
    other = Heartbeat(job_id, "w:2", claim.attempt, db)
    other.beat()
    assert other.lost and other.should_cancel()


def test_a_job_with_a_missing_checkpoint_fails_with_a_message_and_leaves_no_files(db, settings):
    job_id = add_job(db, checkpoint_path="checkpoints/nowhere/model.pt")
    assert run_pipeline(job_id, settings=settings, session_factory=db) == "failed"
    job = row(db, job_id)
    assert job.state == "failed" and "checkpoint" in job.error and "does not exist" in job.error
    assert job.finished_at is not None and job.artifact_path is None
    artifacts = settings.data_dir / "artifacts"
    assert not artifacts.exists() or not any(artifacts.rglob("*"))


def test_a_cuda_job_on_a_worker_without_cuda_fails_saying_where_to_send_it(db, settings):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    job_id = add_job(db, device="cuda")
    assert run_pipeline(job_id, settings=settings, session_factory=db) == "failed"
    assert "no CUDA device" in row(db, job_id).error


def test_a_redelivered_message_for_a_finished_job_does_no_work(db, settings):
    job_id = add_job(db, state="succeeded", attempts=1)
    assert run_pipeline(job_id, settings=settings, session_factory=db) == "ended"


def test_publish_is_an_atomic_rename_and_temps_can_be_swept(tmp_path):
    paths = ArtifactPaths(tmp_path, "tenant", "job")
    paths.folder.mkdir(parents=True)
    stale = paths.temp(1)
    stale.write_bytes(b"half")
    temp = paths.temp(2)
    temp.write_bytes(b"whole")
    publish(temp, paths.final)
    assert paths.final.read_bytes() == b"whole" and not temp.exists()
    assert paths.remove_temps() == 1 and not stale.exists()
    with pytest.raises(ValueError):
        ArtifactPaths(tmp_path, "../evil", "job")


def test_json_safe_turns_non_finite_numbers_into_null():
    assert json_safe({"a": math.inf, "b": [1.0, math.nan], "c": (1, 2)}) == {
        "a": None,
        "b": [1.0, None],
        "c": [1, 2],
    }
