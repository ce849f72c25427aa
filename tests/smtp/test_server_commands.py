"""Commands, sequence, parameters and replies of the server core (RFC 5321 4.1, 4.1.4)."""

import pytest
from smtpcore_helpers import (
    GREETING,
    QUEUED,
    RCPT_REFUSED,
    Driver,
    codes,
    open_transaction,
    settings,
)

from relaywarden.smtp.address import Address
from relaywarden.smtp.events import (
    NEED_DATA,
    Closed,
    DataStart,
    Handled,
    Hello,
    MailFrom,
    MailParams,
    RcptParams,
    RcptTo,
)
from relaywarden.smtp.reply import START_DATA, reply
from relaywarden.smtp.server import ServerConnection, ServerState, UsageError

# --- greeting ------------------------------------------------------------------------------


def test_greeting_is_sent_and_state_is_greeted():
    conn = ServerConnection(settings())
    assert conn.state is ServerState.CONNECTED
    conn.greet(GREETING)
    assert conn.data_to_send() == b"220 mx.test ESMTP\r\n"
    assert conn.state is ServerState.GREETED
    assert conn.data_to_send() == b""


def test_nothing_is_read_before_the_greeting():
    conn = ServerConnection(settings())
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() is NEED_DATA
    conn.greet(GREETING)
    assert isinstance(conn.next_event(), Handled)


@pytest.mark.parametrize("code", [250, 500, 221])
def test_greeting_must_be_220_554_or_421(code):
    conn = ServerConnection(settings())
    with pytest.raises(UsageError):
        conn.greet(reply(code, None, "x"))


def test_greet_twice_is_a_usage_error():
    conn = ServerConnection(settings())
    conn.greet(GREETING)
    with pytest.raises(UsageError):
        conn.greet(GREETING)


def test_554_greeting_serves_only_quit():
    # RFC 5321 3.1: after 554 the server waits for QUIT and answers 503 to anything else.
    d = Driver(greet=False)
    d.conn.greet(reply(554, "5.7.1", "Not for you"))
    assert d.conn.data_to_send() == b"554 5.7.1 Not for you\r\n"
    assert d.conn.state is ServerState.CLOSING
    assert codes(d.send(b"EHLO x\r\nNOOP\r\nFOO\r\nMAIL FROM:<a@b.c>\r\n")) == ["503 5.5.1"] * 4
    assert d.of(Hello) == []
    assert codes(d.send(b"QUIT\r\n")) == ["221 2.0.0"]
    assert d.closed == Closed(reason="quit", in_transaction=False)


def test_421_greeting_closes():
    d = Driver(greet=False)
    d.conn.greet(reply(421, "4.3.2", "Shutting down"))
    assert d.conn.closing
    assert d.conn.next_event() == Closed(reason="shutdown", in_transaction=False)


# --- simple commands -------------------------------------------------------------------------


@pytest.mark.parametrize("line, wire", [
    (b"NOOP", "250 2.0.0 OK"),
    (b"noop", "250 2.0.0 OK"),
    (b"NoOp ignored argument", "250 2.0.0 OK"),
    (b"HELP", "214-2.0.0"),
    (b"HELP MAIL", "214-2.0.0"),
    (b"VRFY someone", "252 2.5.0 Cannot VRFY user, but will accept message"),
    (b"VRFY", "501 5.5.4"),
    (b"EXPN list", "502 5.5.1"),
    (b"FOO", "500 5.5.2"),
    (b"", "500 5.5.2"),
    (b" NOOP", "500 5.5.2"),
    (b"BDAT 10 LAST", "502 5.5.1"),       # CHUNKING is not offered
    (b"ETRN example.com", "502 5.5.1"),
    (b"RSET", "250 2.0.0"),
    (b"RSET now", "501 5.5.4"),
    (b"QUIT now", "501 5.5.4"),
    (b"STARTTLS", "502 5.5.1"),           # not offered by default
    (b"AUTH PLAIN", "503 5.5.1"),         # no mechanisms configured
])
def test_core_answers(line, wire):
    d = Driver()
    d.send(b"EHLO client.test\r\n")
    replies = d.send(line + b"\r\n")
    assert len(replies) == 1
    assert replies[0].to_bytes().decode().startswith(wire)
    handled = d.handled[-1]
    assert handled.reply == replies[0]


def test_handled_carries_verb_and_argument():
    d = Driver()
    d.send(b"vrfy someone@example.com\r\n")
    assert d.handled == [Handled("VRFY", "someone@example.com", d.handled[0].reply)]


