"""Address parsing: RFC 5321 4.1.2 / 4.1.3 / 4.5.3.1, RFC 6531, RFC 3461 xtext. One line a case."""

import pytest

from relaywarden.smtp.address import (
    Address,
    AddressError,
    parse_path,
    split_path,
    xtext_decode,
)

A = Address

VALID = [
    # (path, local, domain, other fields)
    ("<user@example.com>", "user", "example.com", {}),
    ("<User.Name@EXAMPLE.Com>", "User.Name", "example.com", {}),
    ("<a+tag@example.com>", "a+tag", "example.com", {}),
    ("<x@localhost>", "x", "localhost", {}),
    ("<x@1.2.3.4>", "x", "1.2.3.4", {}),
    ("<x@a-b.c-d.example>", "x", "a-b.c-d.example", {}),
    ("<x@xn--bcher-kva.example>", "x", "xn--bcher-kva.example", {}),
    ("<!#$&'*+/=?^_`{|}~-@example.com>", "!#$&'*+/=?^_`{|}~-", "example.com", {}),
    # trailing dot: exactly one is removed
    ("<user@example.com.>", "user", "example.com", {}),
    # percent hack, bang path, quoted @: parsed, flagged by routing_chars
    ("<user%other.net@example.com>", "user%other.net", "example.com", {}),
    ("<other.net!user@example.com>", "other.net!user", "example.com", {}),
    ('<"user@other.net"@example.com>', "user@other.net", "example.com", {"quoted": True}),
    # quoted strings are stored de-quoted
    ('<"a b"@example.com>', "a b", "example.com", {"quoted": True}),
    ('<"a\\"b"@example.com>', 'a"b', "example.com", {"quoted": True}),
    ('<"a\\\\b"@example.com>', "a\\b", "example.com", {"quoted": True}),
    ('<"plain"@example.com>', "plain", "example.com", {"quoted": True}),
    ('<""@example.com>', "", "example.com", {"quoted": True}),
    ('<"a>b"@example.com>', "a>b", "example.com", {"quoted": True}),
    # address literals, stored lower-case as given
    ("<user@[10.0.0.1]>", "user", "[10.0.0.1]", {"literal": True}),
    ("<user@[IPv6:2001:DB8::1]>", "user", "[ipv6:2001:db8::1]", {"literal": True}),
    ("<user@[IPv6:::ffff:1.2.3.4]>", "user", "[ipv6:::ffff:1.2.3.4]", {"literal": True}),
    # source routes are parsed and ignored (RFC 5321 C)
    ("<@a.com,@b.com:user@c.com>", "user", "c.com",
     {"route": ("a.com", "b.com")}),
    ("<@A.com:user@c.com>", "user", "c.com", {"route": ("a.com",)}),
    # postmaster without a domain (RCPT only; the server decides)
    ("<postmaster>", "postmaster", "", {}),
    ("<PostMaster>", "postmaster", "", {}),
    ("<postmaster@example.com>", "postmaster", "example.com", {}),
]


@pytest.mark.parametrize("path, local, domain, extra", VALID)
def test_valid(path, local, domain, extra):
    assert parse_path(path, utf8=False) == A(local=local, domain=domain, **extra)


def test_null_path():
    assert parse_path("<>", utf8=False) is None


