"""Allowlist: README "Settings" (outbound allowlist, SSRF guard)."""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fhir_service.security.allowlist import Allowlist, OutboundRefused, is_public_address

PUBLIC_IP = "93.184.215.14"


class StubResolver:
    """Maps names to addresses and records every lookup."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = {"allowed.example": [PUBLIC_IP], "public.example": [PUBLIC_IP]}
        self.table.update(table or {})
        self.calls: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError("no such host")
        return self.table[host]


def refused(allowlist: Allowlist, url: str) -> str:
    with pytest.raises(OutboundRefused) as info:
        allowlist.check(url)
    assert not allowlist.admits(url)
    return info.value.reason


# --- positive controls -------------------------------------------------------------------


def test_wildcard_admits_public_https_name() -> None:
    resolver = StubResolver()
    allowlist = Allowlist(["*"], resolver)
    allowlist.check("https://public.example/fhir/Patient/1")
    assert allowlist.admits("https://PUBLIC.example:8443/x?y=1")
    assert resolver.calls == ["public.example", "public.example"]


def test_wildcard_admits_public_ip_literal_without_resolving() -> None:
    resolver = StubResolver()
    assert Allowlist(["*"], resolver).admits(f"https://{PUBLIC_IP}/fhir")
    assert Allowlist(["*"], resolver).admits("https://[2606:4700:4700::1111]/fhir")
    assert resolver.calls == []


def test_explicit_loopback_entry_admits_http_loopback() -> None:
    allowlist = Allowlist(["http://127.0.0.1:8123"], StubResolver())
    allowlist.check("http://127.0.0.1:8123/fhir/Patient")
    assert not allowlist.admits("http://127.0.0.1:8124/fhir/Patient")


def test_explicit_entry_without_port_matches_every_port() -> None:
    allowlist = Allowlist(["http://127.0.0.1", "http://localhost"], StubResolver())
    assert allowlist.admits("http://127.0.0.1:8123/fhir/Patient")
    assert allowlist.admits("http://127.0.0.1/fhir")
    assert allowlist.admits("http://LOCALHOST:9/x")
    assert not allowlist.admits("https://127.0.0.1/fhir")  # scheme differs, no '*'


def test_explicit_private_entries_admit_private_targets() -> None:
    allowlist = Allowlist(["https://10.0.0.1", "https://[fd00::1]:8443"], StubResolver())
    assert allowlist.admits("https://10.0.0.1/fhir")
    assert allowlist.admits("https://[fd00::1]:8443/fhir")
    assert not allowlist.admits("https://[fd00::1]/fhir")


def test_entry_path_matches_on_segment_boundary() -> None:
    allowlist = Allowlist(["https://ehr.example/fhir"], StubResolver())
    assert allowlist.admits("https://ehr.example/fhir")
    assert allowlist.admits("https://ehr.example/fhir/")
    assert allowlist.admits("https://ehr.example/fhir/Patient?_id=1")
    assert not allowlist.admits("https://ehr.example/fhir2/Patient")
    assert not allowlist.admits("https://ehr.example/")
    assert not allowlist.admits("https://ehr.example/other/fhir")


def test_entry_with_trailing_slash_path_is_the_same_prefix() -> None:
    allowlist = Allowlist(["https://ehr.example/fhir/"], StubResolver())
    assert allowlist.admits("https://ehr.example/fhir")
    assert not allowlist.admits("https://ehr.example/fhirx")


def test_path_traversal_cannot_leave_entry_path() -> None:
    allowlist = Allowlist(["https://ehr.example/fhir"], StubResolver())
    assert refused(allowlist, "https://ehr.example/fhir/%2e%2e/admin") == "dot segment in path"
    assert not allowlist.admits("https://ehr.example/fhir%2F..%2Fadmin")
    assert not allowlist.admits("https://ehr.example/fhir/../admin")  # normalised to /admin


def test_explicit_port_443_entry_matches_default_port_only() -> None:
    allowlist = Allowlist(["https://ehr.example:443"], StubResolver())
    assert allowlist.admits("https://ehr.example/fhir")
    assert allowlist.admits("https://ehr.example:443/fhir")
    assert not allowlist.admits("https://ehr.example:8443/fhir")


def test_idna_host_matches_its_punycode_entry() -> None:
    allowlist = Allowlist(["https://xn--bcher-kva.example"], StubResolver())
    assert allowlist.admits("https://bücher.example/fhir")
    assert allowlist.admits("https://BÜCHER.example/fhir")


def test_empty_allowlist_admits_nothing() -> None:
    resolver = StubResolver()
    allowlist = Allowlist([], resolver)
    assert refused(allowlist, "https://public.example/fhir") == "no allowlist entry matches"
    assert not allowlist.admits("http://127.0.0.1:8000/")
    assert resolver.calls == []


@pytest.mark.parametrize("entry", ["ftp://x", "https://", "https://u@h", "https://h:99999", "nope"])
def test_invalid_entries_refuse_construction(entry: str) -> None:
    with pytest.raises(ValueError):
        Allowlist([entry])


# --- §6.3 X1-X12 -------------------------------------------------------------------------


def test_x1_http_origin_only_wildcard_admits() -> None:
    resolver = StubResolver()
    allowlist = Allowlist(["*"], resolver)
    assert refused(allowlist, "http://public.example/fhir") == "'*' admits https only"
    assert refused(allowlist, "http://127.0.0.1:8123/fhir") == "'*' admits https only"
    assert resolver.calls == []


@pytest.mark.parametrize("url", ["https://127.0.0.1/", "https://localhost/", "https://[::1]/"])
def test_x2_loopback(url: str) -> None:
    resolver = StubResolver({"localhost": ["127.0.0.1"]})
    assert refused(Allowlist(["*"], resolver), url) == "non-public address"
    assert resolver.calls == []  # refused before any lookup


def test_x2_localhost_subdomain() -> None:
    allowlist = Allowlist(["*"], StubResolver({"evil.localhost": [PUBLIC_IP]}))
    assert refused(allowlist, "https://evil.localhost/") == "non-public address"


def test_x3_cloud_metadata() -> None:
    allowlist = Allowlist(["*"], StubResolver())
    assert refused(allowlist, "https://169.254.169.254/latest/meta-data/") == "non-public address"


@pytest.mark.parametrize("host", ["10.0.0.1", "172.16.0.1", "192.168.0.1"])
def test_x4_rfc1918(host: str) -> None:
    assert refused(Allowlist(["*"], StubResolver()), f"https://{host}/fhir") == "non-public address"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://0.0.0.0/", "non-public address"),
        ("https://2130706433/", "numeric host"),
        ("https://0x7f000001/", "numeric host"),
        ("https://127.1/", "numeric host"),
        ("https://0177.0.0.1/", "unparseable URL"),  # httpx rejects octal dotted quads
        ("https://[::ffff:127.0.0.1]/", "non-public address"),
        ("https://[::ffff:7f00:1]/", "non-public address"),
        ("https://[::]/", "non-public address"),
    ],
)
def test_x5_unspecified_numeric_and_mapped_hosts(url: str, reason: str) -> None:
    # The resolver would map the numeric forms to a public address: the refusal must not
    # depend on it.
    resolver = StubResolver({"2130706433": [PUBLIC_IP], "0x7f000001": [PUBLIC_IP]})
    assert refused(Allowlist(["*"], resolver), url) == reason
    assert resolver.calls == []


@pytest.mark.parametrize("host", ["[fd00::1]", "[fe80::1]", "[fc00::1]"])
def test_x6_ula_and_link_local_v6(host: str) -> None:
    assert refused(Allowlist(["*"], StubResolver()), f"https://{host}/") == "non-public address"


def test_x7_host_on_no_entry_without_wildcard() -> None:
    allowlist = Allowlist(["https://allowed.example/fhir"], StubResolver())
    assert refused(allowlist, "https://other.example/fhir") == "no allowlist entry matches"


@pytest.mark.parametrize(
    "url",
    [
        "https://allowed.example@127.0.0.1/",
        "https://allowed.example:x@127.0.0.1/",
        "https://a@b/",
        "https://allowed.example\\@127.0.0.1/",
    ],
)
def test_x8_userinfo(url: str) -> None:
    allowlist = Allowlist(["*", "https://allowed.example", "https://127.0.0.1"], StubResolver())
    assert refused(allowlist, url) == "userinfo in URL"


def test_x9_suffix_and_prefix_tricks() -> None:
    resolver = StubResolver({"allowed.example.evil.test": ["127.0.0.1"]})
    explicit = Allowlist(["https://allowed.example"], resolver)
    assert refused(explicit, "https://allowed.example.evil.test/") == "no allowlist entry matches"
    assert refused(explicit, "https://evilallowed.example/") == "no allowlist entry matches"
    wildcard = Allowlist(["*", "https://allowed.example"], resolver)
    assert refused(wildcard, "https://allowed.example.evil.test/") == (
        "host resolves to a non-public address"
    )


def test_x10_allowed_host_other_port() -> None:
    allowlist = Allowlist(["http://127.0.0.1:8123"], StubResolver())
    assert refused(allowlist, "http://127.0.0.1:8124/fhir") == "no allowlist entry matches"
    with_wildcard = Allowlist(["*", "http://127.0.0.1:8123"], StubResolver())
    assert refused(with_wildcard, "https://127.0.0.1:8124/fhir") == "non-public address"


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "gopher://127.0.0.1:70/_x", "ftp://public.example/x", "data:,x"]
)
def test_x11_non_http_schemes(url: str) -> None:
    allowlist = Allowlist(["*", "http://127.0.0.1"], StubResolver())
    assert refused(allowlist, url) == "scheme is not http or https"


@pytest.mark.parametrize("url", ["https:///fhir", "https://:443/fhir", "not a url", ""])
def test_empty_host_or_garbage(url: str) -> None:
    assert not Allowlist(["*"], StubResolver()).admits(url)


def test_x12_name_resolving_to_loopback() -> None:
    resolver = StubResolver({"rebind.example": ["127.0.0.1"]})
    allowlist = Allowlist(["*"], resolver)
    assert refused(allowlist, "https://rebind.example/fhir") == (
        "host resolves to a non-public address"
    )
    assert "rebind.example" in resolver.calls


def test_x12_any_non_public_address_among_several_refuses() -> None:
    resolver = StubResolver({"mixed.example": [PUBLIC_IP, "::ffff:10.0.0.1"]})
    assert not Allowlist(["*"], resolver).admits("https://mixed.example/")


def test_unresolvable_and_empty_resolution_refused() -> None:
    resolver = StubResolver({"empty.example": []})
    allowlist = Allowlist(["*"], resolver)
    assert refused(allowlist, "https://nowhere.example/") == "host does not resolve"
    assert refused(allowlist, "https://empty.example/") == "host does not resolve"


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1", True),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("ff02::1", False),
        ("::1", False),
        ("::7f00:1", False),
        ("64:ff9b::a00:1", False),
        ("2002:7f00:1::", False),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo, client 127.0.0.1
        ("fe80::1%eth0", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


# --- property: what is admitted is what httpx will connect to -------------------------------

_noise = st.text(alphabet="@:/\\?#%.[]-_aZ09", max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    prefix=_noise,
    path=st.sampled_from(["", "/fhir", "/fhir/", "/fhir2", "/fhir/.", "/fhir/Patient"]),
    suffix=_noise,
)
@example(prefix="", path="/fhir/Patient", suffix="?x=@evil")
def test_admitted_urls_target_the_entry_origin(prefix: str, path: str, suffix: str) -> None:
    allowlist = Allowlist(["http://127.0.0.1:8123/fhir"], StubResolver())
    url = f"http://{prefix}127.0.0.1:8123{path}{suffix}"
    if allowlist.admits(url):
        parsed = httpx.URL(url)
        assert (parsed.scheme, parsed.host, parsed.port) == ("http", "127.0.0.1", 8123)
        assert not parsed.userinfo
        assert parsed.raw_path == b"/fhir" or parsed.raw_path.startswith((b"/fhir/", b"/fhir?"))


@settings(max_examples=200, deadline=None)
@given(address=st.ip_addresses())
def test_wildcard_never_admits_a_non_public_literal(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    host = f"[{address}]" if address.version == 6 else str(address)
    admitted = Allowlist(["*"], StubResolver()).admits(f"https://{host}/")
    assert admitted == is_public_address(address)
    if admitted:
        assert address.is_global and not address.is_private and not address.is_loopback