def test_quit():
    d = Driver()
    assert codes(d.send(b"QUIT\r\n")) == ["221 2.0.0"]
    assert d.closed == Closed(reason="quit", in_transaction=False)
    assert d.conn.closing and d.conn.state is ServerState.CLOSED
    # After Closed: Closed again, and any further bytes are ignored.
    assert d.conn.next_event() == d.closed
    d.conn.receive_data(b"NOOP\r\n")
    assert d.conn.next_event() == d.closed
    assert d.conn.data_to_send() == b""


def test_quit_in_transaction_is_reported():
    d = Driver()
    open_transaction(d)
    d.send(b"QUIT\r\n")
    assert d.closed == Closed(reason="quit", in_transaction=True)


def test_commands_after_quit_in_same_packet_are_not_answered():
    d = Driver()
    assert codes(d.send(b"QUIT\r\nNOOP\r\n")) == ["221 2.0.0"]


# --- EHLO / HELO -----------------------------------------------------------------------------


def test_ehlo_event_and_reply():
    d = Driver()
    replies = d.send(b"EHLO client.test\r\n")
    assert d.of(Hello) == [Hello(name="client.test", extended=True)]
    assert replies[0].lines == ("mx.test hello", "PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8",
                                "ENHANCEDSTATUSCODES", "DSN")
    assert replies[0].enhanced is None           # RFC 2034 3: not on EHLO replies
    assert d.conn.state is ServerState.READY


def test_ehlo_reply_follows_settings():
    conf = settings(max_message_size=1000, smtputf8=False, dsn=False, starttls=True,
                    auth_mechanisms=("plain", "LOGIN"))
    d = Driver(conf)
    (r,) = d.send(b"EHLO client.test\r\n")
    assert r.lines == ("mx.test hello", "PIPELINING", "SIZE 1000", "8BITMIME",
                       "ENHANCEDSTATUSCODES", "STARTTLS", "AUTH PLAIN LOGIN")


def test_helo_gets_a_single_line_without_extensions():
    d = Driver()
    replies = d.send(b"HELO client.test\r\n")
    assert d.of(Hello) == [Hello(name="client.test", extended=False)]
    assert replies == [reply(250, None, "mx.test hello")]


@pytest.mark.parametrize("line", [b"EHLO", b"EHLO ", b"HELO", b"EHLO two words"])
def test_hello_syntax(line):
    d = Driver()
    assert codes(d.send(line + b"\r\n")) == ["501 5.5.4"]
    assert d.conn.state is ServerState.GREETED


def test_hello_accepts_address_literal_and_odd_names():
    d = Driver()
    d.send(b"EHLO [192.0.2.1]\r\nHELO printer_01\r\n")
    assert [h.name for h in d.of(Hello)] == ["[192.0.2.1]", "printer_01"]


def test_hello_refused_by_driver_keeps_state_and_counts():
    d = Driver(answers={Hello: reply(550, "5.7.1", "Go away")})
    assert codes(d.send(b"EHLO bad\r\nMAIL FROM:<a@b.c>\r\n")) == ["550 5.7.1", "503 5.5.1"]
    assert d.conn.state is ServerState.GREETED
    assert d.conn.error_count == 2


def test_ehlo_resets_the_transaction():
    d = Driver()
    open_transaction(d)
    assert codes(d.send(b"EHLO again\r\nRCPT TO:<x@y.z>\r\nMAIL FROM:<a@b.c>\r\n")) == [
        "250", "503 5.5.1", "250 2.1.0"]


# --- MAIL ------------------------------------------------------------------------------------


def mail(line: bytes, conf=None, ehlo=b"EHLO client.test\r\n"):
    d = Driver(conf)
    d.send(ehlo)
    replies = d.send(line + b"\r\n")
    events = d.of(MailFrom)
    return codes(replies), (events[0] if events else None), d


def test_mail_before_hello_is_503():
    d = Driver()
    assert codes(d.send(b"MAIL FROM:<a@b.c>\r\n")) == ["503 5.5.1"]


@pytest.mark.parametrize("line", [
    b"MAIL FROM:<a@b.c>", b"MAIL FROM: <a@b.c>", b"mail from:<a@b.c>", b"Mail From:  <a@b.c>",
])
def test_mail_forms(line):
    result, event, _ = mail(line)
    assert result == ["250 2.1.0"]
    assert event == MailFrom(Address("a", "b.c"), MailParams())


