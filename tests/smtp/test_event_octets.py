"""What the core tells the driver of each line as received (for the protocol log): its
octets, and for MAIL and RCPT the argument with its parameters."""

from __future__ import annotations

from smtpcore_helpers import Driver, settings

from relaywarden.smtp._data import BareLineEnds
from relaywarden.smtp.client import ReplyParser
from relaywarden.smtp.events import (
    Auth,
    AuthResponse,
    DataEnd,
    DataStart,
    Etrn,
    Handled,
    Hello,
    MailFrom,
    RcptTo,
)
from relaywarden.smtp.reply import reply


def test_each_event_carries_the_octets_of_its_line_and_mail_rcpt_their_argument():
    d = Driver(settings())
    lines = [b"EHLO  client.test\r\n", b"NOOP whatever\r\n",
             b"MAIL FROM:<a@b.test> SIZE=30 RET=HDRS ENVID=x+2By SMTPUTF8\r\n",
             "RCPT TO:<ü@b.test> NOTIFY=NEVER ORCPT=rfc822;x@b.test\r\n".encode(),
             b"DATA\r\n"]
    d.send(b"".join(lines))     # pipelined: each event still has its own line's octets
    [hello] = d.of(Hello)
    [noop] = d.handled
    [mail] = d.of(MailFrom)
    [rcpt] = d.of(RcptTo)
    [data] = d.of(DataStart)
    assert [e.octets for e in (hello, noop, mail, rcpt, data)] == [len(x) for x in lines]
    assert mail.argument == "FROM:<a@b.test> SIZE=30 RET=HDRS ENVID=x+2By SMTPUTF8"
    assert rcpt.argument == "TO:<ü@b.test> NOTIFY=NEVER ORCPT=rfc822;x@b.test"
    # The octets of the message as it came: stuffed, in pieces, with the final dot.
    message = [b"Subject: x\r\n\r\n..st", b"uffed\r\nend\r", b"\n.", b"\r\n"]
    d.send_chunks(message)
    [end] = d.of(DataEnd)
    assert end.octets == sum(map(len, message)) and end.size == end.octets - 4


def test_refused_and_over_long_lines_have_their_octets_too():
    d = Driver(settings(etrn=True), answers={Etrn: reply(250, "2.0.0", "started")})
    d.send(b"EHLO x\r\n")
    long = b"MAIL FROM:<" + b"a" * 600 + b"@b.test>\r\n"
    d.send(long[:300])
    d.send(long[300:])                      # dropped in pieces, counted in full
    d.send(b"ETRN @b.test\r\n")
    bare = Driver(settings(bare_line_ends=BareLineEnds.NORMALIZE))
    bare.send(b"EHLO x\nNOOP\r\n")          # a bare LF ends a line here: one octet, not two
    assert [h.octets for h in d.handled] == [len(long)]
    assert d.of(Etrn)[0].octets == 14
    assert bare.of(Hello)[0].octets == 7 and bare.handled[0].octets == 6


def test_auth_lines_have_octets_but_no_credentials():
    d = Driver(settings(auth_mechanisms=("PLAIN", "LOGIN")))
    d.challenges = [b"Username:", b"Password:"]
    d.send(b"EHLO x\r\n")
    d.send(b"AUTH LOGIN\r\n")
    d.send(b"YWxpY2U=\r\n")
    d.send(b"c2VjcmV0\r\n")
    [auth] = d.of(Auth)
    first, second = d.of(AuthResponse)
    assert (auth.octets, first.octets, second.octets) == (12, 10, 10)
    d2 = Driver(settings(auth_mechanisms=("PLAIN",)))
    d2.challenges = [b""]
    d2.send(b"EHLO x\r\nAUTH PLAIN\r\n*\r\n")
    [cancel] = d2.handled
    assert cancel == Handled("AUTH", "***", cancel.reply) and cancel.octets == 3


def test_reply_parser_counts_the_octets_of_each_reply():
    p = ReplyParser()
    p.feed(b"250-mx.test\r\n250-SIZE 100\r\n")
    assert p.next_reply() is None
    p.feed(b"250 HELP\r\n354 go\n221 bye\r\n")
    assert p.next_reply().code == 250 and p.last_octets == 13 + 14 + 10
    assert p.next_reply().code == 354 and p.last_octets == 7      # a bare LF: one octet
    assert p.next_reply().code == 221 and p.last_octets == 9
