"""AUTH that is configured but not advertised (before TLS): the driver still sees AUTH."""

from smtpcore_helpers import GREETING, parse_replies
from relaywarden.smtp.events import NEED_DATA, Auth, Hello
from relaywarden.smtp.reply import reply
from relaywarden.smtp.server import ServerConnection, ServerSettings

ENCRYPTION_REQUIRED = reply(538, "5.7.11", "Encryption required for requested authentication mechanism")


def session(**kw):
    conn = ServerConnection(ServerSettings(hostname="mx.test", auth_mechanisms=("PLAIN", "LOGIN"), **kw))
    conn.greet(GREETING)
    conn.data_to_send()
    conn.receive_data(b"EHLO c\r\n")
    ev = conn.next_event()
    assert isinstance(ev, Hello)
    conn.respond(conn.ehlo_reply("hi"))
    return conn, parse_replies(conn.data_to_send())[0]


def test_not_advertised_but_the_driver_answers_538():
    conn, ehlo = session(advertise_auth=False)
    assert not any(line.startswith("AUTH") for line in ehlo.lines)
    conn.receive_data(b"AUTH PLAIN AGFsaWNlAHB3\r\n")
    ev = conn.next_event()
    assert isinstance(ev, Auth) and ev.mechanism == "PLAIN"
    conn.respond(ENCRYPTION_REQUIRED)
    assert parse_replies(conn.data_to_send()) == [ENCRYPTION_REQUIRED]
    assert conn.next_event() is NEED_DATA


def test_advertised_by_default():
    _, ehlo = session()
    assert "AUTH PLAIN LOGIN" in ehlo.lines