INVALID = [
    # path                                    code   enhanced
    ("user@example.com",                      501, "5.1.3"),   # no angle brackets
    ("<user@example.com",                     501, "5.1.3"),
    ("user@example.com>",                     501, "5.1.3"),
    ("",                                      501, "5.1.3"),
    ("<user>",                                501, "5.1.3"),   # no domain, not postmaster
    ("<@example.com>",                        501, "5.1.3"),
    ("<user@>",                               501, "5.1.3"),
    ("<user@@example.com>",                   501, "5.1.3"),
    ("<a@b@example.com>",                     501, "5.1.3"),
    ("<.user@example.com>",                   501, "5.1.3"),
    ("<user.@example.com>",                   501, "5.1.3"),
    ("<us..er@example.com>",                  501, "5.1.3"),
    ("<user name@example.com>",               501, "5.1.3"),
    ("<us(er@example.com>",                   501, "5.1.3"),
    ("<us\x01er@example.com>",                501, "5.1.3"),
    ('<"unterminated@example.com>',           501, "5.1.3"),
    ('<"a"b@example.com>',                    501, "5.1.3"),
    ('<a"b"@example.com>',                    501, "5.1.3"),
    ('<"a\x7f"@example.com>',                 501, "5.1.3"),
    ('<"a\\\x01"@example.com>',               501, "5.1.3"),
    ("<user@exa mple.com>",                   501, "5.1.3"),
    ("<user@-example.com>",                   501, "5.1.3"),
    ("<user@example-.com>",                   501, "5.1.3"),
    ("<user@exa_mple.com>",                   501, "5.1.3"),
    ("<user@example..com>",                   501, "5.1.3"),
    ("<user@.example.com>",                   501, "5.1.3"),
    ("<a@b..>",                               501, "5.1.3"),   # only one trailing dot goes
    ("<a@.>",                                 501, "5.1.3"),
    ("<user@" + "a" * 64 + ".com>",           501, "5.1.3"),   # label > 63
    ("<user@[300.0.0.1]>",                    501, "5.1.3"),
    ("<user@[1.2.3]>",                        501, "5.1.3"),
    ("<user@[01.2.3.4]>",                     501, "5.1.3"),
    ("<user@[fe80::1]>",                      501, "5.1.3"),   # IPv6 needs the tag
    ("<user@[IPv6:zz::1]>",                   501, "5.1.3"),
    ("<user@[IPv6:1.2.3.4]>",                 501, "5.1.3"),
    ("<user@[IPv6:fe80::1%eth0]>",            501, "5.1.3"),
    ("<user@[X-tag:stuff]>",                  501, "5.1.3"),   # unregistered tag
    ("<user@[10.0.0.1]x>",                    501, "5.1.3"),
    ("<user@[]>",                             501, "5.1.3"),
    ("<@a.com user@c.com>",                   501, "5.1.3"),
    ("<@a.com,b.com:user@c.com>",             501, "5.1.3"),
    ("<@a.com:user>",                         501, "5.1.3"),
    ("<@a..com:user@c.com>",                  501, "5.1.3"),
    ("< user@example.com>",                   501, "5.1.3"),
    ("< >",                                   501, "5.1.3"),
    # lengths (RFC 5321 4.5.3.1)
    ("<" + "a" * 65 + "@example.com>",        553, "5.1.3"),
    ('<"' + "a" * 63 + '"@example.com>',      553, "5.1.3"),   # quotes count
    ("<a@" + ".".join(["b" * 60] * 5) + ">",  501, "5.1.3"),   # path > 256
    # non-ASCII needs SMTPUTF8 (RFC 6531 3.7.4.1)
    ("<jörg@example.com>",                    553, "5.6.7"),
    ("<user@bücher.example>",                 553, "5.6.7"),
    ('<"jö"@example.com>',                    553, "5.6.7"),
]


@pytest.mark.parametrize("path, code, enhanced", INVALID)
def test_invalid(path, code, enhanced):
    with pytest.raises(AddressError) as info:
        parse_path(path, utf8=False)
    assert (info.value.reply.code, info.value.reply.enhanced) == (code, enhanced)


def test_exact_limits_are_accepted():
    local = "a" * 64
    assert parse_path(f"<{local}@example.com>", utf8=False).local == local
    label = "b" * 63
    assert parse_path(f"<a@{label}.com>", utf8=False).domain == f"{label}.com"
    # a path of exactly 256 octets
    domain = ".".join(["c" * 62] * 4)[: 256 - len("<a@>")]
    domain = domain.rstrip(".")
    path = f"<a@{domain}>"
    assert len(path) <= 256
    assert parse_path(path, utf8=False).domain == domain


UTF8 = [
    ("<jörg@example.com>",              "jörg",      "example.com"),
    ("<user@bücher.example>",           "user",      "xn--bcher-kva.example"),
    ("<user@BÜCHER.example>",           "user",      "xn--bcher-kva.example"),
    ('<"jö rg"@example.com>',           "jö rg",     "example.com"),
    ("<用户@例子.广告>",                 "用户",      "xn--fsqu00a.xn--4rr70v"),
    ("<x@bücher.example.>",             "x",         "xn--bcher-kva.example"),
]


@pytest.mark.parametrize("path, local, domain", UTF8)
def test_utf8(path, local, domain):
    address = parse_path(path, utf8=True)
    assert (address.local, address.domain) == (local, domain)


@pytest.mark.parametrize("path", [
    "<user@" + "ü" * 60 + ".example>",        # A-label longer than 63
    "<user@a\u3002b>",                        # ideographic full stop: not our dot
])
def test_idn_that_cannot_be_encoded(path):
    with pytest.raises(AddressError) as info:
        parse_path(path, utf8=True)
    assert (info.value.reply.code, info.value.reply.enhanced) == (553, "5.1.2")


