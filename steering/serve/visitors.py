"""Who a request comes from, and what each visitor may spend.

A visitor is a client address (an IPv6 client by its /64 network: one host owns the whole
network), or, where the host sets API keys, the key. The forwarded address
(``X-Forwarded-For``) counts only when the connection comes from a trusted proxy, and then the
right-most address that is not itself a trusted proxy is the client (the left part of the
header is whatever the client wrote).

Each visitor has two token buckets, refilled continuously: requests (``max_requests_per_minute``)
and tokens (``max_tokens_per_minute``, prompt and reply tokens of every row, counted when a
reply ends, so the bucket may go below zero and the visitor then waits until it refills); and a
cap on requests in flight (``max_in_flight``). Each bucket holds a minute's worth, so a burst
may spend it at once. A refusal is a 429 in OpenAI's shape with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import SteeringError
from ..limits import Limits
from .api_errors import ApiError, retry_after

if TYPE_CHECKING:
    from fastapi import Request

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Access:
    """What a host sets about its visitors: ``trusted_proxies`` (addresses or networks whose
    ``X-Forwarded-For`` names the client) and ``api_keys`` (when given, every ``/v1`` request
    needs ``Authorization: Bearer KEY`` with one of them, and the key is the visitor)."""

    trusted_proxies: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        networks = []
        for proxy in self.trusted_proxies:
            try:
                networks.append(ipaddress.ip_network(proxy.strip(), strict=False))
            except ValueError:
                raise SteeringError(
                    f"trusted proxy {proxy!r} is not an IP address or network (e.g. 10.0.0.5 "
                    "or 10.0.0.0/8)"
                ) from None
        object.__setattr__(self, "networks", tuple(networks))
        if any(not key.strip() for key in self.api_keys):
            raise SteeringError("an API key must not be empty")

    def trusts(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self.networks)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address.strip())
    except ValueError:
        return None


def client_address(peer: str, forwarded_for: str | None, access: Access) -> str:
    """The client's address: the connection's ``peer``, or, when the peer is a trusted proxy,
    the right-most address of ``forwarded_for`` that is not a trusted proxy."""
    if not forwarded_for or not access.trusts(peer):
        return peer
    client = peer
    for hop in reversed(forwarded_for.split(",")):
        if _ip(hop) is None:
            break  # not an address: nothing left of it can be trusted
        client = hop.strip()
        if not access.trusts(client):
            break
    return client


def visitor_key(address: str) -> str:
    """The visitor an address belongs to: the address, or its /64 network for IPv6."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return f"ip:{ipaddress.ip_network(f'{ip}/64', strict=False)}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"ip:{ip.ipv4_mapped}"
    return f"ip:{ip if ip is not None else address[:100]}"


class TokenBucket:
    """``capacity`` tokens, refilled at ``capacity`` per minute; may go below zero."""

    def __init__(self, capacity: float, now: float) -> None:
        self.capacity, self.level, self.at = float(capacity), float(capacity), now

    def refill(self, now: float) -> float:
        self.level = min(self.capacity, self.level + (now - self.at) * self.capacity / 60.0)
        self.at = now
        return self.level

    def wait(self, need: float, now: float) -> float:
        """Seconds until the bucket holds ``need`` tokens (0: now)."""
        missing = min(need, self.capacity) - self.refill(now)
        return max(0.0, missing * 60.0 / self.capacity)


@dataclass
class _Visitor:
    requests: TokenBucket
    tokens: TokenBucket
    in_flight: int = 0


class Ticket:
    """One admitted request: ``release`` (once, idempotent) ends it and charges ``tokens``."""

    def __init__(self, visitors: Visitors, visitor: str) -> None:
        self.visitors, self.visitor, self.tokens = visitors, visitor, 0
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.visitors._release(self.visitor, self.tokens)