def test_null_sender():
    result, event, _ = mail(b"MAIL FROM:<>")
    assert result == ["250 2.1.0"] and event.sender is None


@pytest.mark.parametrize("line, code", [
    (b"MAIL", "501 5.5.4"),
    (b"MAIL FROM", "501 5.5.4"),
    (b"MAIL TO:<a@b.c>", "501 5.5.4"),
    (b"MAIL FROM:a@b.c", "501 5.1.7"),              # no angle brackets
    (b"MAIL FROM:<a@b.c", "501 5.1.7"),
    (b"MAIL FROM:<a@b.c>SIZE=10", "501 5.1.7"),
    (b"MAIL FROM:<a b@c.d>", "501 5.1.7"),
    (b"MAIL FROM:<postmaster>", "553 5.1.7"),        # postmaster alone: RCPT only
    (b"MAIL FROM:<j\xc3\xb6rg@b.c>", "553 5.6.7"),   # UTF-8 without SMTPUTF8
    (b"MAIL FROM:<a@b.c> SIZE=abc", "501 5.5.4"),
    (b"MAIL FROM:<a@b.c> SIZE=", "501 5.5.4"),
    (b"MAIL FROM:<a@b.c> SIZE", "501 5.5.4"),
    (b"MAIL FROM:<a@b.c> SIZE=-1", "501 5.5.4"),
    (b"MAIL FROM:<a@b.c> BODY=BINARYMIME", "501 5.5.4"),
    (b"MAIL FROM:<a@b.c> BODY=7BIT BODY=7BIT", "501 5.5.4"),
    (b"MAIL FROM:<a@b.c> SIZE=1 size=2", "501 5.5.4"),
    (b"MAIL FROM:<a@b.c> XFOO=1", "555 5.5.4"),
    (b"MAIL FROM:<a@b.c> XFOO", "555 5.5.4"),
    (b"MAIL FROM:<a@b.c> =1", "501 5.5.4"),
    (b"MAIL FROM:<a@b.c> SMTPUTF8=yes", "501 5.5.4"),
    (b"MAIL FROM:<a@b.c> RET=ALL", "501 5.5.4"),
    (b"MAIL FROM:<a@b.c> ENVID=a+2", "501 5.5.4"),
    (b"MAIL FROM:<a@b.c> ENVID=" + b"x" * 101, "501 5.5.4"),
    (b"MAIL FROM:<a@b.c> AUTH=<>", "555 5.5.4"),     # AUTH not offered
    (b"MAIL FROM:<a@b.c> ENVID=a+0D+0AX-Evil:+20y", "501 5.5.4"),   # decoded CRLF
])
def test_mail_errors(line, code):
    assert mail(line)[0] == [code]


@pytest.mark.parametrize("params, expected", [
    (b"SIZE=100", MailParams(size=100)),
    (b"SIZE=0", MailParams(size=0)),
    (b"BODY=8bitmime", MailParams(body="8BITMIME")),
    (b"BODY=7BIT", MailParams(body="7BIT")),
    (b"SMTPUTF8", MailParams(smtputf8=True)),
    (b"RET=hdrs ENVID=abc+2Bdef", MailParams(ret="HDRS", envid="abc+def")),
    (b"RET=FULL", MailParams(ret="FULL")),
    (b"SIZE=5  BODY=8BITMIME SMTPUTF8", MailParams(size=5, body="8BITMIME", smtputf8=True)),
])
def test_mail_params(params, expected):
    result, event, _ = mail(b"MAIL FROM:<a@b.c> " + params)
    assert result == ["250 2.1.0"]
    assert event.params == expected


def test_size_over_the_limit_is_refused_at_mail():
    # RFC 1870 6.1: a declared size over the fixed maximum is 552 at MAIL.
    conf = settings(max_message_size=1000)
    assert mail(b"MAIL FROM:<a@b.c> SIZE=1000", conf)[0] == ["250 2.1.0"]
    assert mail(b"MAIL FROM:<a@b.c> SIZE=1001", conf)[0] == ["552 5.3.4"]


def test_smtputf8_sender():
    result, event, _ = mail("MAIL FROM:<jörg@bücher.example> SMTPUTF8".encode())
    assert result == ["250 2.1.0"]
    assert event.sender == Address("jörg", "xn--bcher-kva.example")


