"""Error limit, STARTTLS (RFC 3207) and AUTH (RFC 4954) in the server core."""

import base64

import pytest
from smtpcore_helpers import (
    AUTH_FAIL,
    RCPT_REFUSED,
    Driver,
    codes,
    open_transaction,
    settings,
)

from relaywarden.smtp.events import (
    Auth,
    AuthResponse,
    Closed,
    DataEnd,
    Handled,
    MailFrom,
    RcptTo,
    StartTls,
)
from relaywarden.smtp.reply import TOO_MANY_ERRORS, reply
from relaywarden.smtp.server import ServerState, UsageError

# --- error limit ------------------------------------------------------------------------------


def test_error_limit_closes_with_421():
    d = Driver(settings(max_errors=3))
    replies = d.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert codes(replies) == ["500 5.5.2", "500 5.5.2", "500 5.5.2", "421 4.7.0"]
    assert replies[-1] == TOO_MANY_ERRORS
    assert d.closed == Closed(reason="errors", in_transaction=False)
    assert d.conn.closing


def test_negative_driver_replies_count_too():
    d = Driver(settings(max_errors=3), answers={RcptTo: RCPT_REFUSED})
    replies = d.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@x.y>\r\nNOOP\r\n"
                     b"RCPT TO:<b@x.y>\r\nFOO\r\nRCPT TO:<c@x.y>\r\n")
    assert codes(replies) == ["250", "250 2.1.0", "550 5.1.1", "250 2.0.0", "550 5.1.1",
                              "500 5.5.2", "421 4.7.0"]
    assert d.closed == Closed(reason="errors", in_transaction=True)
    assert len(d.of(RcptTo)) == 2


def test_data_end_problem_counts():
    d = Driver(settings(max_errors=1))
    open_transaction(d)
    replies = d.send(b"DATA\r\nbare\nlf\r\n.\r\n")
    assert codes(replies) == ["354", "550 5.6.0", "421 4.7.0"]
    assert d.closed == Closed(reason="errors", in_transaction=False)


def test_no_error_limit():
    d = Driver(settings(max_errors=0))
    assert codes(d.send(b"FOO\r\n" * 50)) == ["500 5.5.2"] * 50
    assert d.closed is None and d.conn.error_count == 50


def test_421_from_the_driver_closes_without_a_second_421():
    d = Driver(answers={MailFrom: reply(421, "4.3.2", "Shutting down")})
    replies = d.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nNOOP\r\n")
    assert codes(replies) == ["250", "421 4.3.2"]
    assert d.closed == Closed(reason="shutdown", in_transaction=False)


# --- STARTTLS -----------------------------------------------------------------------------------

TLS = settings(starttls=True, auth_mechanisms=("PLAIN",))


