"""The AUTH exchange (server/sasl.py) as tables: the AUTH command and the client's lines in,
each step out (a 334 challenge, the credentials to check, or the exact refusal), and the
credential check with fakes for the checkers and a real throttle."""

from __future__ import annotations

import asyncio
import hmac

import pytest

from relaywarden.auth import AuthResult
from relaywarden.auth.cram import CramSecrets
from relaywarden.auth.throttle import AuthThrottle, ThrottleSettings
from relaywarden.server import sasl
from relaywarden.server.sasl import Challenge, Credentials, Failed, SaslExchange

MALFORMED = b"501 5.5.2 Cannot decode the authentication data\r\n"
INVALID = b"535 5.7.8 Authentication credentials invalid\r\n"
CRAM = b"<4242.1700000000@relay.test>"


def exchange() -> SaslExchange:
    return SaslExchange("relay.test", nonce=lambda: 4242, clock=lambda: 1700000000.9)


def shown(step) -> tuple:
    """A step as a row of the table: challenges and credentials as they are, refusals as
    (mechanism, the reply on the wire, the log's detail)."""
    if isinstance(step, Failed):
        return ("failed", step.mechanism, step.reply.to_bytes(), step.detail)
    return step


# (AUTH mechanism, initial response, [client lines]) -> [the step after AUTH, after each line]
CASES = [
    # PLAIN (RFC 4616): authzid NUL authcid NUL passwd, at once or after an empty challenge.
    ("PLAIN", b"\0ann\0secret", [], [Credentials("PLAIN", "ann", "secret")]),
    ("PLAIN", b"ann\0ann\0secret", [], [Credentials("PLAIN", "ann", "secret")]),
    ("PLAIN", None, [b"\0ann\0secret"],
     [Challenge(b""), Credentials("PLAIN", "ann", "secret")]),
    ("PLAIN", b"\0ann\0", [], [Credentials("PLAIN", "ann", "")]),
    ("PLAIN", b"bob\0ann\0secret", [],
     [("failed", "PLAIN", INVALID, "authorization identity refused")]),
    ("PLAIN", b"ann\0secret", [], [("failed", "PLAIN", MALFORMED, "malformed PLAIN response")]),
    ("PLAIN", b"\0a\0b\0c", [], [("failed", "PLAIN", MALFORMED, "malformed PLAIN response")]),
    ("PLAIN", None, [b"nonsense"],
     [Challenge(b""), ("failed", "PLAIN", MALFORMED, "malformed PLAIN response")]),
    ("PLAIN", b"\0ann\0\xff\xfe", [],
     [("failed", "PLAIN", MALFORMED, "credentials are not UTF-8")]),
    ("PLAIN", "\0zoë\0pässword".encode(), [], [Credentials("PLAIN", "zoë", "pässword")]),
    # LOGIN: user name, then password, each after its challenge (or the name at once).
    ("LOGIN", None, [b"ann", b"secret"],
     [Challenge(b"Username:"), Challenge(b"Password:"), Credentials("LOGIN", "ann", "secret")]),
    ("LOGIN", b"ann", [b"secret"],
     [Challenge(b"Password:"), Credentials("LOGIN", "ann", "secret")]),
    ("LOGIN", None, [b"\xff", b"secret"],
     [Challenge(b"Username:"), Challenge(b"Password:"),
      ("failed", "LOGIN", MALFORMED, "credentials are not UTF-8")]),
    # CRAM-MD5 (RFC 2195): a msg-id challenge, "name hexdigest" back.
    ("CRAM-MD5", None, [b"ann " + b"0123456789abcdef" * 2],
     [Challenge(CRAM), Credentials("CRAM-MD5", "ann", "0123456789abcdef" * 2, CRAM)]),
    ("CRAM-MD5", None, [b"ann smith " + b"A" * 32],
     [Challenge(CRAM), Credentials("CRAM-MD5", "ann smith", "A" * 32, CRAM)]),
    ("CRAM-MD5", b"ann x", [],
     [("failed", "CRAM-MD5", MALFORMED, "CRAM-MD5 with an initial response")]),
    ("CRAM-MD5", None, [b"ann 0123"],
     [Challenge(CRAM), ("failed", "CRAM-MD5", MALFORMED, "malformed CRAM-MD5 response")]),
    ("CRAM-MD5", None, [b"0123456789abcdef" * 2],
     [Challenge(CRAM), ("failed", "CRAM-MD5", MALFORMED, "malformed CRAM-MD5 response")]),
    ("CRAM-MD5", None, [b"ann " + b"g" * 32],
     [Challenge(CRAM), ("failed", "CRAM-MD5", MALFORMED, "malformed CRAM-MD5 response")]),
]


@pytest.mark.parametrize("mechanism,initial,lines,steps", CASES)
def test_the_exchange(mechanism, initial, lines, steps):
    machine = exchange()
    got = [machine.start(mechanism, initial)]
    assert machine.active is isinstance(got[-1], Challenge)
    for line in lines:
        got.append(machine.respond(line))
        assert machine.active is isinstance(got[-1], Challenge)
    assert [shown(step) for step in got] == steps


