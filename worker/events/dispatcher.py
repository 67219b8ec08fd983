"""Delivering the outbox: fan events out to endpoints, send them, retry, keep the log.

Runs in every worker's main process (`worker.signals` starts it beside the sweeper), never in the pool child
that runs a job, so a slow or dead receiver cannot slow a compression down. Several workers may run one
each: every step that takes work is a conditional UPDATE, so an event is fanned out once and a delivery
attempt is made by one dispatcher at a time.

* **Fan-out** (`Dispatcher.fan_out`): each committed, undispatched `OutboxEvent` becomes one
  `WebhookDelivery` per matching endpoint of its tenant (event filter; per-job endpoints only for their job).
  ``job.progress`` goes to an endpoint at most once per ``webhook_progress_interval_s``. A ``job.succeeded``
  whose job (or tenant) has an MLflow block also gets its `MlflowExport`.
* **Sending**: due deliveries are leased (``leased_until``), their request built from plain values, and
  posted from a thread pool; results come back to the loop thread, which records them in one transaction.
  A delivery is not sent while an earlier delivery of the same job to the same endpoint is still pending:
  per-endpoint ordering by job. A dispatcher killed mid-request leaves the lease to expire; the next attempt
  carries the same ``webhook-id`` (at-least-once).
* **Retention**: events older than ``webhook_retention_days`` go, with their deliveries and attempts, once
  none of them is pending.
* **Retries**: exponential backoff (``webhook_retry_base_s`` doubling up to ``webhook_retry_max_s``, ±25 %
  jitter) until ``webhook_retry_window_s`` (24 h) after the first attempt; then the delivery is ``failed`` and
  its endpoint marked ``failing`` (until its next success).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import aliased

from store.models import (
    Job,
    MlflowExport,
    OutboxEvent,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    new_id,
    utcnow,
)
from store.url_guard import UnsafeURL, check_url, parse_allow_list
from store.webhook_signing import sign_headers
from worker.events.sender import AttemptResult, post

log = logging.getLogger(__name__)

FAN_OUT_BATCH = 500
LEASE_MARGIN_S = 5.0
BATCH_WAIT_S = 0.005
PRUNE_INTERVAL_S = 600.0

# The statements of every round, built once with bound parameters: building them (an alias, a correlated
# subquery, three joins) cost more CPU per round than running them, and a busy dispatcher runs hundreds of
# rounds a second.
_IDS = bindparam("ids", expanding=True)
_UNDISPATCHED = (
    select(OutboxEvent).where(OutboxEvent.dispatched_at.is_(None)).order_by(OutboxEvent.seq).limit(bindparam("limit"))
)
_TAKE_EVENTS = (
    update(OutboxEvent)
    .where(OutboxEvent.seq.in_(_IDS), OutboxEvent.dispatched_at.is_(None))
    .values(dispatched_at=bindparam("now"))
    .returning(OutboxEvent.seq)
    .execution_options(synchronize_session=False)  # no ORM objects of these rows in the session to update
)
_EARLIER = aliased(WebhookDelivery, name="earlier")
# A delivery waits while an earlier one of the same job to the same endpoint is pending.
_BLOCKED = (
    select(_EARLIER.id)
    .where(
        _EARLIER.endpoint_id == WebhookDelivery.endpoint_id,
        _EARLIER.job_id == WebhookDelivery.job_id,
        _EARLIER.status == "pending",
        _EARLIER.event_seq < WebhookDelivery.event_seq,
    )
    .exists()
)
_FREE = WebhookDelivery.leased_until.is_(None) | (WebhookDelivery.leased_until < bindparam("now"))
_DUE = (
    select(WebhookDelivery.id, WebhookDelivery.endpoint_id)
    .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= bindparam("now"), _FREE, ~_BLOCKED)
    # Oldest event first, along the event_seq index, so the scan stops at the limit instead of sorting every
    # pending delivery each round.
    .order_by(WebhookDelivery.event_seq)
    .limit(bindparam("limit"))
)
_TAKE_DELIVERIES = (
    update(WebhookDelivery)
    .where(WebhookDelivery.id.in_(_IDS), WebhookDelivery.status == "pending", _FREE)
    .values(leased_until=bindparam("until"))
    .returning(WebhookDelivery.id)
    .execution_options(synchronize_session=False)
)
_OUTGOING = (
    select(
        WebhookDelivery.id,
        WebhookDelivery.endpoint_id,
        WebhookDelivery.attempts,
        WebhookEndpoint.url,
        WebhookEndpoint.secret,
        WebhookEndpoint.previous_secret,
        WebhookEndpoint.previous_secret_expires_at,
        OutboxEvent.id.label("event_id"),
        OutboxEvent.payload,
    )
    .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
    .join(OutboxEvent, OutboxEvent.seq == WebhookDelivery.event_seq)
    .where(WebhookDelivery.id.in_(_IDS))
    .order_by(WebhookDelivery.event_seq)
)
# Recording a batch of results: the deliveries' state and their endpoints' (so an endpoint that is already
# active is not updated after every success), then one executemany per table.
_SETTLING = (
    select(
        WebhookDelivery.id,
        WebhookDelivery.status,
        WebhookDelivery.window_started_at,
        WebhookEndpoint.status.label("endpoint_status"),
    )
    .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
    .where(WebhookDelivery.id.in_(_IDS))
)
_ATTEMPTS = WebhookAttempt.__table__
_DELIVERIES = WebhookDelivery.__table__
_ADD_ATTEMPT = insert(_ATTEMPTS)
_ADD_DELIVERY = insert(_DELIVERIES)
_SETTLE = update(_DELIVERIES).where(_DELIVERIES.c.id == bindparam("delivery_id"))  # SET: the parameters' keys


@dataclass(frozen=True)
class Outgoing:
    """Everything one attempt needs, read while leasing it (no ORM object crosses threads)."""

    delivery_id: str
    endpoint_id: str
    attempt: int
    url: str
    secrets: tuple[str, ...]
    event_id: str
    body: bytes


def backoff_s(failures: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Delay after the ``failures``-th failed attempt: base·2^(failures-1), at most ``max_s``, ±25 % jitter
    (so receivers that failed together are not all retried in the same instant)."""
    delay = min(max_s, base_s * 2 ** max(0, failures - 1))
    return delay * (rng or random).uniform(0.75, 1.25)


