"""Origins are parsed (RFC 6454 section 6.1: scheme://host[:port], nothing else) and a
wildcard entry matches whole leading labels only: adversarial origins, and properties
checked with hypothesis over generated hosts and arbitrary text."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sockway.edge.security import Origin, OriginPolicy, parse_allowed_origin, parse_origin, referer_origin

OWN = "http://gateway.test:8080"
POLICY = OriginPolicy(["https://*.example.org", "http://app.test:3000", "https://exact.test/"])

ALLOWED = [
    "https://a.example.org",
    "https://a.b.example.org",
    "https://A.Example.ORG",  # scheme and host are case-insensitive
    "https://a.example.org:443",  # the default port, written out
    "https://xn--bcher-kva.example.org",
    "https://a-b.example.org",
    "http://app.test:3000",
    "https://exact.test",
    OWN,
    "http://gateway.test:8080",
]

REFUSED = [
    # What fnmatch admitted for https://*.example.org: the wildcard ran across "/",
    # "?", "#", "@" and "\\".
    "https://evil.com/.example.org",
    "https://evil.com?.example.org",
    "https://evil.com#.example.org",
    "https://evil.com\\.example.org",
    "https://evil.com@a.example.org",
    "https://evil.com:1@a.example.org",
    # Not whole labels, or not under the suffix at all.
    "https://example.org",
    "https://evilexample.org",
    "https://.example.org",
    "https://a.example.org.evil.com",
    "https://example.org.evil.com",
    "https://a.example.org.",
    "https://a..example.org",
    "https://-a.example.org",
    "https://a-.example.org",
    "https://*.example.org",
    "https://%2a.example.org",
    "https://a%2eexample.org",
    # Another scheme or port.
    "http://a.example.org",
    "wss://a.example.org",
    "https://a.example.org:8443",
    "https://a.example.org:0443",
    "https://a.example.org:+443",
    "https://a.example.org:0",
    "https://a.example.org:65536",
    "https://a.example.org:",
    "http://app.test",
    "http://app.test:3001",
    "http://app.test:03000",
    "https://app.test:3000",
    # Anything after the host or port: a path, a query, a fragment, whitespace.
    "https://a.example.org/",
    "https://a.example.org/x",
    "https://a.example.org?",
    "https://a.example.org#",
    "https://exact.test/",
    " https://exact.test",
    "https://exact.test ",
    "https://exact.test\n",
    "https://exact.test\r\n",
    "https://exa\tct.test",
    "https://exact.test\x00",
    "https://exact.test\\",
    # Look-alikes: non-ASCII characters that lower-case to ASCII ones (the Kelvin sign
    # to "k"), fullwidth letters, a lone surrogate from a header that was not UTF-8.
    "https://a.exampl\u212a.org",
    "https://\u212a.example.org",
    "https://exact.tes\uff54",
    "https://exact.test\udcff",
    "https://ex\u0430ct.test",
    # Not origins at all.
    "null",
    "",
    "exact.test",
    "//exact.test",
    "https:/exact.test",
    "https:exact.test",
    "https//exact.test",
    "https://",
    "https://user@exact.test",
    "https://:443",
    "https://[::1]",
    "https://1.2.3.4",
    "https://999.1.1.1",
    "https://01.2.3.4",
    "https://a.example.org" + "x" * 300,
    "http://gateway.test:8081",
    "https://gateway.test:8080",
    "http://gateway.test",
]


@pytest.mark.parametrize("origin", ALLOWED)
def test_allowed(origin):
    assert POLICY.allows(origin, OWN)


@pytest.mark.parametrize("origin", REFUSED)
def test_refused(origin):
    assert not POLICY.allows(origin, OWN)


def test_no_origin_any_and_null():
    assert POLICY.allows(None, OWN)  # programs send none; see docs/security.md for jsonp
    assert OriginPolicy(["*"]).allows("null", OWN)
    assert OriginPolicy(["*"]).allows("anything at all", OWN)
    assert not OriginPolicy([]).allows("null", OWN)
    assert OriginPolicy([]).allows("HTTP://GATEWAY.TEST:8080", OWN)
    assert not OriginPolicy([]).allows("http://gateway.test:8080", "http://")  # no usable Host


def test_ip_hosts_are_exact():
    policy = OriginPolicy(["http://[::1]:3000", "http://127.0.0.1:3000"])
    assert policy.allows("http://[::1]:3000", OWN)
    assert policy.allows("http://[0:0::1]:3000", OWN)  # the same address, written longer
    assert policy.allows("http://127.0.0.1:3000", OWN)
    assert not policy.allows("http://127.0.0.01:3000", OWN)
    assert not policy.allows("http://127.1:3000", OWN)
    assert not policy.allows("http://[::2]:3000", OWN)


NOT_AN_ORIGIN = "is not an origin: expected scheme://host[:port] with no path"
BAD_HOST = "does not have a valid host"
BAD_WILDCARD = "a wildcard stands for whole leading labels"


@pytest.mark.parametrize(("entry", "why"), [
    ("https://a.org/path", NOT_AN_ORIGIN), ("https://a.org/x/", NOT_AN_ORIGIN), ("https://a.org?x", NOT_AN_ORIGIN),
    ("a.org", NOT_AN_ORIGIN), ("https://a.org:99999", NOT_AN_ORIGIN), ("https://a.org:0", NOT_AN_ORIGIN),
    ("https://user@a.org", NOT_AN_ORIGIN), ("https://a.org//", NOT_AN_ORIGIN), ("", NOT_AN_ORIGIN),
    ("https://a b.org", NOT_AN_ORIGIN), ("https://*.[::1]", NOT_AN_ORIGIN),
    ("https://*", BAD_HOST), ("https://*.", BAD_WILDCARD), ("https://a.*.org", BAD_HOST), ("https://*a.org", BAD_HOST),
    ("https://**.a.org", BAD_HOST), ("https://*.*.a.org", BAD_WILDCARD), ("https://*.1.2.3.4", BAD_WILDCARD),
    ("https://a..org", BAD_HOST), ("https://a.org.", BAD_HOST),
    ("null", "send Origin: null"), ("NULL", "send Origin: null"),
    ("https://bücher.example", "xn-- (punycode)"),
])
def test_bad_allow_list_entries_are_refused_with_the_reason(entry, why):
    with pytest.raises(ValueError) as refused:
        parse_allowed_origin(entry)
    assert why in str(refused.value) and repr(entry) in str(refused.value)


def test_allow_list_entries():
    assert parse_allowed_origin("https://A.example.org/") == Origin("https", "a.example.org", None)
    assert parse_allowed_origin("https://a.example.org:443") == Origin("https", "a.example.org", None)
    assert parse_allowed_origin("capacitor://localhost") == Origin("capacitor", "localhost", None)
    assert str(parse_allowed_origin("https://*.example.org:8443")) == "https://*.example.org:8443"


def test_referer_origin():
    assert referer_origin("https://a.example.org/page?q=1#x") == Origin("https", "a.example.org", None)
    assert referer_origin("http://app.test:3000/") == Origin("http", "app.test", 3000)
    assert referer_origin("http://app.test:3000") == Origin("http", "app.test", 3000)
    for bad in ("https://u:p@a.example.org/", "/relative", "https://a.example.org\n/", "about:blank",
                "https://a.example.org:99999/", "https://\u212a.org/", ""):
        assert referer_origin(bad) is None, bad
    assert POLICY.allows_referer("https://a.example.org/chat.html", OWN)
    assert POLICY.allows_referer(OWN + "/index.html", OWN)
    assert not POLICY.allows_referer("https://evil.com/.example.org/x", OWN)
    assert not POLICY.allows_referer("https://evil.com/?https://a.example.org", OWN)


def test_frame_ancestors():
    assert OriginPolicy(["*"]).frame_ancestors() is None
    assert OriginPolicy([]).frame_ancestors() == "frame-ancestors 'self'"
    assert POLICY.frame_ancestors() == ("frame-ancestors 'self' http://app.test:3000 https://exact.test "
                                        "https://*.example.org")
    # CSP source expressions cannot name an IPv6 address: left out (documented).
    assert OriginPolicy(["http://[::1]:3000"]).frame_ancestors() == "frame-ancestors 'self'"


# -- properties --------------------------------------------------------------------------------

LETTERS = string.ascii_lowercase + string.digits
label = st.text(LETTERS, min_size=1, max_size=12).filter(lambda s: not s.isdigit())
hostname = st.lists(label, min_size=1, max_size=4).map(".".join)
scheme = st.sampled_from(["http", "https", "ws", "wss", "app"])
port = st.one_of(st.none(), st.integers(1, 65535))


def origin_text(s: str, host: str, p: int | None) -> str:
    return f"{s}://{host}" + (f":{p}" if p is not None else "")


@given(scheme, hostname, port)
def test_an_origin_round_trips(s, host, p):
    parsed = parse_origin(origin_text(s, host, p))
    assert parsed is not None and parsed.scheme == s and parsed.host == host
    assert parse_origin(str(parsed)) == parsed


@given(scheme, hostname, port, st.sampled_from(["/", "/x", "?", "#", ".", " ", "\n", "\t", "@x", ":",
                                                  "\\", "%2f", "\x00", "\u212a", "/.example.org"]))
def test_anything_after_an_origin_is_refused(s, host, p, tail):
    assert parse_origin(origin_text(s, host, p) + tail) is None


@given(st.lists(label, min_size=1, max_size=3).map(".".join), hostname, port)
def test_a_wildcard_matches_whole_leading_labels(leading, suffix, p):
    policy = OriginPolicy([origin_text("https", "*." + suffix, p)])
    assert policy.allows(origin_text("https", f"{leading}.{suffix}", p), OWN)
    assert not policy.allows(origin_text("https", suffix, p), OWN)
    assert not policy.allows(origin_text("https", leading + suffix, p), OWN)
    assert not policy.allows(origin_text("http", f"{leading}.{suffix}", p), OWN)
    assert not policy.allows(origin_text("https", f"{leading}.{suffix}.evil", p), OWN)
    assert not policy.allows(f"https://{leading}/.{suffix}", OWN)


@settings(max_examples=300)
@given(st.text(max_size=60))
@example("https://evil.com/.example.org")
@example("https://a.example.org\n")
def test_arbitrary_text_is_either_refused_or_exactly_an_allowed_origin(text):
    """Whatever the text, a wildcard admits it only if it is an origin whose host ends
    with whole labels of the suffix."""
    policy = OriginPolicy(["https://*.example.org"])
    if policy.allows(text, OWN):
        parsed = parse_origin(text)
        assert parsed is not None and parsed.scheme == "https" and parsed.port is None
        assert parsed.host.endswith(".example.org") and text.isascii()
        assert not any(c in text[len("https://"):] for c in "/?#@\\ \t\r\n")


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=40))
@example("http://[0:0::1]:80")
def test_a_parsed_origin_is_nothing_but_scheme_host_and_port(text):
    parsed = parse_origin(text)
    if parsed is not None:
        rest = text.lower().split("://", 1)[1]
        assert set(rest) <= set(string.ascii_lowercase + string.digits + "-_.:[]"), text
        assert parse_origin(str(parsed)) == parsed
