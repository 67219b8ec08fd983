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
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("allowed_data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
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
