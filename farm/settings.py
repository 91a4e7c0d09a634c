"""Deployment settings from the environment (prefix `FARM_`): where Redis is, limits, knobs.

Never benchmark parameters: those live in the spec. One flat pydantic-settings class and a
cached getter that tests can clear (`get_settings.cache_clear()`).

URLs: `redis://[[user]:password@]host:port/db` or `rediss://...` for TLS (redis-py checks the
host name; `?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem` points at a private CA).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from farm.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FARM_", extra="ignore")

    # One Redis for broker and results; the two overrides split them.
    redis_url: str | None = None
    broker_url: str | None = None
    results_url: str | None = None
    key_prefix: str = Field(default="farm", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    home: Path | None = None  # data directory (embedded Redis, calibration cache)
    # The redis-server the embedded farm (and the tests) start; default: the newest found
    # (farm.cluster.redisproc.choose_server). A data directory's recorded server must be readable by it.
    redis_server: Path | None = None

    # Time limits (seconds): soft < hard < visibility timeout, checked at start-up.
    task_soft_time_limit: float = Field(default=3300.0, gt=0)
    task_time_limit: float = Field(default=3600.0, gt=0)
    visibility_timeout: float = Field(default=4000.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=100)  # deliveries before a job is quarantined

    heartbeat_interval: float = Field(default=5.0, gt=0)
    heartbeat_ttl: float = Field(default=20.0, gt=0)
    # The machine tag a worker reports (`cpu:<machine>`, its results' machine) instead of the one its
    # host name gives: a second tag on one host tries a two-machine lab on one box (`farm worker --machine`).
    machine: str | None = Field(default=None, pattern=r"^[a-z0-9_-]{1,63}$")
    webhook_url: str | None = None  # POSTed a JSON message per detected regression
    publish_dir: Path | None = None  # `farm publish` into this directory after every schedule firing

    @model_validator(mode="after")
    def _limits_ordered(self) -> Settings:
        if not self.task_soft_time_limit < self.task_time_limit:
            raise ValueError(
                f"FARM_TASK_SOFT_TIME_LIMIT ({self.task_soft_time_limit}) must be below "
                f"FARM_TASK_TIME_LIMIT ({self.task_time_limit})"
            )
        if not self.task_time_limit < self.visibility_timeout:
            raise ValueError(
                f"FARM_TASK_TIME_LIMIT ({self.task_time_limit}) must be below FARM_VISIBILITY_TIMEOUT "
                f"({self.visibility_timeout}), or a running job is redelivered to a second worker"
            )
        for name in ("redis_url", "broker_url", "results_url"):
            url = getattr(self, name)
            if url is not None and not re.match(r"^(redis|rediss|unix)://", url):
                raise ValueError(f"FARM_{name.upper()} must start with redis://, rediss:// or unix://")
        return self

    def broker(self) -> str | None:
        return self.broker_url or self.redis_url

    def results(self) -> str | None:
        return self.results_url or self.redis_url


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment; a ConfigError if invalid."""
    try:
        return Settings()
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"FARM_{field.upper()}: {msg}" if field else msg) from None


def mask_url(url: str | None) -> str:
    """A URL with every secret replaced by ***, for logs, errors and reports.

    The user-info ends at the *last* `@` before the host (a password may contain `@`); a lone
    user-info (`redis://secret@host`) is masked too, since redis-py reads it as a password for
    some schemes. Query parameters naming a secret (`password`, `ssl_password`, `ssl_key_password`,
    `token`, `secret`, ...) are masked.
    """
    if not url:
        return "-"
    # Up to the last `@` before any query: a password with an unescaped `/` still counts as one.
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^?#]*@[^/?#]*|[^/?#]*)(.*)$", url, flags=re.DOTALL)
    if m:
        scheme, netloc, rest = m.groups()
        info, at, host = netloc.rpartition("@")
        if at:
            user, colon, _password = info.partition(":")
            netloc = f"{user}:***@{host}" if colon else f"***@{host}"
        url = scheme + netloc + rest
    return _SECRET_PARAM.sub(r"\1***", url)


_SECRET_PARAM = re.compile(r"([?&;][^=&#]*(?:password|passwd|secret|token)[^=&#]*=)[^&#]*", flags=re.IGNORECASE)
