"""The router: recipient domain and sender in, route out. One case per line."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaywarden.config import build_router, load_config
from relaywarden.delivery.routing import (
    DEFAULT_ROUTE,
    LITERAL_ROUTE,
    NextHop,
    Route,
    RouteKind,
    Router,
    SenderRoute,
)
from relaywarden.delivery.tls import TlsMode

EXAMPLE = Path(__file__).parents[2] / "examples" / "relay.example.toml"

COMMON = """
[relay]
hostname = "relay.example.com"
hosted_domains = ["example.com"]
[routes."example.com"]
next_hops = ["[10.0.0.5]:25", "[10.0.0.6]:25"]
tls = "required"
[routes."*.example.com"]
next_hops = ["[10.0.0.7]"]
[routes."*.eu.example.com"]
next_hops = ["eu-mail.example.com:2525", "mx"]
[routes."branch.example.org"]
hold = true
[routes."etrn.example.org"]
hold = true
next_hops = ["mail.etrn.example.org"]
[routes."partner.example"]
next_hops = ["MX"]
tls = "verify"
[routes."[192.0.2.9]"]
next_hops = ["[10.0.0.8]"]
[routes."[IPv6:2001:db8::9]"]
next_hops = ["[2001:db8::8]:2525"]
[groups.apps]
networks = ["10.0.0.0/24"]
[groups.scanners]
networks = ["10.0.5.0/24"]
[sender_routes.apps]
groups = ["apps"]
users = ["svc-app"]
next_hops = ["smarthost.example.net:587", "smarthost2.example.net:587"]
tls = "verify"
username = "relay@example.net"
password_file = "smarthost.password"
[sender_routes.marketing]
sender_domains = ["news.example.com", "*.news.example.com"]
next_hops = ["[198.51.100.25]:465"]
implicit_tls = true
[listeners.main]
address = "127.0.0.1"
port = 2525
"""

CATCH_ALL = """
[routes."*"]
next_hops = ["smart.example.net", "mx"]
"""


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    base = tmp_path_factory.mktemp("routing")
    (base / "smarthost.password").write_text("s3cret\n")
    (base / "full.toml").write_text(COMMON + CATCH_ALL)
    (base / "bare.toml").write_text('[delivery]\ntls = "required"\n' + COMMON)
    return {name: load_config(base / f"{name}.toml") for name in ("full", "bare")}


@pytest.fixture(scope="module")
def routers(configs):
    return {name: build_router(cfg) for name, cfg in configs.items()}


A = 'routes."*"'
APPS = "sender_routes.apps"
MKT = "sender_routes.marketing"
APPS_HOPS = "smarthost.example.net:587 smarthost2.example.net:587"
STAR_HOPS = "smart.example.net mx:{}"

CASES = [
    # config, recipient domain, sender, group, user, route name, hops (str of each), kind
    # (1) exact domain routes win over everything, whoever sends
    ("full", "example.com", "a@gmail.com", None, None, 'routes."example.com"', "[10.0.0.5]:25 [10.0.0.6]:25", "deliver"),
    ("full", "EXAMPLE.COM.", "a@gmail.com", None, None, 'routes."example.com"', "[10.0.0.5]:25 [10.0.0.6]:25", "deliver"),
    ("full", "example.com", "app@news.example.com", "apps", "svc-app", 'routes."example.com"', "[10.0.0.5]:25 [10.0.0.6]:25", "deliver"),
    ("full", "partner.example", "", None, None, 'routes."partner.example"', "mx:partner.example", "deliver"),
    ("full", "branch.example.org", "", None, None, 'routes."branch.example.org"', "", "hold"),
    ("full", "etrn.example.org", "", None, None, 'routes."etrn.example.org"', "mail.etrn.example.org", "hold"),
    # (2) wildcard routes: strictly below, the longest suffix wins
    ("full", "sales.example.com", "", None, None, 'routes."*.example.com"', "[10.0.0.7]", "deliver"),
    ("full", "a.b.example.com", "", None, None, 'routes."*.example.com"', "[10.0.0.7]", "deliver"),
    ("full", "eu.example.com", "", None, None, 'routes."*.example.com"', "[10.0.0.7]", "deliver"),
    ("full", "paris.eu.example.com", "", None, None, 'routes."*.eu.example.com"', "eu-mail.example.com:2525 mx:paris.eu.example.com", "deliver"),
    ("full", "Paris.EU.example.com.", "", None, None, 'routes."*.eu.example.com"', "eu-mail.example.com:2525 mx:paris.eu.example.com", "deliver"),
    ("full", "sales.example.com", "", "apps", "svc-app", 'routes."*.example.com"', "[10.0.0.7]", "deliver"),
    ("full", "badexample.com", "", None, None, A, STAR_HOPS.format("badexample.com"), "deliver"),
    ("full", "example.com.evil.test", "", None, None, A, STAR_HOPS.format("example.com.evil.test"), "deliver"),
    # (3) sender routes, in file order: group, user (any case), MAIL FROM domain
    ("full", "gmail.com", "app@example.com", "apps", None, APPS, APPS_HOPS, "deliver"),
    ("full", "gmail.com", "app@example.com", None, "svc-app", APPS, APPS_HOPS, "deliver"),
    ("full", "gmail.com", "app@example.com", None, "SVC-App", APPS, APPS_HOPS, "deliver"),
    ("full", "gmail.com", "", "apps", None, APPS, APPS_HOPS, "deliver"),
    ("full", "gmail.com", "a@news.example.com", None, None, MKT, "[198.51.100.25]:465", "deliver"),
    ("full", "gmail.com", "a@x.news.example.com", None, None, MKT, "[198.51.100.25]:465", "deliver"),
    ("full", "gmail.com", "a@NEWS.Example.com.", None, None, MKT, "[198.51.100.25]:465", "deliver"),
    ("full", "gmail.com", "<a@news.example.com>", None, None, MKT, "[198.51.100.25]:465", "deliver"),
    ("full", "gmail.com", "a@news.example.com", "apps", None, APPS, APPS_HOPS, "deliver"),
    # no sender route matches: (4) routes."*"
    ("full", "gmail.com", "a@example.com", None, None, A, STAR_HOPS.format("gmail.com"), "deliver"),
    ("full", "gmail.com", "a@badnews.example.com", None, None, A, STAR_HOPS.format("gmail.com"), "deliver"),
    ("full", "gmail.com", "", None, None, A, STAR_HOPS.format("gmail.com"), "deliver"),
    ("full", "gmail.com", "a@example.com", "scanners", None, A, STAR_HOPS.format("gmail.com"), "deliver"),
    ("full", "gmail.com", "a@example.com", None, "svc-app2", A, STAR_HOPS.format("gmail.com"), "deliver"),
    ("full", "Gmail.COM.", "a@example.com", None, None, A, STAR_HOPS.format("gmail.com"), "deliver"),
    # address literals: their own exact route, else the literal itself (no MX, no sender route)
    ("full", "[192.0.2.9]", "", None, None, 'routes."[192.0.2.9]"', "[10.0.0.8]", "deliver"),
    ("full", "[ipv6:2001:db8::9]", "", None, None, 'routes."[ipv6:2001:db8::9]"', "[2001:db8::8]:2525", "deliver"),
    ("full", "[IPv6:2001:DB8:0::9]", "", None, None, 'routes."[ipv6:2001:db8::9]"', "[2001:db8::8]:2525", "deliver"),
    ("full", "[192.0.2.10]", "", None, None, LITERAL_ROUTE, "[192.0.2.10]", "deliver"),
    ("full", "[192.0.2.10]", "a@news.example.com", "apps", "svc-app", LITERAL_ROUTE, "[192.0.2.10]", "deliver"),
    ("full", "[IPv6:2001:DB8::10]", "", None, None, LITERAL_ROUTE, "[2001:db8::10]", "deliver"),
    # (5) no routes."*": the implicit default, MX of the recipient domain
    ("bare", "gmail.com", "a@example.com", None, None, DEFAULT_ROUTE, "mx:gmail.com", "deliver"),
    ("bare", "Gmail.COM.", "", None, None, DEFAULT_ROUTE, "mx:gmail.com", "deliver"),
    ("bare", "gmail.com", "a@example.com", "scanners", "someone", DEFAULT_ROUTE, "mx:gmail.com", "deliver"),
    ("bare", "gmail.com", "a@example.com", "apps", None, APPS, APPS_HOPS, "deliver"),
    ("bare", "example.com", "", None, None, 'routes."example.com"', "[10.0.0.5]:25 [10.0.0.6]:25", "deliver"),
    ("bare", "[192.0.2.10]", "", None, None, LITERAL_ROUTE, "[192.0.2.10]", "deliver"),
]


@pytest.mark.parametrize(("config", "domain", "sender", "group", "user", "name", "hops", "kind"), CASES)
def test_route(routers, config, domain, sender, group, user, name, hops, kind):
    route = routers[config].route(domain, sender=sender, group=group, user=user)
    assert (route.name, " ".join(str(hop) for hop in route.hops), route.kind.value) == (name, hops, kind)


TLS = [
    # config, recipient domain, group, tls — a route's own tls, else delivery.tls
    ("full", "example.com", None, TlsMode.REQUIRED),
    ("full", "partner.example", None, TlsMode.VERIFY),
    ("full", "sales.example.com", None, TlsMode.OPPORTUNISTIC),
    ("full", "gmail.com", None, TlsMode.OPPORTUNISTIC),
    ("full", "gmail.com", "apps", TlsMode.VERIFY),
    ("full", "[192.0.2.10]", None, TlsMode.OPPORTUNISTIC),
    ("bare", "gmail.com", None, TlsMode.REQUIRED),
    ("bare", "sales.example.com", None, TlsMode.REQUIRED),
    ("bare", "[192.0.2.10]", None, TlsMode.REQUIRED),
]


@pytest.mark.parametrize(("config", "domain", "group", "tls"), TLS)
def test_tls(routers, config, domain, group, tls):
    assert routers[config].route(domain, sender="", group=group, user=None).tls is tls


def test_hops_are_typed(routers):
    router = routers["full"]
    route = router.route("paris.eu.example.com", sender="", group=None, user=None)
    assert route.hops == (
        NextHop(host="eu-mail.example.com", port=2525, literal=False, mx=False),
        NextHop(host="paris.eu.example.com", port=None, literal=False, mx=True),
    )
    literal = router.route("[IPv6:2001:db8::10]", sender="", group=None, user=None)
    assert literal.hops == (NextHop(host="2001:db8::10", port=None, literal=True, mx=False),)
    exact = router.route("example.com", sender="", group=None, user=None)
    assert exact.hops[0] == NextHop(host="10.0.0.5", port=25, literal=True, mx=False)


def test_sender_route_carries_auth_and_hides_the_password(routers):
    route = routers["full"].route("gmail.com", sender="", group="apps", user=None)
    assert route == Route(
        name=APPS,
        kind=RouteKind.DELIVER,
        hops=(
            NextHop(host="smarthost.example.net", port=587, literal=False, mx=False),
            NextHop(host="smarthost2.example.net", port=587, literal=False, mx=False),
        ),
        tls=TlsMode.VERIFY,
        implicit_tls=False,
        username="relay@example.net",
        password="s3cret",
        auth_without_tls=False,
    )
    assert "s3cret" not in repr(route)


def test_implicit_tls_route(routers):
    route = routers["full"].route("gmail.com", sender="a@news.example.com", group=None, user=None)
    assert (route.implicit_tls, route.username, route.password) == (True, None, None)


def test_default_route_is_mx(routers):
    route = routers["bare"].route("gmail.com", sender="", group=None, user=None)
    assert route == Route(
        name=DEFAULT_ROUTE, kind=RouteKind.DELIVER,
        hops=(NextHop(host="gmail.com", port=None, literal=False, mx=True),), tls=TlsMode.REQUIRED,
    )
    assert route.mx and not routers["full"].route("gmail.com", sender="", group=None, user=None).mx


def test_no_domain_is_an_error(routers):
    with pytest.raises(ValueError):
        routers["full"].route("", sender="", group=None, user=None)


def test_router_without_config():
    smart = Route(name="custom", kind=RouteKind.DELIVER, tls=TlsMode.NONE,
                  hops=(NextHop(host="10.1.1.1", port=None, literal=True, mx=False),))
    router = Router(
        routes={},
        sender_routes=[SenderRoute(users=("Bob",), route=smart)],
        default_tls=TlsMode.VERIFY,
    )
    assert router.route("gmail.com", sender="", group=None, user="bob") is smart
    assert router.route("gmail.com", sender="", group=None, user="alice").name == DEFAULT_ROUTE
    assert router.route("gmail.com", sender="", group=None, user="alice").tls is TlsMode.VERIFY


EXAMPLE_CASES = [
    # recipient domain, sender, group, user, route name, hops
    ("example.com", "a@gmail.com", None, None, 'routes."example.com"', "[10.0.0.5]:25 [10.0.0.6]:25"),
    ("branch.example.com", "a@gmail.com", None, None, 'routes."branch.example.com"', "mail.branch.example.com"),
    ("customer.test", "app@example.com", "apps", None, "sender_routes.apps", "smarthost.example.net:587"),
    ("customer.test", "ops@example.com", None, "SVC-APP", "sender_routes.apps", "smarthost.example.net:587"),
    ("customer.test", "x@apps.example.com", None, None, "sender_routes.apps", "smarthost.example.net:587"),
    ("customer.test", "scan@example.com", "scanners", None, 'routes."*"', "mx:customer.test"),
    ("customer.test", "alice@example.com", None, "alice", 'routes."*"', "mx:customer.test"),
    ("example.com", "app@example.com", "apps", None, 'routes."example.com"', "[10.0.0.5]:25 [10.0.0.6]:25"),
]


@pytest.mark.parametrize(("domain", "sender", "group", "user", "name", "hops"), EXAMPLE_CASES)
def test_shipped_example(domain, sender, group, user, name, hops):
    route = build_router(load_config(EXAMPLE)).route(domain, sender=sender, group=group, user=user)
    assert (route.name, " ".join(str(hop) for hop in route.hops)) == (name, hops)


# --- ETRN (RFC 1985): which domains a client may start -----------------------------------

ETRN_CONFIG = """
[relay]
hostname = "relay.example.com"
[routes."branch.example.org"]
hold = true
etrn = true
next_hops = ["mail.branch.example.org"]
[routes."*.branch.example.org"]
etrn = true
etrn_networks = ["198.51.100.0/24", "2001:db8::/32"]
next_hops = ["mx"]
[routes."closed.example.org"]
hold = true
next_hops = ["[10.0.0.9]"]
[sender_routes.apps]
sender_domains = ["branch2.example.org"]
next_hops = ["[10.0.0.10]"]
[listeners.internal]
address = "127.0.0.1"
port = 2525
"""


@pytest.fixture
def etrn_router(tmp_path) -> Router:
    path = tmp_path / "relay.toml"
    path.write_text(ETRN_CONFIG)
    return build_router(load_config(path))


@pytest.mark.parametrize("domain, client, expected", [
    ("branch.example.org", "203.0.113.5", ('routes."branch.example.org"', None)),
    ("BRANCH.example.org.", "203.0.113.5", ('routes."branch.example.org"', None)),
    ("a.branch.example.org", "198.51.100.7", ('routes."*.branch.example.org"', None)),
    ("a.branch.example.org", "::ffff:198.51.100.7", ('routes."*.branch.example.org"', None)),
    ("a.branch.example.org", "2001:db8::1", ('routes."*.branch.example.org"', None)),
    ("a.branch.example.org", "203.0.113.5",
     ('routes."*.branch.example.org"', "this client may not start the domain's queue")),
    ("closed.example.org", "198.51.100.7",
     ('routes."closed.example.org"', "ETRN is not enabled for this domain")),
    # No route of its own: MX, never ETRN (sender routes never match ETRN's empty sender).
    ("branch2.example.org", "198.51.100.7", (DEFAULT_ROUTE, "ETRN is not enabled for this domain")),
])
def test_etrn_refusal(etrn_router, domain, client, expected):
    import ipaddress
    assert etrn_router.etrn_refusal(domain, ipaddress.ip_address(client)) == expected


def test_atrn_domains_are_the_exact_routes_naming_the_user(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text("""
[relay]
hostname = "relay.example.com"
[auth]
users_file = "users"
[routes."shop.example.org"]
hold = true
atrn_users = ["Shop", "admin"]
[routes."shop2.example.org"]
hold = true
atrn_users = ["shop"]
[routes."closed.example.org"]
hold = true
[listeners.internal]
address = "127.0.0.1"
port = 2525
[listeners.internal.auth]
enabled = true
""")
    router = build_router(load_config(path))
    assert router.atrn_domains("SHOP") == ("shop.example.org", "shop2.example.org")
    assert router.atrn_domains("admin") == ("shop.example.org",)
    assert router.atrn_domains("nobody") == ()