class Dispatcher:
    def __init__(self, session_factory, settings) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.allow = parse_allow_list(settings.webhook_allow)
        self._thread_client = threading.local()
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=settings.webhook_concurrency, thread_name_prefix="l2-webhook")
        self.results: queue.Queue[tuple[Outgoing, AttemptResult]] = queue.Queue()
        self.in_flight = 0
        self.endpoint_in_flight: dict[str, int] = {}
        self.per_endpoint_limit = max(1, settings.webhook_concurrency // 2)

    # -- fan-out ----
    def fan_out(self, limit: int = FAN_OUT_BATCH) -> int:
        """Turn committed outbox events into deliveries; returns how many events it took."""
        taken = 0
        with self.session_factory() as session:
            events = session.execute(_UNDISPATCHED, {"limit": limit}).scalars().all()
            if not events:
                return 0
            now = utcnow()
            won = set(session.execute(_TAKE_EVENTS, {"ids": [e.seq for e in events], "now": now}).scalars())
            endpoints: dict[str, list] = {}
            last_progress: dict[str, datetime | None] = {}
            deliveries = []
            for event in events:
                if event.seq not in won:  # another dispatcher took it
                    continue
                taken += 1
                if event.tenant_id not in endpoints:
                    endpoints[event.tenant_id] = list(
                        session.execute(
                            select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == event.tenant_id)
                        ).scalars()
                    )
                for endpoint in endpoints[event.tenant_id]:
                    if endpoint.job_id is not None and endpoint.job_id != event.job_id:
                        continue
                    if endpoint.event_types and event.type not in endpoint.event_types:
                        continue
                    if event.type == "job.progress" and self._progress_throttled(
                        session, endpoint.id, now, last_progress
                    ):
                        continue
                    deliveries.append(
                        {
                            "id": new_id(),
                            "endpoint_id": endpoint.id,
                            "event_seq": event.seq,
                            "event_id": event.id,
                            "event_type": event.type,
                            "job_id": event.job_id,
                            "status": "pending",
                            "attempts": 0,
                            "next_attempt_at": now,
                            "window_started_at": now,
                            "created_at": now,
                        }
                    )
            if deliveries:  # one executemany for the whole batch
                session.execute(_ADD_DELIVERY, deliveries)
            self._add_mlflow_exports(
                session, [e for e in events if e.seq in won and e.type == "job.succeeded" and e.job_id], now
            )
            session.commit()
        return taken

    def _progress_throttled(self, session, endpoint_id: str, now: datetime, last: dict) -> bool:
        if endpoint_id not in last:
            last[endpoint_id] = session.execute(
                select(func.max(WebhookDelivery.created_at)).where(
                    WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.event_type == "job.progress"
                )
            ).scalar()
        previous = last[endpoint_id]
        if previous is not None:
            previous = previous if previous.tzinfo else previous.replace(tzinfo=now.tzinfo)
            if (now - previous).total_seconds() < self.settings.webhook_progress_interval_s:
                return True
        last[endpoint_id] = now
        return False

    def _add_mlflow_exports(self, session, succeeded: list[OutboxEvent], now: datetime) -> None:
        """An `MlflowExport` for each succeeded job whose own block, or its tenant's, says where to log."""
        if not succeeded:
            return
        job_ids = [e.job_id for e in succeeded]
        blocks = session.execute(
            select(Job.id, Job.tenant_id, Job.mlflow, Tenant.mlflow)
            .join(Tenant, Tenant.id == Job.tenant_id)
            .where(Job.id.in_(job_ids), (Job.mlflow.is_not(None)) | (Tenant.mlflow.is_not(None)))
        ).all()
        if not blocks:
            return
        exists = set(session.execute(select(MlflowExport.job_id).where(MlflowExport.job_id.in_(job_ids))).scalars())
        for job_id, tenant_id, job_block, tenant_block in blocks:
            config = job_block or tenant_block
            if config and job_id not in exists:
                session.add(
                    MlflowExport(
                        tenant_id=tenant_id,
                        job_id=job_id,
                        config=dict(config),
                        status="pending",
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                )

    # -- leasing due deliveries ----
    def lease(self, limit: int) -> list[Outgoing]:
        """Lease up to ``limit`` due deliveries whose earlier siblings (same endpoint and job) are done."""
        if limit <= 0:
            return []
        now = utcnow()
        lease_until = now + timedelta(seconds=self.settings.webhook_timeout_s + LEASE_MARGIN_S)
        with self.session_factory() as session:
            candidates = session.execute(_DUE, {"now": now, "limit": limit * 4}).all()
            ids = self._fair_share(candidates, limit)
            if not ids:
                return []
            leased = list(session.execute(_TAKE_DELIVERIES, {"ids": ids, "now": now, "until": lease_until}).scalars())
            rows = session.execute(_OUTGOING, {"ids": leased}).all() if leased else []
            session.commit()
        return [self._outgoing(row, now) for row in rows]

    def _fair_share(self, candidates, limit: int) -> list[str]:
        """At most ``per_endpoint_limit`` attempts in flight per endpoint, so one slow receiver cannot take
        every sending thread from the others."""
        counts = dict(self.endpoint_in_flight)
        ids = []
        for delivery_id, endpoint_id in candidates:
            if counts.get(endpoint_id, 0) >= self.per_endpoint_limit:
                continue
            counts[endpoint_id] = counts.get(endpoint_id, 0) + 1
            ids.append(delivery_id)
            if len(ids) >= limit:
                break
        return ids

    @staticmethod
    def _outgoing(row, now: datetime) -> Outgoing:
        secrets = [row.secret]
        expires = row.previous_secret_expires_at
        if row.previous_secret and expires is not None and _aware(expires, now) > now:
            secrets.append(row.previous_secret)
        return Outgoing(
            delivery_id=row.id,
            endpoint_id=row.endpoint_id,
            attempt=(row.attempts or 0) + 1,
            url=row.url,
            secrets=tuple(secrets),
            event_id=row.event_id,
            body=json.dumps(row.payload, separators=(",", ":"), ensure_ascii=False).encode(),
        )

    # -- one attempt (pool thread) ----
    def _client(self) -> httpx.Client:
        """The calling thread's own HTTP client. One client shared by every sending thread scanned all their
        connections (and polled each idle socket) for every request: ~400 connection checks per delivery at
        32 threads. A client per thread keeps at most one or two connections per endpoint."""
        client = getattr(self._thread_client, "client", None)
        if client is None:
            client = httpx.Client(follow_redirects=False, trust_env=False)
            self._thread_client.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def attempt(self, item: Outgoing) -> AttemptResult:
        try:
            target = check_url(item.url, self.allow)
        except UnsafeURL as exc:
            return AttemptResult(None, 0.0, None, str(exc))
        headers = sign_headers(list(item.secrets), item.event_id, int(utcnow().timestamp()), item.body)
        return post(
            self._client(),
            target,
            item.body,
            headers,
            timeout_s=self.settings.webhook_timeout_s,
            max_response_bytes=self.settings.webhook_max_response_bytes,
        )

    def _send(self, item: Outgoing) -> None:
        try:
            result = self.attempt(item)
        except Exception as exc:  # a bug must not lose the lease bookkeeping: it is a failed attempt
            log.exception("webhook delivery %s: unexpected error", item.delivery_id)
            result = AttemptResult(None, 0.0, None, f"internal error: {type(exc).__name__}: {exc}")
        self.results.put((item, result))

    # -- recording results (loop thread) ----
    def record(self, finished: list[tuple[Outgoing, AttemptResult]]) -> None:
        if not finished:
            return
        s = self.settings
        with self.session_factory() as session:
            now = utcnow()
            rows = session.execute(_SETTLING, {"ids": [item.delivery_id for item, _ in finished]}).all()
            current = {row.id: row for row in rows}
            attempts, changes = [], []
            recovered, failing = set(), set()
            for item, result in finished:
                row = current.get(item.delivery_id)
                if row is None or row.status != "pending":
                    continue  # deleted, or redelivered and already settled by another dispatcher
                attempts.append(
                    {
                        "id": new_id(),
                        "delivery_id": item.delivery_id,
                        "number": item.attempt,
                        "started_at": now - timedelta(milliseconds=result.latency_ms),
                        "status_code": result.status_code,
                        "latency_ms": result.latency_ms,
                        "response_snippet": result.snippet,
                        "error": result.error,
                    }
                )
                change = {
                    "delivery_id": item.delivery_id,
                    "attempts": item.attempt,
                    "leased_until": None,
                    "last_status_code": result.status_code,
                    "last_latency_ms": result.latency_ms,
                    "last_response": result.snippet,
                    "last_error": result.error,
                    "status": "pending",
                    "delivered_at": None,
                    "next_attempt_at": now,
                }
                window_end = _aware(row.window_started_at, now) + timedelta(seconds=s.webhook_retry_window_s)
                if result.ok:
                    change.update(status="succeeded", delivered_at=now)
                    if row.endpoint_status != "active":
                        recovered.add(item.endpoint_id)
                elif now >= window_end:
                    change["status"] = "failed"
                    failing.add(item.endpoint_id)
                else:
                    delay = backoff_s(item.attempt, s.webhook_retry_base_s, s.webhook_retry_max_s)
                    change["next_attempt_at"] = min(now + timedelta(seconds=delay), window_end)
                changes.append(change)
            if attempts:  # executemany: one statement each for the whole batch
                session.execute(_ADD_ATTEMPT, attempts)
                session.execute(_SETTLE, changes)
            if recovered - failing:  # a success clears the endpoint's failing mark
                session.execute(
                    update(WebhookEndpoint)
                    .where(WebhookEndpoint.id.in_(list(recovered - failing)), WebhookEndpoint.status != "active")
                    .values(status="active", failing_since=None)
                )
            if failing:
                session.execute(
                    update(WebhookEndpoint)
                    .where(WebhookEndpoint.id.in_(list(failing)), WebhookEndpoint.status != "failing")
                    .values(status="failing", failing_since=now)
                )
            session.commit()

    def _drain(self, wait_s: float) -> list[tuple[Outgoing, AttemptResult]]:
        finished = []
        try:
            finished.append(self.results.get(timeout=wait_s) if wait_s > 0 else self.results.get_nowait())
        except queue.Empty:
            return finished
        if self.in_flight > 1:
            time.sleep(BATCH_WAIT_S)  # let attempts finishing together be recorded in one transaction
        while True:
            try:
                finished.append(self.results.get_nowait())
            except queue.Empty:
                return finished

    # -- the loop ----
    def step(self, wait_s: float = 0.0) -> int:
        """One round: record finished attempts, fan out, lease and start what is due. Returns the number of
        attempts started."""
        self._settle(self._drain(wait_s))
        self.fan_out()
        free = self.settings.webhook_concurrency - self.in_flight
        outgoing = self.lease(free) if free > 0 else []
        for item in outgoing:
            self.in_flight += 1
            self.endpoint_in_flight[item.endpoint_id] = self.endpoint_in_flight.get(item.endpoint_id, 0) + 1
            self.pool.submit(self._send, item)
        return len(outgoing)

    def _settle(self, finished: list[tuple[Outgoing, AttemptResult]]) -> None:
        for item, _ in finished:
            self.in_flight -= 1
            left = self.endpoint_in_flight.get(item.endpoint_id, 1) - 1
            if left > 0:
                self.endpoint_in_flight[item.endpoint_id] = left
            else:
                self.endpoint_in_flight.pop(item.endpoint_id, None)
        self.record(finished)

    def prune(self) -> int:
        """Delete events (with their deliveries and attempts) older than ``webhook_retention_days`` once
        nothing about them is pending; returns how many."""
        cutoff = utcnow() - timedelta(days=self.settings.webhook_retention_days)
        pending = (
            select(WebhookDelivery.id)
            .where(WebhookDelivery.event_seq == OutboxEvent.seq, WebhookDelivery.status == "pending")
            .exists()
        )
        with self.session_factory() as session:
            deleted = session.execute(
                delete(OutboxEvent).where(
                    OutboxEvent.created_at < cutoff, OutboxEvent.dispatched_at.is_not(None), ~pending
                )
            ).rowcount
            session.commit()
        return deleted

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; database trouble is logged and retried on the next round."""
        poll = self.settings.webhook_poll_interval_s
        next_prune = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_prune:
                    self.prune()
                    next_prune = time.monotonic() + PRUNE_INTERVAL_S
                # A round starts when an attempt finishes (its result is recorded at once) or every ``poll``
                # seconds (new outbox events, retries coming due).
                self.step(wait_s=poll)
            except Exception:
                log.warning("webhook dispatcher round failed; retrying", exc_info=True)
                stop.wait(poll * 5)
        self.close()

    def drain_in_flight(self, timeout_s: float = 30.0) -> None:
        """Wait for started attempts and record them (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight > 0 and time.monotonic() < deadline:
            self._settle(self._drain(0.1))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


def _aware(value: datetime, like: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=like.tzinfo)