def test_smtputf8_disabled():
    conf = settings(smtputf8=False)
    assert mail(b"MAIL FROM:<a@b.c> SMTPUTF8", conf)[0] == ["555 5.5.4"]


def test_dsn_disabled():
    conf = settings(dsn=False)
    assert mail(b"MAIL FROM:<a@b.c> RET=FULL", conf)[0] == ["555 5.5.4"]
    assert mail(b"MAIL FROM:<a@b.c> ENVID=x", conf)[0] == ["555 5.5.4"]


def test_auth_param_when_auth_is_offered():
    conf = settings(auth_mechanisms=("PLAIN",))
    result, event, _ = mail(b"MAIL FROM:<a@b.c> AUTH=user+40example.com", conf)
    assert result == ["250 2.1.0"] and event.params.auth == "user@example.com"
    assert mail(b"MAIL FROM:<a@b.c> AUTH=<>", conf)[1].params.auth == "<>"


def test_params_after_helo_are_refused():
    # RFC 1869: parameters belong to ESMTP; after HELO they are not recognized.
    assert mail(b"MAIL FROM:<a@b.c> SIZE=10", ehlo=b"HELO x\r\n")[0] == ["555 5.5.4"]
    assert mail(b"MAIL FROM:<a@b.c>", ehlo=b"HELO x\r\n")[0] == ["250 2.1.0"]


def test_nested_mail_is_503():
    d = Driver()
    open_transaction(d, rcpts=0)
    assert codes(d.send(b"MAIL FROM:<a@b.c>\r\n")) == ["503 5.5.1"]
    d.send(b"RCPT TO:<r@x.y>\r\n")
    assert codes(d.send(b"MAIL FROM:<a@b.c>\r\n")) == ["503 5.5.1"]


def test_mail_refused_by_driver_opens_no_transaction():
    d = Driver(answers={MailFrom: reply(550, "5.7.1", "Sender refused")})
    assert codes(d.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<r@x.y>\r\n")) == [
        "250", "550 5.7.1", "503 5.5.1"]
    assert d.conn.state is ServerState.READY


# --- RCPT ------------------------------------------------------------------------------------


def rcpt(line: bytes, conf=None, mail_line=b"MAIL FROM:<a@b.c>"):
    d = Driver(conf)
    d.send(b"EHLO client.test\r\n" + mail_line + b"\r\n")
    replies = d.send(line + b"\r\n")
    events = d.of(RcptTo)
    return codes(replies), (events[0] if events else None), d


def test_rcpt_sequence():
    d = Driver()
    assert codes(d.send(b"RCPT TO:<r@x.y>\r\n")) == ["503 5.5.1"]
    assert codes(d.send(b"EHLO x\r\nRCPT TO:<r@x.y>\r\n")) == ["250", "503 5.5.1"]


@pytest.mark.parametrize("line, recipient", [
    (b"RCPT TO:<r@x.y>", Address("r", "x.y")),
    (b"RCPT TO: <r@x.y>", Address("r", "x.y")),
    (b"rcpt to:<R@X.Y>", Address("R", "x.y")),
    (b"RCPT TO:<postmaster>", Address("postmaster", "")),
    (b"RCPT TO:<@hop.net:r@x.y>", Address("r", "x.y", route=("hop.net",))),
])
def test_rcpt_forms(line, recipient):
    result, event, _ = rcpt(line)
    assert result == ["250 2.1.5"]
    assert event == RcptTo(recipient, RcptParams())


@pytest.mark.parametrize("line, code", [
    (b"RCPT", "501 5.5.4"),
    (b"RCPT FROM:<r@x.y>", "501 5.5.4"),
    (b"RCPT TO:<>", "501 5.5.4"),
    (b"RCPT TO:r@x.y", "501 5.1.3"),
    (b"RCPT TO:<r@x..y>", "501 5.1.3"),
    (b"RCPT TO:<j\xc3\xb6rg@x.y>", "553 5.6.7"),
    (b"RCPT TO:<r@x.y> NOTIFY=NEVER,SUCCESS", "501 5.5.4"),
    (b"RCPT TO:<r@x.y> NOTIFY=BOGUS", "501 5.5.4"),
    (b"RCPT TO:<r@x.y> NOTIFY=SUCCESS,SUCCESS", "501 5.5.4"),
    (b"RCPT TO:<r@x.y> NOTIFY", "501 5.5.4"),
    (b"RCPT TO:<r@x.y> ORCPT=nosemicolon", "501 5.5.4"),
    (b"RCPT TO:<r@x.y> ORCPT=rfc822;", "501 5.5.4"),
    (b"RCPT TO:<r@x.y> ORCPT=rfc822;a+zz", "501 5.5.4"),
    (b"RCPT TO:<r@x.y> NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4"),
    (b"RCPT TO:<r@x.y> ORCPT=rfc822;a+0Ab@c.d", "501 5.5.4"),      # decoded LF
    (b"RCPT TO:<r@x.y> SIZE=10", "555 5.5.4"),
    (b"RCPT TO:<r@x.y> XFOO", "555 5.5.4"),
])
def test_rcpt_errors(line, code):
    assert rcpt(line)[0] == [code]


