"""Reaching Redis, and the one translation of its failures: `connect` (a farm URL to a client),
`_binary` (its twin that returns bytes, for packed results), `broker_error` and the `_redis`
decorator every store method that talks to Redis wears. Every Redis failure becomes a `BrokerError`
here (`BrokerUnavailable` when Redis cannot be reached), so callers never see redis-py's exceptions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import redis

from farm.errors import BrokerError, BrokerUnavailable

SOCKET_TIMEOUT_S = 30.0  # a command without an answer for this long: Redis is unreachable (see connect)

P = ParamSpec("P")
T = TypeVar("T")


def broker_error(e: redis.RedisError) -> BrokerError:
    """The farm's error for a redis-py exception: the one translation, used by the store and its callers."""
    if isinstance(e, redis.AuthenticationError) or (
        isinstance(e, redis.ResponseError) and ("NOAUTH" in str(e) or "WRONGPASS" in str(e))
    ):
        return BrokerError(f"Redis refused the credentials: {e}")
    if isinstance(e, redis.ConnectionError | redis.TimeoutError):
        return BrokerUnavailable(f"cannot reach Redis: {e}")
    if isinstance(e, redis.ResponseError):
        return BrokerError(f"Redis refused a command (a key of the wrong type or a read-only replica?): {e}")
    return BrokerError(f"Redis failed: {e}")


def _redis(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorate a store method: any redis-py exception leaves it as a `BrokerError`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as e:
            raise broker_error(e) from None

    return wrapper


def connect(url: str) -> redis.Redis:
    """A redis-py client for a farm URL (redis://, rediss:// with TLS, user:password@).

    `socket_timeout`: a Redis host cut off without a TCP reset (a network partition) makes a read
    fail after SOCKET_TIMEOUT_S (BrokerUnavailable, which `wait` rides out for a while) instead of
    blocking until the link comes back. The store issues no blocking commands, and its largest
    script (a report's fetch of 1,000 summaries) takes milliseconds.
    """
    try:
        return redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, socket_timeout=SOCKET_TIMEOUT_S,
            socket_keepalive=True, health_check_interval=30,
        )  # fmt: skip
    except ValueError as e:
        raise BrokerError(f"invalid Redis URL: {e}") from None


def _binary(client: Any) -> Any:
    """A client on the same server and settings as `client` that returns bytes (for packed results)."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
