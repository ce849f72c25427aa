"""The receive path through the real interface: a relay process, real SMTP clients on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import smtplib
import socket
import time

import aiosmtplib
import pytest

from support.raw import RawClient
from support.smtp import MSG, queued_id, smtp

def test_smtplib_message_is_queued_durably_with_received_header(relay):
    with smtp(relay) as c:
        code, _ = c.ehlo("client.test")
        assert code == 250
        assert c.has_extn("pipelining") and c.has_extn("8bitmime") and c.has_extn("dsn")
        assert c.has_extn("smtputf8") and c.has_extn("enhancedstatuscodes")
        assert c.esmtp_features["size"] == "200000"
        c.mail("app@example.com")
        c.rcpt("user@example.com")
        code, text = c.data(MSG.encode())
        assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
        qid = queued_id(text)
    [row] = relay.messages()
    assert row["id"] == qid
    assert row["sender"] == "app@example.com"
    assert [r["address"] for r in row["recipients"]] == ["user@example.com"]
    body = relay.body(qid)
    header, _, rest = body.partition(b"\r\nFrom: ")
    assert header.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby relay.test")
    assert b"listener main" in header and f"id {qid}".encode() in header
    assert b"for <user@example.com>;" in header
    # Dot-stuffing undone exactly once (RFC 5321 4.5.2).
    assert rest.endswith(b"line one\r\n.starts with a dot\r\n..two dots\r\nlast line\r\n")


def test_inbound_for_hosted_domain_from_anyone_and_only_for_it(relay):
    with smtp(relay, "127.0.0.2") as c:
        c.ehlo("mx.internet.test")
        c.mail("someone@internet.test")
        assert c.rcpt("alice@example.com")[0] == 250
        assert c.rcpt("bob@sub.example.org")[0] == 250
        code, text = c.rcpt("victim@gmail.test")
        assert (code, text) == (550, b"5.7.1 Unable to relay")
        code, text = c.data(MSG.encode())
        assert code == 250
    [row] = relay.messages()
    assert [r["address"] for r in row["recipients"]] == ["alice@example.com", "bob@sub.example.org"]


def test_trusted_network_relays_anywhere(relay):
    with smtp(relay) as c:
        c.ehlo("app.test")
        c.mail("app@example.com")
        assert c.rcpt("someone@gmail.test")[0] == 250
        assert c.data(MSG.encode())[0] == 250


def test_scanner_group_foreign_recipient_goes_to_badmail(relay):
    with smtp(relay, "127.0.0.3") as c:
        c.ehlo("scanner.test")
        c.mail("scanner@example.com")
        assert c.rcpt("boss@example.com")[0] == 250
        assert c.rcpt("me@private-mail.test")[0] == 250
        assert c.data(MSG.encode())[0] == 250
    [row] = relay.messages()
    states = {r["address"]: r["status"] for r in row["recipients"]}
    assert states == {"boss@example.com": "queued", "me@private-mail.test": "badmail"}
    rule = [r["rule"] for r in row["recipients"] if r["status"] == "badmail"]
    assert rule == ["groups.scanners.recipient_domains"]
    relay.flush_logs()
    mail = relay.logs("mail", ".log")
    assert "event=badmail" in mail and "to=me@private-mail.test" in mail


def test_scanner_sender_outside_allowed_senders_is_refused(relay):
    with smtp(relay, "127.0.0.3") as c:
        c.ehlo("scanner.test")
        code, text = c.mail("scanner@elsewhere.test")
        assert code == 550 and text.startswith(b"5.7.1")


def test_printer_group_rejects_foreign_recipient_at_rcpt(relay):
    with smtp(relay, "127.0.0.4") as c:
        c.ehlo("printer.test")
        c.mail("printer@example.com")
        code, text = c.rcpt("me@private-mail.test")
        assert code == 550 and text.startswith(b"5.7.1")
        assert c.rcpt("boss@example.com")[0] == 250


def test_denied_client_gets_554_greeting(relay):
    c = RawClient(relay, "127.0.0.66")
    code, text = c.reply()
    assert code == 554 and b"5.7.1" in text
    c.close()


def test_postmaster_without_domain_is_accepted_from_anyone(relay):
    with smtp(relay, "127.0.0.2") as c:
        c.ehlo("x.test")
        c.mail("")
        assert c.rcpt("<Postmaster>")[0] == 250
        assert c.data(MSG.encode())[0] == 250
    [row] = relay.messages()
    assert row["sender"] == ""
    assert row["recipients"][0]["address"] == "postmaster@relay.test"


def test_dsn_parameters_are_stored_per_recipient(relay):
    with smtp(relay) as c:
        c.ehlo("x.test")
        c.mail("app@example.com", ["RET=HDRS", "ENVID=abc+2Bdef"])
        c.rcpt("a@example.com", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;a@example.com"])
        c.rcpt("b@example.com", ["NOTIFY=NEVER"])
        code, text = c.data(MSG.encode())
        qid = queued_id(text)
    r = relay.reader()
    msg = r.show(qid)
    r.close()
    assert msg["ret"] == "HDRS" and msg["envid"] == "abc+def"
    assert msg["recipients"][0]["notify"] == "SUCCESS,FAILURE"
    assert msg["recipients"][0]["orcpt"] == "rfc822;a@example.com"
    assert msg["recipients"][1]["notify"] == "NEVER"


def test_aiosmtplib_pipelined_session(relay):
    async def go():
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, timeout=10)
        await client.connect()
        await client.ehlo()
        errors, response = await client.sendmail(
            "app@example.com", ["a@example.com", "b@example.com"], MSG.encode())
        await client.quit()
        return errors, response
    errors, response = asyncio.run(go())
    assert errors == {} and "queued as" in response
    [row] = relay.messages()
    assert len(row["recipients"]) == 2


def test_pipelined_commands_in_one_packet_are_answered_in_order(relay):
    c = RawClient(relay)
    assert c.reply()[0] == 220
    c.send(b"EHLO x.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
           b"RCPT TO:<c@gmail.test>\r\nDATA\r\n")
    assert c.reply()[0] == 250
    assert c.reply()[0] == 250
    assert c.reply()[0] == 250
    assert c.reply()[0] == 250
    assert c.reply()[0] == 354
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    code, text = c.reply()
    assert code == 250 and b"queued as" in text
    assert c.reply()[0] == 221
    c.close()


@pytest.mark.parametrize("tail", [b"", b"QUIT\r\n"])
def test_end_of_input_right_after_the_final_dot_still_gets_the_250(relay, tail):
    """The client's end of input right behind the final dot waits for the commit: the
    connection is not closed before the 250 (the message would be stored, its sender never
    told, and it would send it again). Written for a session that reads on during a commit
    (measured for issue 15, not kept: docs/benchmarks.md); it guards the one that does not."""
    for _ in range(5):       # the EOF lands during the commit in (nearly) every round
        c = RawClient(relay)
        assert c.reply()[0] == 220
        c.send(b"EHLO x.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
               b"DATA\r\n")
        assert [c.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        c.send(b"Subject: eof\r\n\r\nbody\r\n.\r\n" + tail)
        c.sock.shutdown(socket.SHUT_WR)
        code, text = c.reply()
        assert code == 250 and b"queued as" in text, text
        if tail:
            assert c.reply()[0] == 221
        assert c.closed()
        c.close()
    assert len(relay.messages()) == 5


def test_commands_sent_while_a_message_is_committed_are_answered_after_its_250(relay):
    """A client that does not wait for the 250 (its next commands sent in pieces right
    behind the final dot): the commands wait for the commit and are answered after its 250,
    in order."""
    c = RawClient(relay)
    assert c.reply()[0] == 220
    c.send(b"EHLO x.test\r\n")
    assert c.reply()[0] == 250
    for n in range(3):
        c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        c.send(b"Subject: %d\r\n\r\nbody\r\n.\r\n" % n)
        c.send(b"RSET\r\n")
        c.send(b"NOOP\r\n")
        code, text = c.reply()
        assert code == 250 and b"queued as" in text, text
        assert c.reply()[0] == 250     # RSET
        assert c.reply()[0] == 250     # NOOP
    c.send(b"QUIT\r\n")
    assert c.reply()[0] == 221
    c.close()
    assert len(relay.messages()) == 3


def test_non_relay_client_pipelining_gets_554_for_data_without_valid_recipients(relay):
    c = RawClient(relay, "127.0.0.2")
    c.reply()
    c.send(b"EHLO x\r\nMAIL FROM:<a@internet.test>\r\nRCPT TO:<c@gmail.test>\r\nDATA\r\n")
    assert c.reply()[0] == 250
    assert c.reply()[0] == 250
    assert c.reply()[0] == 550
    code, text = c.reply()
    assert code == 554
    c.close()
    assert relay.messages() == []


def test_message_over_size_limit_is_refused_and_not_stored(relay):
    with smtp(relay) as c:
        c.ehlo("x")
        code, text = c.mail("a@example.com", ["SIZE=300000"])
        assert code == 552 and text.startswith(b"5.3.4")
        c.rset()
        c.mail("a@example.com")
        c.rcpt("b@example.com")
        big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 250
        code, text = c.data(big)
        assert code == 552 and text.startswith(b"5.3.4")
        # The session goes on after the refusal.
        c.mail("a@example.com")
        c.rcpt("b@example.com")
        assert c.data(MSG.encode())[0] == 250
    assert len(relay.messages()) == 1


def test_client_vanishing_mid_data_stores_nothing(relay):
    c = RawClient(relay)
    c.reply()
    c.send(b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    for _ in range(4):
        c.reply()
    c.send(b"Subject: half\r\n\r\n" + b"y" * 5000 + b"\r\n")
    c.close()
    # The relay still serves others; once their message is queued, the cut one is not.
    with smtp(relay) as s:
        s.ehlo("x")
        assert s.sendmail("a@example.com", ["b@example.com"], MSG.encode()) == {}
    assert [m["sender"] for m in relay.messages()] == ["a@example.com"]


def test_idle_client_is_closed_with_421_after_command_timeout(relay):
    c = RawClient(relay)
    c.reply()
    started = time.monotonic()
    code, text = c.reply()
    assert code == 421 and b"4.4.2" in text
    assert 2.5 < time.monotonic() - started < 8
    assert c.closed()


def test_protocol_log_w3c_and_json(relay):
    with smtp(relay) as c:
        c.ehlo("client.test")
        c.sendmail("app@example.com", ["user@example.com"], MSG.encode())
    relay.flush_logs()
    w3c = relay.logs("ex", ".log")
    assert "#Fields: date time c-ip cs-username s-sitename s-computername s-ip s-port " \
           "cs-method cs-uri-query sc-status sc-bytes cs-bytes time-taken" in w3c
    lines = [l for l in w3c.splitlines() if not l.startswith("#")]
    methods = [l.split()[8] for l in lines]
    # The fixture's readiness probe was a session of its own (CONNECT, CLOSE); ours follows.
    assert methods[:2] == ["CONNECT", "CLOSE"]
    lines, methods = lines[2:], methods[2:]
    assert methods[:6] == ["CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "."]
    mail_line = next(l for l in lines if l.split()[8] == "MAIL").split()
    assert mail_line[2] == "127.0.0.1" and mail_line[4] == "main" and mail_line[10] == "250"
    entries = [json.loads(l) for l in relay.logs("ex", ".jsonl").splitlines()][2:]
    assert [e["cs-method"] for e in entries][:6] == methods[:6]
    # As received: smtplib adds SIZE (the relay offers it), and the log keeps it.
    assert entries[2]["cs-uri-query"] == f"FROM:<app@example.com> size={len(MSG.encode())}"
    mail = relay.logs("mail", ".log")
    assert re.search(r"event=queued id=\S+ listener=main client=127.0.0.1", mail)
