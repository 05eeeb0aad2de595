"""Lab settings from the environment.

The embedded default keeps everything under one home directory (SQLite database, SQLite broker,
artifacts, a generated secret key), so `obow lab up` needs no other service. Production sets
DATABASE_URL (PostgreSQL), CELERY_BROKER_URL (Redis), ARTIFACT_ROOT (a directory shared by the API and
every worker) and OBOW_LAB_SECRET_KEY (shared by every API replica).
"""

from __future__ import annotations

import os
import secrets
import socket
from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict


class _DocumentedNamesOnly(EnvSettingsSource):
    """Environment variables under their documented names only (`OBOW_LAB_HOME`, `DATABASE_URL`, ...).

    Field names (home, host, port) are accepted as keyword arguments, but as environment variables
    they would be HOME, HOST and PORT, which other programs set: the lab's data went to $HOME."""

    def _extract_field_info(self, field: FieldInfo, field_name: str, model_config=None):
        config = {**(model_config or self.config), "populate_by_name": False, "validate_by_name": False}
        return super()._extract_field_info(field, field_name, config)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, case_sensitive=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _DocumentedNamesOnly(settings_cls)

    home: Path = Field(Path("lab-data"), validation_alias=AliasChoices("OBOW_LAB_HOME"))
    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL"))
    broker_url: str | None = Field(None, validation_alias=AliasChoices("CELERY_BROKER_URL"))
    artifact_root_dir: Path | None = Field(
        None, validation_alias=AliasChoices("ARTIFACT_ROOT")
    )
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("OBOW_LAB_HOST"))
    port: int = Field(8000, validation_alias=AliasChoices("OBOW_LAB_PORT"))
    secret_key_value: str | None = Field(
        None, validation_alias=AliasChoices("OBOW_LAB_SECRET_KEY")
    )
    max_upload_mb: float = Field(
        2048.0, gt=0, validation_alias=AliasChoices("OBOW_LAB_MAX_UPLOAD_MB")
    )
    heartbeat_timeout_s: float = Field(
        300.0, gt=0, validation_alias=AliasChoices("OBOW_LAB_HEARTBEAT_TIMEOUT_S")
    )
    cancel_grace_s: float = Field(
        5.0, ge=0, validation_alias=AliasChoices("OBOW_LAB_CANCEL_GRACE_S")
    )
    isolate_runs: bool = Field(True, validation_alias=AliasChoices("OBOW_LAB_ISOLATE_RUNS"))
    # a running attempt samples CPU/memory of its processes and its GPUs this often (`sys/...` metrics);
    # 0 turns the sampler off
    system_metrics_s: float = Field(
        5.0, ge=0, le=3600, validation_alias=AliasChoices("OBOW_LAB_SYSTEM_METRICS_S")
    )
    db_pool_size: int | None = Field(
        None, gt=0, validation_alias=AliasChoices("OBOW_LAB_DB_POOL_SIZE")
    )  # PostgreSQL connections the API keeps open (server.core.db.PG_POOL_SIZE when unset)
    # SSE streams wake when their run's rows change (PostgreSQL LISTEN/NOTIFY, in-process commits, the
    # SQLite file watch); this is only the safety net: a stream re-reads this often on its own.
    sse_poll_s: float = Field(2.0, gt=0, validation_alias=AliasChoices("OBOW_LAB_SSE_POLL_S"))
    # reads (API GETs, SSE, downloads, pages) need a token or a session unless this is set
    public_read: bool = Field(False, validation_alias=AliasChoices("OBOW_LAB_PUBLIC_READ"))
    allowed_hosts_value: str | None = Field(None, validation_alias=AliasChoices("OBOW_LAB_ALLOWED_HOSTS"))
    session_hours: float = Field(
        12.0, gt=0, le=24 * 366, validation_alias=AliasChoices("OBOW_LAB_SESSION_HOURS")
    )
    max_body_kb: float = Field(256.0, gt=0, validation_alias=AliasChoices("OBOW_LAB_MAX_BODY_KB"))
    # free space a run leaves on the artifact disk and the SQLite database's disk: below it the run stops
    # with a clear error while there is still room to record that error (a full database disk cannot)
    min_free_mb: float = Field(100.0, ge=0, validation_alias=AliasChoices("OBOW_LAB_MIN_FREE_MB"))

    data_roots_value: str | None = Field(None, validation_alias=AliasChoices("OBOW_LAB_DATA_ROOTS"))
    cache_roots_value: str | None = Field(None, validation_alias=AliasChoices("OBOW_LAB_CACHE_ROOTS"))

    @property
    def data_roots(self) -> list[Path]:
        """Folders a spec's data paths may point into (`OBOW_LAB_DATA_ROOTS`, `:`-separated); default:
        the built-in datasets and `<home>/data`. Resolved, symlinks followed."""
        if self.data_roots_value:
            return _roots(self.data_roots_value)
        return [Path(BUILTIN_DATA_ROOT).resolve(), (self.home / "data").resolve()]

    @property
    def cache_roots(self) -> list[Path]:
        """Where an absolute feature-cache folder may be (`OBOW_LAB_CACHE_ROOTS`); default `<home>/cache`.
        A relative one lies inside the run's own folder."""
        return _roots(self.cache_roots_value) if self.cache_roots_value else [(self.home / "cache").resolve()]

    @property
    def allowed_hosts(self) -> list[str]:
        """Host header values the server answers (`OBOW_LAB_ALLOWED_HOSTS`, comma-separated, `*` for any);
        default: localhost, 127.0.0.1, ::1 and the bind host. A page of another site that a DNS-rebinding
        attack pointed at this address sends its own name, which is not among them. IP literals are
        always accepted (`server.api.guards`): no DNS name is involved, so nothing can be rebound."""
        if self.allowed_hosts_value:
            return [part.strip().lower() for part in self.allowed_hosts_value.split(",") if part.strip()]
        names = {"localhost", "127.0.0.1", "::1", self.host.lower()}
        if self.host in ("0.0.0.0", "::", ""):  # every interface: also the machine's own name
            names.add(socket.gethostname().lower())
        return sorted(names)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_kb * 1024)

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
    def watched_disks(self) -> list[Path]:
        """Folders whose filesystem a run writes to: the artifact root, and the SQLite database's folder."""
        disks = [self.artifact_root]
        if self.db_url.startswith("sqlite:///") and not self.db_url.endswith(":memory:"):
            disks.append(Path(self.db_url.removeprefix("sqlite:///")).parent)
        return disks

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


BUILTIN_DATA_ROOT = "/usr/share/datasets"  # Debian's dataset packages (Fashion-MNIST)


def _roots(value: str) -> list[Path]:
    return [Path(part).expanduser().resolve() for part in value.split(":") if part.strip()]


def get_settings() -> Settings:
    return Settings()
