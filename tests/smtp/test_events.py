"""Event values: frozen, slotted, safe to log."""

import dataclasses
import pickle

import pytest
from smtpcore_helpers import Driver, settings

from relaywarden.smtp.address import Address
from relaywarden.smtp.events import (
    NEED_DATA,
    Auth,
    AuthResponse,
    Closed,
    DataChunk,
    DataEnd,
    Handled,
    Hello,
    MailFrom,
    MailParams,
    NeedData,
    RcptParams,
    RcptTo,
)
from relaywarden.smtp.reply import OK


def test_need_data_is_a_singleton():
    assert NeedData() is NEED_DATA and repr(NEED_DATA) == "NEED_DATA"
    assert pickle.loads(pickle.dumps(NEED_DATA)) is NEED_DATA


@pytest.mark.parametrize("event", [
    Hello("x", True), MailFrom(None, MailParams()), RcptTo(Address("a", "b"), RcptParams()),
    DataEnd(None, 0), Handled("NOOP", "", OK), Closed("eof", False), DataChunk(b"x"),
])
def test_events_are_frozen_and_slotted(event):
    assert not hasattr(event, "__dict__")
    field = dataclasses.fields(event)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, field, None)


def test_secrets_and_content_stay_out_of_repr():
    assert "hunter2" not in repr(Auth("PLAIN", b"\0me\0hunter2"))
    assert "hunter2" not in repr(AuthResponse(b"hunter2"))
    assert repr(DataChunk(b"secret body")) == "DataChunk(<11 bytes>)"


def test_long_auth_line_is_reported_without_its_argument():
    d = Driver(settings(auth_mechanisms=("PLAIN",)))
    d.send(b"EHLO x\r\nAUTH PLAIN " + b"A" * 20000 + b"\r\n")
    assert d.handled[-1].verb == "AUTH" and d.handled[-1].argument == "***"
    assert d.handled[-1].reply.code == 500


def test_settings_may_be_replaced_between_commands():
    # e.g. the driver offers AUTH only once TLS is up
    d = Driver(settings(starttls=True))
    assert not any(line.startswith("AUTH") for line in d.send(b"EHLO x\r\n")[0].lines)
    d.send(b"STARTTLS\r\n")
    d.conn.settings = dataclasses.replace(d.conn.settings, auth_mechanisms=("PLAIN",))
    (ehlo,) = d.send(b"EHLO x\r\n")
    assert "AUTH PLAIN" in ehlo.lines and "STARTTLS" not in ehlo.lines
