"""Lab settings from the environment.

The embedded default keeps everything under one home directory (SQLite database, SQLite broker,
artifacts, a generated secret key), so `obow lab up` needs no other service. Production sets
DATABASE_URL (PostgreSQL), CELERY_BROKER_URL (Redis), ARTIFACT_ROOT (a directory shared by the API and
every worker) and OBOW_LAB_SECRET_KEY (shared by every API replica).
"""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    home: Path = Field(Path("lab-data"), validation_alias=AliasChoices("OBOW_LAB_HOME", "home"))
    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL", "database_url"))
    broker_url: str | None = Field(None, validation_alias=AliasChoices("CELERY_BROKER_URL", "broker_url"))
    artifact_root_dir: Path | None = Field(
        None, validation_alias=AliasChoices("ARTIFACT_ROOT", "artifact_root_dir")
    )
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("OBOW_LAB_HOST", "host"))
    port: int = Field(8000, validation_alias=AliasChoices("OBOW_LAB_PORT", "port"))
    secret_key_value: str | None = Field(
        None, validation_alias=AliasChoices("OBOW_LAB_SECRET_KEY", "secret_key_value")
    )
    max_upload_mb: float = Field(
        2048.0, gt=0, validation_alias=AliasChoices("OBOW_LAB_MAX_UPLOAD_MB", "max_upload_mb")
    )
    heartbeat_timeout_s: float = Field(
        300.0, gt=0, validation_alias=AliasChoices("OBOW_LAB_HEARTBEAT_TIMEOUT_S", "heartbeat_timeout_s")
    )
    cancel_grace_s: float = Field(
        5.0, ge=0, validation_alias=AliasChoices("OBOW_LAB_CANCEL_GRACE_S", "cancel_grace_s")
    )
    isolate_runs: bool = Field(True, validation_alias=AliasChoices("OBOW_LAB_ISOLATE_RUNS", "isolate_runs"))
    db_pool_size: int | None = Field(
        None, gt=0, validation_alias=AliasChoices("OBOW_LAB_DB_POOL_SIZE", "db_pool_size")
    )  # PostgreSQL connections the API keeps open (server.db.PG_POOL_SIZE when unset)
    sse_poll_s: float = Field(0.25, gt=0, validation_alias=AliasChoices("OBOW_LAB_SSE_POLL_S", "sse_poll_s"))

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'lab.db').resolve()}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.home / 'broker.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.artifact_root_dir or self.home / "artifacts").resolve()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @cached_property
    def secret_key(self) -> str:
        """The configured key, else one generated once and kept (mode 0600) in the lab's home."""
        if self.secret_key_value:
            return self.secret_key_value
        path = self.home / "secret_key"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process of the lab wrote it first
                pass
            else:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(32))
        return path.read_text().strip()


def get_settings() -> Settings:
    return Settings()