def test_a_new_exchange_starts_over():
    machine = exchange()
    assert machine.start("LOGIN", None) == Challenge(b"Username:")
    machine.reset()              # the core answered "*" (RFC 4954 4: cancelled)
    assert not machine.active
    assert machine.start("PLAIN", b"\0ann\0pw") == Credentials("PLAIN", "ann", "pw")
    assert not machine.active


def test_a_line_without_an_exchange_is_the_drivers_bug():
    machine = exchange()
    with pytest.raises(RuntimeError):
        machine.respond(b"secret")
    assert machine.start("PLAIN", b"\0ann\0pw") == Credentials("PLAIN", "ann", "pw")
    with pytest.raises(RuntimeError):      # the exchange is over: idle again
        machine.respond(b"again")


def test_each_cram_challenge_is_new():
    nonces = iter([1, 2])
    machine = SaslExchange("relay.test", nonce=lambda: next(nonces), clock=lambda: 7.0)
    first, second = machine.start("CRAM-MD5", None), machine.start("CRAM-MD5", None)
    assert (first, second) == (Challenge(b"<1.7@relay.test>"), Challenge(b"<2.7@relay.test>"))
    # The digest is checked against the challenge of its own exchange.
    step = machine.respond(b"ann " + b"0" * 32)
    assert isinstance(step, Credentials) and step.challenge == b"<2.7@relay.test>"


@pytest.mark.parametrize("challenge,octets", [
    (b"", 6), (b"Username:", 18), (b"Password:", 18), (CRAM, 46)])
def test_challenge_octets(challenge, octets):
    """What a 334 line costs on the wire: "334 " + base64 + CRLF (the protocol log's
    sc-bytes)."""
    import base64
    assert sasl.challenge_octets(challenge) == octets == len(
        b"334 " + base64.b64encode(challenge) + b"\r\n")


class Backend:
    def __init__(self, result: AuthResult) -> None:
        self.result = result
        self.asked: list[tuple[str, str]] = []

    async def verify(self, name: str, password: str) -> AuthResult:
        self.asked.append((name, password))
        return self.result


def throttle() -> AuthThrottle:
    return AuthThrottle(ThrottleSettings(delays=(0.0,), client_limit=2, user_limit=5))


def check(credentials, **kwargs) -> AuthResult:
    kwargs.setdefault("backend", None)
    kwargs.setdefault("cram", None)
    kwargs.setdefault("throttle", None)
    return asyncio.run(sasl.authenticate(credentials, client="192.0.2.7", **kwargs))


def test_a_password_goes_to_the_backend():
    backend = Backend(AuthResult.success("Ann", ["staff"], backend="file"))
    result = check(Credentials("PLAIN", "ann", "secret"), backend=backend)
    assert backend.asked == [("ann", "secret")]
    assert (result.ok, result.user, result.reply.to_bytes()) == (
        True, "Ann", b"235 2.7.0 Authentication successful\r\n")


def test_without_a_backend_the_answer_is_temporary():
    result = check(Credentials("LOGIN", "ann", "secret"))
    assert (result.ok, result.detail, result.reply.to_bytes()) == (
        False, "no authentication backend", b"454 4.7.0 Temporary authentication failure\r\n")


def test_cram_md5_is_checked_against_the_shared_secret():
    secrets = CramSecrets({"ann": ("Ann", "tanstaaf")})
    digest = hmac.new(b"tanstaaf", CRAM, "md5").hexdigest()
    good = check(Credentials("CRAM-MD5", "ann", digest, CRAM), cram=secrets,
                 backend=Backend(AuthResult.failure("not asked")))
    assert (good.ok, good.user, good.backend) == (True, "Ann", "cram-md5")
    bad = check(Credentials("CRAM-MD5", "ann", "0" * 32, CRAM), cram=secrets)
    assert (bad.ok, bad.detail, bad.reply.to_bytes()) == (False, "wrong digest", INVALID)
    none = check(Credentials("CRAM-MD5", "ann", digest, CRAM))
    assert (none.ok, none.detail) == (False, "no CRAM-MD5 secrets")


def test_the_throttle_counts_failures():
    t = throttle()
    wrong = Backend(AuthResult.failure("wrong password", backend="file"))
    check(Credentials("PLAIN", "ann", "x"), backend=wrong, throttle=t)
    check(Credentials("PLAIN", "ann", "y"), backend=wrong, throttle=t)
    verdict = t.check(client="192.0.2.7", user="ann")
    assert verdict.locked, verdict


def test_a_temporary_failure_is_not_counted():
    t = throttle()
    down = Backend(AuthResult.unavailable("ldap down", backend="ldap"))
    for _ in range(3):
        result = check(Credentials("PLAIN", "ann", "x"), backend=down, throttle=t)
        assert result.temporary
    assert not t.check(client="192.0.2.7", user="ann").locked