def test_idn_uses_idna2003_nameprep():
    # The stdlib codec maps some characters away (here a zero-width space): documented.
    assert parse_path("<user@a\u200bb.example>", utf8=True).domain == "ab.example"


def test_idn_too_long_is_553_5_1_2():
    with pytest.raises(AddressError) as info:
        parse_path("<user@" + "ü" * 60 + ".example>", utf8=True)
    assert (info.value.reply.code, info.value.reply.enhanced) == (553, "5.1.2")


def test_domain_too_long_after_idn_encoding():
    # "ä" is 2 octets as UTF-8 but 7 ("xn--4ca") as an A-label: the path fits 256 octets,
    # the encoded domain does not fit 255.
    labels = ["ä"] * 84
    path = "<a@" + ".".join(labels) + ">"
    assert len(path.encode()) <= 256
    with pytest.raises(AddressError) as info:
        parse_path(path, utf8=True)
    assert (info.value.reply.code, info.value.reply.enhanced) == (553, "5.1.2")


@pytest.mark.parametrize("address, text", [
    (A("user", "example.com"), "user@example.com"),
    (A("a b", "example.com", quoted=True), '"a b"@example.com'),
    (A('a"b', "example.com", quoted=True), '"a\\"b"@example.com'),
    (A("a\\b", "example.com", quoted=True), '"a\\\\b"@example.com'),
    (A("plain", "example.com", quoted=True), "plain@example.com"),   # quotes not needed
    (A("", "example.com", quoted=True), '""@example.com'),
    (A("user@other", "example.com", quoted=True), '"user@other"@example.com'),
    (A("a..b", "example.com", quoted=True), '"a..b"@example.com'),
    (A("postmaster", ""), "postmaster"),
    (A("user", "[10.0.0.1]", literal=True), "user@[10.0.0.1]"),
])
def test_str_requotes_when_needed(address, text):
    assert str(address) == text


@pytest.mark.parametrize("path", [v[0] for v in VALID if "postmaster>" not in v[0].lower()])
def test_str_round_trips(path):
    address = parse_path(path, utf8=False)
    again = parse_path(f"<{address}>", utf8=False)
    assert again == Address(address.local, address.domain, literal=address.literal,
                            quoted=again.quoted)


@pytest.mark.parametrize("path, routing", [
    ("<user@example.com>", False),
    ("<user%other.net@example.com>", True),
    ("<other.net!user@example.com>", True),
    ('<"user@other.net"@example.com>', True),
    ("<@relay.net:user@example.com>", False),   # a route is ignored, not honoured
])
def test_routing_chars(path, routing):
    assert parse_path(path, utf8=False).routing_chars is routing


@pytest.mark.parametrize("text, path, rest", [
    ("<a@b.c>", "<a@b.c>", ""),
    ("<a@b.c> SIZE=10", "<a@b.c>", "SIZE=10"),
    ("<a@b.c>  SIZE=10 BODY=8BITMIME", "<a@b.c>", "SIZE=10 BODY=8BITMIME"),
    ('<"a>b"@c.d> X', '<"a>b"@c.d>', "X"),
    ('<"a\\">b"@c.d>', '<"a\\">b"@c.d>', ""),
    ("<>", "<>", ""),
])
def test_split_path(text, path, rest):
    assert split_path(text) == (path, rest)


@pytest.mark.parametrize("text", ["a@b.c", "<a@b.c", "<a@b.c>SIZE=1", "", '<"a>b@c.d'])
def test_split_path_errors(text):
    with pytest.raises(AddressError) as info:
        split_path(text)
    assert info.value.reply.code == 501


@pytest.mark.parametrize("text, decoded", [
    ("", ""),
    ("abc", "abc"),
    ("a+2Bb", "a+b"),
    ("+3D", "="),
    ("rfc822;user+40example.com", "rfc822;user@example.com"),
    ("+C3+A9", "é"),
    ("!~", "!~"),
])
def test_xtext_decode(text, decoded):
    assert xtext_decode(text) == decoded


@pytest.mark.parametrize("text", ["a+2b", "a+2", "+", "a=b", "a b", "a\x7fb", "é", "+FF", "+G0"])
def test_xtext_decode_errors(text):
    with pytest.raises(ValueError):
        xtext_decode(text)


def test_lone_surrogates_are_a_syntax_error_not_a_crash():
    # Regression: found by fuzz/fuzz_smtp.py (address target).
    with pytest.raises(AddressError) as err:
        parse_path("<<\x03\x00\x00\udcdf\x00\x00\x00\x00>", utf8=True)
    assert err.value.reply.code == 501