@pytest.mark.parametrize("params, expected", [
    (b"NOTIFY=NEVER", RcptParams(notify=("NEVER",))),
    (b"NOTIFY=success,Failure", RcptParams(notify=("SUCCESS", "FAILURE"))),
    (b"NOTIFY=DELAY", RcptParams(notify=("DELAY",))),
    (b"ORCPT=rfc822;user+40example.com", RcptParams(orcpt="rfc822;user@example.com")),
    (b"NOTIFY=FAILURE ORCPT=RFC822;a+2Bb@c.d",
     RcptParams(notify=("FAILURE",), orcpt="RFC822;a+b@c.d")),
])
def test_rcpt_params(params, expected):
    result, event, _ = rcpt(b"RCPT TO:<r@x.y> " + params)
    assert result == ["250 2.1.5"] and event.params == expected


def test_rcpt_dsn_disabled():
    assert rcpt(b"RCPT TO:<r@x.y> NOTIFY=NEVER", settings(dsn=False))[0] == ["555 5.5.4"]


def test_rcpt_utf8_after_smtputf8_mail():
    result, event, _ = rcpt("RCPT TO:<jörg@bücher.example>".encode(),
                            mail_line=b"MAIL FROM:<a@b.c> SMTPUTF8")
    assert result == ["250 2.1.5"] and event.recipient.local == "jörg"


def test_recipient_limit_is_answered_by_the_core():
    # RFC 5321 4.5.3.1.10: 452 beyond the limit; the driver is not asked; not an error.
    d = Driver(settings(max_recipients=2, max_errors=2),
               answers={RcptTo: lambda ev: RCPT_REFUSED if ev.recipient.local == "bad"
                        else reply(250, "2.1.5", "OK")})
    d.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n")
    replies = d.send(b"RCPT TO:<r1@x.y>\r\nRCPT TO:<bad@x.y>\r\nRCPT TO:<r2@x.y>\r\n"
                     b"RCPT TO:<r3@x.y>\r\nRCPT TO:<r4@x.y>\r\nRCPT TO:<r5@x.y>\r\n")
    assert codes(replies) == ["250 2.1.5", "550 5.1.1", "250 2.1.5",
                              "452 4.5.3", "452 4.5.3", "452 4.5.3"]
    assert [e.recipient.local for e in d.of(RcptTo)] == ["r1", "bad", "r2"]
    assert [h.reply.code for h in d.handled] == [452, 452, 452]
    assert d.closed is None


# --- DATA (the command) -----------------------------------------------------------------------


def test_data_sequence():
    d = Driver()
    assert codes(d.send(b"DATA\r\n")) == ["503 5.5.1"]
    assert codes(d.send(b"EHLO x\r\nDATA\r\n")) == ["250", "503 5.5.1"]
    assert codes(d.send(b"MAIL FROM:<a@b.c>\r\nDATA\r\n")) == ["250 2.1.0", "503 5.5.1"]


def test_data_after_only_refused_recipients_is_554():
    # RFC 2920 3.1: never 354 without a valid recipient; 554 tells the client why.
    d = Driver(answers={RcptTo: RCPT_REFUSED})
    replies = d.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<r@x.y>\r\nRCPT TO:<bad\r\n"
                     b"DATA\r\n")
    assert codes(replies) == ["250", "250 2.1.0", "550 5.1.1", "501 5.1.3", "554 5.5.1"]
    assert replies[-1].lines == ("No valid recipients",)
    assert d.of(DataStart) == []


def test_data_with_argument_is_501():
    d = Driver()
    open_transaction(d)
    assert codes(d.send(b"DATA now\r\n")) == ["501 5.5.4"]


