"""Outbound allowlist for ``fhirServer`` and ``jku`` URLs (SSRF guard).

Implements the ``FHIR_SERVICE_FHIR_SERVER_ALLOWLIST`` setting (README "Settings") and the
outbound-call controls of ``docs/deployment.md``; the attacks it stops are in ``tests/security``.

URLs are parsed with :class:`httpx.URL`, the parser the outbound client itself uses, so the
origin that is checked is the origin that is called (no parser differential). An explicit entry
``scheme://host[:port][/path]`` matches on origin (scheme, IDNA-normalised host, port; an entry
without a port matches every port of its host) and on a path prefix ending at a ``/`` boundary.
A URL matched by an explicit entry may be ``http://`` or a loopback/private address (test
doubles). ``*`` admits any other ``https://`` URL whose host has only public addresses.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httpx

Resolver = Callable[[str], list[str]]
"""Host name -> IP address strings (the default uses :func:`socket.getaddrinfo`)."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
# WHATWG URL: a host whose last label is a number is an IPv4 address in some notation
# (``2130706433``, ``0x7f000001``, ``127.1``, ``0177.0.0.1``); inet_aton-based resolvers agree.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class OutboundRefused(Exception):
    """An outbound URL the allowlist does not admit.

    Attributes:
        reason: Short, log-safe reason (never a token; the URL itself is not repeated).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def default_resolver(host: str) -> list[str]:
    """Resolve ``host`` with :func:`socket.getaddrinfo` (blocking).

    Args:
        host: An ASCII host name.

    Returns:
        The IP address strings the host resolves to.
    """
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class _Target:
    """The parts of a URL that decide admission."""

    scheme: str
    host: str  # ASCII (IDNA), lower case, no brackets, no trailing dot
    port: int  # effective port (default port filled in)
    path: str  # raw (percent-encoded) path, no query


@dataclass(frozen=True)
class _Entry:
    """One explicit allowlist entry."""

    scheme: str
    host: str
    port: int | None
    path: str  # "" when the entry has no path

    def matches(self, target: _Target) -> bool:
        if target.scheme != self.scheme or target.host != self.host:
            return False
        if self.port is not None and target.port != self.port:
            return False
        if not self.path:
            return True
        return target.path == self.path or target.path.startswith(self.path + "/")


def _parse(url: str) -> _Target:
    """Parse ``url`` as httpx will, refusing shapes that are never admitted.

    Raises:
        OutboundRefused: Unparseable URL, scheme other than http(s), userinfo, empty or
            malformed host, port out of range, or a dot segment in the path.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise OutboundRefused("unparseable URL") from None
    if parsed.scheme not in _DEFAULT_PORTS:
        raise OutboundRefused("scheme is not http or https")
    if parsed.userinfo:
        raise OutboundRefused("userinfo in URL")
    host = parsed.raw_host.decode("ascii").lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise OutboundRefused("empty host")
    if ":" in host:
        if "%" in host or _ip_literal(host) is None:
            raise OutboundRefused("malformed host")
    elif not _HOST_NAME.match(host):
        raise OutboundRefused("malformed host")
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS[parsed.scheme]
    if not 0 < port < 65536:
        raise OutboundRefused("port out of range")
    path = parsed.raw_path.split(b"?", 1)[0].decode("ascii")
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        raise OutboundRefused("dot segment in path")
    return _Target(parsed.scheme, host, port, path)


def _parse_entry(entry: str) -> _Entry:
    try:
        target = _parse(entry)
        explicit_port = urlsplit(entry).port
    except OutboundRefused as exc:
        raise ValueError(f"invalid allowlist entry {entry!r}: {exc.reason}") from None
    if "?" in entry or "#" in entry:
        raise ValueError(f"invalid allowlist entry {entry!r}: query or fragment")
    return _Entry(target.scheme, target.host, explicit_port, target.path.rstrip("/"))


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64, compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is a public unicast address (§2.3 control 3).

    Refuses loopback, link-local (169.254/16, fe80::/10), private (RFC 1918, fc00::/7),
    0.0.0.0/8, unspecified, multicast, reserved and shared (100.64/10) addresses, and IPv6
    forms that embed one of these (IPv4-mapped, 6to4, Teredo, NAT64, IPv4-compatible).

    Args:
        address: The address to classify.

    Returns:
        True only for a globally routable unicast address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and not is_public_address(embedded):
            return False
    return not (
        not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
    )


class Allowlist:
    """Decides which outbound URLs may be called (README "Settings").

    Args:
        entries: ``*`` and/or ``scheme://host[:port][/path]`` entries. Empty: nothing admitted.
        resolver: Host -> IP strings, used only for URLs that only ``*`` could admit.

    Raises:
        ValueError: An entry is neither ``*`` nor a valid ``scheme://host[:port][/path]``.
    """

    def __init__(self, entries: Sequence[str], resolver: Resolver | None = None) -> None:
        cleaned = [e.strip() for e in entries if e.strip()]
        self._wildcard = "*" in cleaned
        self._entries = tuple(_parse_entry(e) for e in cleaned if e != "*")
        self._resolver: Resolver = resolver or default_resolver

    def check(self, url: str) -> None:
        """Admit ``url`` or raise; no connection is made (the resolver may be called).

        Args:
            url: The absolute URL about to be requested.

        Raises:
            OutboundRefused: The URL is not admitted; ``reason`` says why.
        """
        target = _parse(url)
        if any(entry.matches(target) for entry in self._entries):
            return
        if not self._wildcard:
            raise OutboundRefused("no allowlist entry matches")
        self._check_wildcard(target)

    def admits(self, url: str) -> bool:
        """Whether :meth:`check` would admit ``url``.

        Args:
            url: The absolute URL about to be requested.

        Returns:
            True when the URL may be called.
        """
        try:
            self.check(url)
        except OutboundRefused:
            return False
        return True

    def _check_wildcard(self, target: _Target) -> None:
        """Rules for URLs only ``*`` could admit: https and public addresses only."""
        if target.scheme != "https":
            raise OutboundRefused("'*' admits https only")
        literal = _ip_literal(target.host)
        if literal is not None:
            if not is_public_address(literal):
                raise OutboundRefused("non-public address")
            return
        labels = target.host.split(".")
        if _NUMERIC_LABEL.match(labels[-1]):
            raise OutboundRefused("numeric host")
        if labels[-1] == "localhost":
            raise OutboundRefused("non-public address")
        try:
            resolved = self._resolver(target.host)
        except (OSError, UnicodeError):
            raise OutboundRefused("host does not resolve") from None
        if not resolved:
            raise OutboundRefused("host does not resolve")
        for text in resolved:
            address = _ip_literal(text)
            if address is None or not is_public_address(address):
                raise OutboundRefused("host resolves to a non-public address")


def _ip_literal(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