def test_starttls_discards_pipelined_plaintext():
    # CVE-2011-0411: what was sent with STARTTLS in the clear is never executed.
    d = Driver(TLS)
    d.start_tls_automatically = False
    replies = d.send(b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<v@x.y>\r\n")
    assert codes(replies) == ["250", "220 2.0.0"]
    assert "STARTTLS" in replies[0].lines
    assert d.of(StartTls) == [StartTls()]
    assert d.conn.state is ServerState.STARTTLS
    d.send(b"NOOP\r\n")                     # plaintext before the handshake: dropped too
    d.conn.tls_started()
    assert d.conn.state is ServerState.GREETED and d.conn.encrypted
    assert d.pump() == []
    assert d.of(MailFrom) == []
    replies = d.send(b"MAIL FROM:<a@b.c>\r\nEHLO x\r\n")
    assert codes(replies) == ["503 5.5.1", "250"]     # state reset to before EHLO
    assert "STARTTLS" not in replies[1].lines
    assert codes(d.send(b"STARTTLS\r\n")) == ["502 5.5.1"]


def test_starttls_forgets_the_session():
    d = Driver(TLS)
    d.start_tls_automatically = False
    d.send(b"EHLO x\r\nAUTH PLAIN AHUAcA==\r\n")
    assert d.conn.authenticated
    d.send(b"STARTTLS\r\n")
    d.conn.tls_started()
    assert not d.conn.authenticated          # RFC 3207 4.2: discard prior knowledge
    assert codes(d.send(b"EHLO x\r\nAUTH PLAIN AHUAcA==\r\n")) == ["250", "235 2.7.0"]


@pytest.mark.parametrize("before, line, code", [
    (b"", b"STARTTLS", "503 5.5.1"),                         # before EHLO
    (b"HELO x\r\n", b"STARTTLS", "503 5.5.1"),               # STARTTLS is an EHLO extension
    (b"EHLO x\r\n", b"STARTTLS now", "501 5.5.4"),
    (b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n", b"STARTTLS", "503 5.5.1"),
])
def test_starttls_errors(before, line, code):
    d = Driver(TLS)
    d.send(before)
    assert codes(d.send(line + b"\r\n")) == [code]
    assert d.of(StartTls) == []


def test_starttls_refused_by_driver_continues_in_plaintext():
    d = Driver(TLS, answers={StartTls: reply(454, "4.7.0", "TLS not available")})
    assert codes(d.send(b"EHLO x\r\nSTARTTLS\r\nNOOP\r\n")) == ["250", "454 4.7.0", "250 2.0.0"]
    assert not d.conn.encrypted and d.conn.state is ServerState.READY


def test_eof_while_waiting_for_tls():
    d = Driver(TLS)
    d.start_tls_automatically = False
    d.send(b"EHLO x\r\nSTARTTLS\r\n")
    d.eof()
    assert d.closed == Closed(reason="eof", in_transaction=False)


# --- AUTH -----------------------------------------------------------------------------------------

AUTH = settings(auth_mechanisms=("PLAIN", "LOGIN"))
PLAIN = base64.b64encode(b"\0user\0secret")


def test_auth_plain_with_initial_response():
    d = Driver(AUTH)
    replies = d.send(b"EHLO x\r\nAUTH PLAIN " + PLAIN + b"\r\n")
    assert codes(replies) == ["250", "235 2.7.0"]
    assert d.of(Auth) == [Auth(mechanism="PLAIN", initial=b"\0user\0secret")]
    assert d.conn.authenticated
    assert codes(d.send(b"AUTH PLAIN " + PLAIN + b"\r\n")) == ["503 5.5.1"]   # RFC 4954 4


def test_credentials_never_show():
    d = Driver(AUTH)
    d.challenges = [b"Password:"]
    d.send(b"EHLO x\r\nAUTH PLAIN " + PLAIN + b"\r\n" + base64.b64encode(b"secret") + b"\r\n")
    auth, response = d.of(Auth)[0], d.of(AuthResponse)[0]
    assert "secret" not in repr(auth) and "secret" not in repr(response)
    d2 = Driver(AUTH)
    d2.send(b"EHLO x\r\nAUTH PLAIN !!notbase64\r\n")
    assert d2.handled == [Handled("AUTH", "***", d2.handled[0].reply)]


@pytest.mark.parametrize("arg, initial", [
    (b"PLAIN =", b""), (b"plain", None), (b"Login", None), (b"PLAIN " + PLAIN, b"\0user\0secret"),
])
def test_auth_forms(arg, initial):
    d = Driver(AUTH)
    d.send(b"EHLO x\r\nAUTH " + arg + b"\r\n")
    (event,) = d.of(Auth)
    assert event.mechanism == arg.split()[0].decode().upper() and event.initial == initial


@pytest.mark.parametrize("before, line, code", [
    (b"EHLO x\r\n", b"AUTH", "501 5.5.4"),
    (b"EHLO x\r\n", b"AUTH PLAIN a b", "501 5.5.4"),
    (b"EHLO x\r\n", b"AUTH CRAM-MD5", "504 5.5.4"),
    (b"EHLO x\r\n", b"AUTH PLAIN !!!!", "501 5.5.2"),
    (b"EHLO x\r\n", b"AUTH PLAIN AHVzZXI", "501 5.5.2"),          # bad padding
    (b"", b"AUTH PLAIN", "503 5.5.1"),                            # before EHLO
    (b"HELO x\r\n", b"AUTH PLAIN", "503 5.5.1"),                  # AUTH is an extension
    (b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n", b"AUTH PLAIN", "503 5.5.1"),   # in a transaction
])
def test_auth_errors(before, line, code):
    d = Driver(AUTH)
    d.send(before)
    assert codes(d.send(line + b"\r\n")) == [code]
    assert d.of(Auth) == []


def test_auth_login_exchange_pipelined():
    d = Driver(AUTH)
    d.challenges = [b"Username:", b"Password:"]
    replies = d.send(b"EHLO x\r\nAUTH LOGIN\r\n" + base64.b64encode(b"user") + b"\r\n"
                     + base64.b64encode(b"pass") + b"\r\nMAIL FROM:<a@b.c>\r\n")
    assert [str(r) for r in replies[1:3]] == ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"]
    assert codes(replies[3:]) == ["235 2.7.0", "250 2.1.0"]
    assert [e.data for e in d.of(AuthResponse)] == [b"user", b"pass"]
    assert d.conn.authenticated


def test_auth_empty_challenge_and_empty_response():
    d = Driver(AUTH)
    d.challenges = [b""]
    replies = d.send(b"EHLO x\r\nAUTH PLAIN\r\n\r\n")
    assert d.out.count(b"334 \r\n") == 1
    assert d.of(AuthResponse)[0].data == b""
    assert codes(replies)[-1] == "235 2.7.0"


def test_auth_cancelled():
    d = Driver(AUTH)
    d.challenges = [b""]
    replies = d.send(b"EHLO x\r\nAUTH PLAIN\r\n*\r\nNOOP\r\n")
    assert codes(replies)[-2:] == ["501 5.0.0", "250 2.0.0"]
    assert replies[-2].lines == ("Authentication cancelled",)
    assert d.handled[0] == Handled("AUTH", "***", replies[-2])
    assert d.of(AuthResponse) == [] and not d.conn.authenticated


def test_auth_bad_base64_response():
    d = Driver(AUTH)
    d.challenges = [b""]
    replies = d.send(b"EHLO x\r\nAUTH PLAIN\r\n%%%\r\nNOOP\r\n")
    assert codes(replies)[-2:] == ["501 5.5.2", "250 2.0.0"]
    assert d.conn.state is ServerState.READY


def test_auth_response_with_bare_lf_is_refused():
    d = Driver(AUTH)
    d.challenges = [b""]
    replies = d.send(b"EHLO x\r\nAUTH PLAIN\r\nAHUAcA==\nNOOP\r\nNOOP\r\n")
    assert codes(replies)[-2:] == ["501 5.5.2", "250 2.0.0"]


def test_auth_failure_counts_and_allows_a_retry():
    d = Driver(AUTH, answers={Auth: AUTH_FAIL})
    assert codes(d.send(b"EHLO x\r\nAUTH PLAIN " + PLAIN + b"\r\n")) == ["250", "535 5.7.8"]
    assert d.conn.error_count == 1 and not d.conn.authenticated
    d.answers[Auth] = reply(235, "2.7.0", "OK")
    assert codes(d.send(b"AUTH PLAIN " + PLAIN + b"\r\n")) == ["235 2.7.0"]


def test_auth_challenge_only_for_auth():
    d = Driver(AUTH)
    d.conn.receive_data(b"EHLO x\r\n")
    d.conn.next_event()
    with pytest.raises(UsageError):
        d.conn.auth_challenge(b"x")


def test_eof_during_auth_exchange():
    d = Driver(AUTH)
    d.challenges = [b""]
    d.send(b"EHLO x\r\nAUTH PLAIN\r\n")
    d.eof()
    assert d.closed == Closed(reason="eof", in_transaction=False)
    assert d.of(DataEnd) == []