def test_data_refused_by_driver_keeps_the_transaction():
    d = Driver(answers={DataStart: reply(451, "4.3.0", "Try later")})
    open_transaction(d)
    assert codes(d.send(b"DATA\r\n")) == ["451 4.3.0"]
    assert d.conn.state is ServerState.RCPT
    d.answers[DataStart] = START_DATA
    assert codes(d.send(b"DATA\r\n.\r\n")) == ["354", "250 2.0.0"]


def test_rset_ends_the_transaction():
    d = Driver()
    open_transaction(d)
    assert codes(d.send(b"RSET\r\nDATA\r\nRCPT TO:<r@x.y>\r\n")) == [
        "250 2.0.0", "503 5.5.1", "503 5.5.1"]
    assert d.conn.state is ServerState.READY


def test_rset_before_hello_stays_greeted():
    d = Driver()
    d.send(b"RSET\r\n")
    assert d.conn.state is ServerState.GREETED


# --- pipelining (RFC 2920) --------------------------------------------------------------------


def test_pipelined_session_replies_in_order():
    d = Driver(answers={RcptTo: lambda ev: RCPT_REFUSED if ev.recipient.local == "bad"
                        else reply(250, "2.1.5", "OK")})
    replies = d.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<bad@x.y>\r\nNOOP\r\n"
                     b"RCPT TO:<good@x.y>\r\nFOO\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"
                     b"QUIT\r\n")
    assert codes(replies) == ["250", "250 2.1.0", "550 5.1.1", "250 2.0.0", "250 2.1.5",
                              "500 5.5.2", "354", "250 2.0.0", "221 2.0.0"]
    assert d.body == b"Subject: hi\r\n\r\nbody\r\n"


def test_input_after_a_pending_decision_stays_buffered():
    conn = ServerConnection(settings())
    conn.greet(GREETING)
    conn.data_to_send()
    conn.receive_data(b"EHLO x\r\nNOOP\r\nMAIL FROM:<a@b.c>\r\n")
    assert conn.next_event() == Hello("x", True)
    # Nothing after EHLO is answered before the driver decides on EHLO.
    assert conn.data_to_send() == b""
    with pytest.raises(UsageError):
        conn.next_event()
    conn.respond(conn.ehlo_reply())
    assert isinstance(conn.next_event(), Handled)                 # NOOP
    assert isinstance(conn.next_event(), MailFrom)
    out = conn.data_to_send().decode()
    assert out.startswith("250-mx.test") and out.endswith("250 2.0.0 OK\r\n")


# --- driver misuse ------------------------------------------------------------------------------


def test_respond_without_pending_decision():
    conn = ServerConnection(settings())
    conn.greet(GREETING)
    with pytest.raises(UsageError, match="no decision is pending"):
        conn.respond(QUEUED)


def test_respond_twice():
    conn = ServerConnection(settings())
    conn.greet(GREETING)
    conn.receive_data(b"EHLO x\r\n")
    conn.next_event()
    conn.respond(conn.ehlo_reply())
    with pytest.raises(UsageError):
        conn.respond(conn.ehlo_reply())


@pytest.mark.parametrize("wrong", [START_DATA, reply(221, "2.0.0", "x"), reply(334, None, "x")])
def test_respond_with_a_positive_code_that_does_not_fit(wrong):
    conn = ServerConnection(settings())
    conn.greet(GREETING)
    conn.receive_data(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n")
    conn.next_event()
    conn.respond(conn.ehlo_reply())
    conn.next_event()
    with pytest.raises(UsageError):
        conn.respond(wrong)


def test_250_is_not_an_answer_to_data_start():
    d = Driver()
    open_transaction(d)
    d.conn.receive_data(b"DATA\r\n")
    assert isinstance(d.conn.next_event(), DataStart)
    with pytest.raises(UsageError):
        d.conn.respond(QUEUED)


def test_receive_after_eof_is_a_usage_error():
    conn = ServerConnection(settings())
    conn.greet(GREETING)
    conn.receive_data(b"NOOP\r\n")
    conn.receive_data(b"")
    with pytest.raises(UsageError):
        conn.receive_data(b"NOOP\r\n")
    conn.receive_data(b"")            # a second EOF is harmless


def test_auth_challenge_and_tls_started_out_of_place():
    conn = ServerConnection(settings())
    conn.greet(GREETING)
    with pytest.raises(UsageError):
        conn.auth_challenge(b"x")
    with pytest.raises(UsageError):
        conn.tls_started()