class Visitors:
    """Identity and per-visitor limits for the API (thread-safe). ``clock`` is for tests."""

    PRUNE_AT = 1024  # visitors remembered before idle ones (full buckets, nothing in flight) go

    def __init__(
        self,
        limits: Limits,
        access: Access = Access(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits, self.access, self.clock = limits, access, clock
        self._visitors: dict[str, _Visitor] = {}
        self._lock = threading.Lock()
        self._prune_at = self.PRUNE_AT

    def identify(self, request: Request) -> str:
        """The visitor ``request`` comes from; ``ApiError`` 401 when the host sets API keys and
        the request has none of them."""
        if self.access.api_keys:
            return self._key_visitor(request.headers.get("authorization", ""))
        peer = request.client.host if request.client else ""
        address = client_address(peer, request.headers.get("x-forwarded-for"), self.access)
        return visitor_key(address)

    def _key_visitor(self, authorization: str) -> str:
        scheme, _, given = authorization.partition(" ")
        key = given.strip().encode("utf-8", "replace")
        valid = scheme.lower() == "bearer" and any(
            hmac.compare_digest(key, known.encode()) for known in self.access.api_keys
        )
        if not valid:
            raise ApiError(
                401,
                "this server needs an API key: send Authorization: Bearer KEY with a key its "
                "host gave you",
                code="invalid_api_key",
            )
        return "key:" + hashlib.sha256(key).hexdigest()[:16]

    def admit(self, visitor: str) -> Ticket:
        """Count one request of ``visitor`` in; ``ApiError`` 429 (with ``Retry-After``) when
        it has ``max_in_flight`` requests in flight, or its request or token bucket is empty."""
        limits, now = self.limits, self.clock()
        with self._lock:
            state = self._visitors.get(visitor)
            if state is None:
                self._prune(now)
                state = _Visitor(
                    TokenBucket(limits.max_requests_per_minute, now),
                    TokenBucket(limits.max_tokens_per_minute, now),
                )
                self._visitors[visitor] = state
            if state.in_flight >= limits.max_in_flight:
                raise _too_many(
                    f"you have {state.in_flight} requests in flight, at most "
                    f"{limits.max_in_flight} (max_in_flight); wait for one to end",
                    1.0,
                    "requests",
                )
            token_wait = state.tokens.wait(1.0, now)  # any tokens left: the reply is charged
            if token_wait > 0:
                raise _too_many(
                    f"you have used your {limits.max_tokens_per_minute} tokens a minute "
                    "(max_tokens_per_minute)",
                    token_wait,
                    "tokens",
                )
            request_wait = state.requests.wait(1.0, now)
            if request_wait > 0:
                raise _too_many(
                    f"you have made your {limits.max_requests_per_minute} requests a minute "
                    "(max_requests_per_minute)",
                    request_wait,
                    "requests",
                )
            state.requests.level -= 1.0
            state.in_flight += 1
        return Ticket(self, visitor)

    def _release(self, visitor: str, tokens: int) -> None:
        with self._lock:
            state = self._visitors.get(visitor)
            if state is not None:
                state.in_flight -= 1
                state.tokens.refill(self.clock())
                state.tokens.level -= tokens

    def _prune(self, now: float) -> None:
        if len(self._visitors) < self._prune_at:
            return
        idle = [key for key, state in self._visitors.items() if _idle(state, now)]
        for key in idle:
            del self._visitors[key]
        self._prune_at = max(self.PRUNE_AT, 2 * len(self._visitors))

    def in_flight(self) -> int:
        """Requests admitted and not yet released, over all visitors."""
        with self._lock:
            return sum(state.in_flight for state in self._visitors.values())


def _idle(state: _Visitor, now: float) -> bool:
    full = state.requests.refill(now) >= state.requests.capacity
    return state.in_flight == 0 and full and state.tokens.refill(now) >= state.tokens.capacity


def _too_many(message: str, wait: float, kind: str) -> ApiError:
    headers = retry_after(wait)
    message = f"rate limit reached: {message}; try again in {headers['Retry-After']} s"
    return ApiError(429, message, code="rate_limit_exceeded", kind=kind, headers=headers)
