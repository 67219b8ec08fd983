"""The service's settings: one pydantic-settings class, read from ``L2_*`` environment variables (or a
``.env`` file), validated at start-up so a bad value fails fast with the variable's name.

With nothing set this is the embedded default: a SQLite database and a SQLite message broker (kombu's
SQLAlchemy transport) under ``data_dir``, so ``l2 serve`` runs without any server. Production sets
``L2_DATABASE_URL`` (PostgreSQL) and ``L2_BROKER_URL`` (Redis).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from store.url_guard import parse_allow_list

GiB = 1024**3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="L2_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="uploads, registered data and .l2 artifacts live here")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///<data_dir>/l2.db")
    broker_url: str = Field("", description="Celery broker; default sqla+sqlite:///<data_dir>/broker.db")
    result_backend: str | None = Field(
        None, description="Celery result backend (unused by default: the job row is the result)"
    )
    max_upload_bytes: int = Field(
        2 * GiB, gt=0, description="largest accepted upload (checkpoint or dataset)"
    )
    allowed_data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="server folders calibration data may be registered from by path (a JSON list or "
        "comma-separated); empty: none",
    )
    auth_enabled: bool = Field(True, description="require an API key; off is only sensible on localhost")
    default_tenant: str = Field("local", description="tenant that owns everything when auth is off")
    gpu_workers: bool = Field(False, description="jobs with device 'auto' go to the gpu queue when true")
    progress_min_interval_s: float = Field(1.0, ge=0, description="least seconds between progress row writes")
    # -- per-tenant limits and resumable uploads (0 turns a limit off) --
    rate_limit_per_window: int = Field(
        1200, ge=0, description="requests a tenant may make per rate-limit window (429 + Retry-After beyond)"
    )
    rate_limit_window_s: float = Field(60.0, gt=0, description="length of the rate-limit window in seconds")
    max_concurrent_jobs: int = Field(
        50, ge=0, description="queued + running jobs a tenant may have at once (429 beyond)"
    )
    max_stored_bytes: int = Field(
        500 * GiB,
        ge=0,
        description="bytes a tenant may store: checkpoints, uploaded datasets, artifacts and unfinished "
        "resumable uploads (413 beyond)",
    )
    upload_expiry_s: float = Field(
        24 * 3600.0, gt=0, description="an unfinished resumable upload untouched this long is deleted"
    )
    # -- events out of the service: webhooks and MLflow (issue 11) --
    webhook_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hosts, addresses or networks (CIDR) webhooks may reach although they are loopback, "
        "link-local, private or metadata addresses (a JSON list or comma-separated); empty: none",
    )
    webhook_dispatch: bool = Field(True, description="workers deliver webhooks and MLflow exports")
    webhook_timeout_s: float = Field(10.0, gt=0, le=300, description="seconds one delivery may take")
    webhook_max_response_bytes: int = Field(
        64 * 1024, ge=0, description="bytes of a receiver's answer read (the rest is not read)"
    )
    webhook_retry_base_s: float = Field(5.0, gt=0, description="delay before the first retry; doubles each time")
    webhook_retry_max_s: float = Field(3600.0, gt=0, description="longest delay between two retries")
    webhook_retry_window_s: float = Field(
        24 * 3600.0, gt=0, description="retry a delivery this long, then give up and mark the endpoint failing"
    )
    webhook_progress_interval_s: float = Field(
        5.0, ge=0, description="least seconds between two job.progress deliveries to one endpoint"
    )
    webhook_poll_interval_s: float = Field(0.2, gt=0, description="how often the dispatcher looks for work")
    webhook_concurrency: int = Field(32, ge=1, le=256, description="deliveries one dispatcher sends at once")
    webhook_retention_days: float = Field(
        30.0, gt=0, description="events, deliveries and their log are kept this long once settled"
    )
    # -- worker liveness and recovery (issue 12) --
    worker_heartbeat_s: float = Field(
        5.0, gt=0, description="seconds between a worker's liveness reports; /readyz counts a worker alive for 3"
    )
    sweep_interval_s: float = Field(
        30.0, gt=0, description="how often each worker looks for abandoned jobs and lost broker messages"
    )
    lost_message_after_s: float = Field(
        300.0, gt=0, description="a job queued this long with no message for it in the broker is published again"
    )
    supervisor_pid: int = Field(
        0, ge=0, description="set by 'l2 serve' / 'l2 worker' for the Celery worker they run: it stops when that "
        "process is gone (0: not supervised)"
    )
    worker_nice: int = Field(
        0, ge=0, le=19, description="niceness added to the process computing a job, so that an API on the same "
        "machine answers first; 'l2 serve' uses 10 for its worker"
    )
    worker_torch_threads: int = Field(
        0, ge=0, description="torch threads of the process computing a job; 0: torch's default (every core), "
        "except under 'l2 serve', which leaves one core to the API"
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    # -- web UI (api/ui) --
    ui_enabled: bool = Field(True, description="serve the web page under /ui (and redirect / there)")
    ui_secret: str = Field(
        "", description="key that signs web UI session cookies; empty: a random key kept in <data_dir>/ui_secret"
    )
    ui_session_hours: float = Field(8.0, gt=0, le=24 * 30, description="how long a web UI login lasts")

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("allowed_data_roots", "webhook_allow", mode="before")
    @classmethod
    def _split_list(cls, value):
        """A list from the environment: a JSON array, or comma-separated items."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("webhook_allow")
    @classmethod
    def _valid_allow(cls, value: list[str]) -> list[str]:
        parse_allow_list(value)  # checks each entry, naming a bad one
        return value

    @field_validator("allowed_data_roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        roots = [Path(v).expanduser() for v in value]
        relative = [str(r) for r in roots if not r.is_absolute()]
        if relative:
            raise ValueError(f"allowed_data_roots must be absolute paths; got {relative}")
        return [r.resolve() for r in roots]

    @model_validator(mode="after")
    def _defaults_under_data_dir(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'l2.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.db'}"
        return self


@lru_cache
def get_settings() -> Settings:
    """The process's settings (cached: read the environment once)."""
    return Settings()
