"""Settings, read once from the environment (prefix FARMSTEAD_) and passed down."""

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./farmstead.db"


class Settings(BaseSettings):
    """Everything the server reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="FARMSTEAD_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    #: seconds a transition waits for a row lock before answering 503
    lock_timeout: float = Field(5.0, gt=0)
    pool_size: int = Field(20, ge=1)
    #: steps per array batch when a workflow is submitted (a Slurm array per batch)
    array_batch_size: int = Field(1000, ge=1, le=1_000_000)
    max_tasks_per_request: int = Field(1_000_000, ge=1)
    #: largest request body accepted, bytes (Content-Length or streamed); larger: 413
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    #: deepest nesting of arrays and objects accepted in a JSON body; deeper: 422
    max_json_depth: int = Field(32, ge=4, le=256)
    default_max_attempts: int = Field(3, ge=1)
    #: heartbeat interval the server asks workers for, seconds
    heartbeat_interval: float = Field(30.0, gt=0)
    #: a deadline is interval x buffer after the report (Jobmon's report_by_buffer)
    report_by_buffer: float = Field(3.1, ge=1)
    reconciler_interval: float = Field(10.0, gt=0)
    reconciler_enabled: bool = True
    #: rows per reconciler statement (at most 10,000: a statement binds 2 values per row)
    reconciler_chunk: int = Field(5000, ge=1, le=10_000)
    #: seconds an instance may stay TRIAGING before it is declared UNKNOWN_ERROR
    triage_grace: float = Field(60.0, ge=0)
    #: seconds an instance may stay INSTANTIATED before it is declared NO_DISTRIBUTOR_ID
    launch_timeout: float = Field(600.0, gt=0)
    #: LAUNCHED instances are declared NO_HEARTBEAT only once launched at least this long
    no_heartbeat_min_age: float = Field(60.0, ge=0)
    #: seconds a KILL_SELF instance has to report before it is declared ERROR_FATAL
    kill_self_timeout: float = Field(120.0, gt=0)
    #: seconds between reads of new events while someone follows the stream (one reader per
    #: server process, however many subscribers)
    event_poll_interval: float = Field(0.25, gt=0, le=10)
    #: seconds events are kept (the reconciler removes older ones in chunks); 0: for ever
    event_retention: float = Field(30 * 86400.0, ge=0)
    #: publish every event in Celery's event message format to this broker too (RabbitMQ
    #: `amqp://…`, Redis `redis://…`), for Celery's own consumers (Flower, HySDS); off if unset
    celery_broker_url: str | None = None
    #: the exchange Celery's event consumers read (Celery's `event_exchange`)
    celery_event_exchange: str = Field("celeryev", min_length=1, max_length=255)
    #: seconds without a heartbeat or a claim after which an agent is declared offline
    agent_offline_after: float = Field(120.0, gt=0)
    local_workers: int = Field(0, ge=0, le=1024)
    #: how the local executor runs instances: in this process, or one worker process each
    local_mode: Literal["coroutine", "subprocess"] = "coroutine"
    #: seconds a local command has after SIGTERM (shutdown, cancel) before SIGKILL
    shutdown_grace: float = Field(10.0, ge=0, le=3600)
    #: on shutdown, let running local commands finish instead of stopping them
    drain: bool = False
    log_level: str = "info"
    #: "text", or "json": one JSON object a line (time, level, logger, request_id, message)
    log_format: Literal["text", "json"] = "text"
    #: require a token (or user and password) on every route but /health, /ready and the docs
    auth: bool = True
    #: networks whose requests may use the worker-node routes without credentials (Jobmon's
    #: worker sends none); [] to require a worker token there too
    trusted_networks: list[str] = ["127.0.0.1/32", "::1/128"]
    #: Host header values accepted (DNS rebinding); empty: the bound host and localhost names;
    #: ["*"]: any
    allowed_hosts: list[str] = []
    #: browser origins allowed to call the API cross-site (CORS); none by default
    cors_origins: list[str] = []
    #: where `farmstead serve` writes the first admin token and the CLI looks for it
    credentials_file: Path | None = None
    #: seconds a resolved token is trusted before it is looked up again (revocation delay)
    token_cache_seconds: float = Field(5.0, ge=0, le=300)

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "database_url must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return value

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"{net!r} is not a network (e.g. 10.0.0.0/8)") from exc
        return value

    @model_validator(mode="after")
    def _no_open_server_without_auth(self) -> "Settings":
        if not self.auth and not is_loopback(self.host):
            raise ValueError(
                f"auth is off and host is {self.host}: the server would be open to anyone who "
                "can reach it; turn auth on or listen on 127.0.0.1"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite default."""
        return self.database_url.startswith("sqlite")

    @property
    def report_increment(self) -> float:
        """Seconds between a report and its deadline, as Jobmon's workers compute it."""
        return self.heartbeat_interval * self.report_by_buffer


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
