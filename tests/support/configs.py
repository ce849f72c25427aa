"""Config texts the tests start relays with."""

# Test configs never let the relay reach beyond loopback: DNS goes to a closed loopback
# port, and every domain routes to a closed loopback port, so accepted mail stays queued
# (deferred) where the receive tests can look at it.
HERMETIC = """
[dns]
nameservers = ["127.0.0.1"]
port = 1
timeout = 1

[routes."*"]
next_hops = ["[127.0.0.1]:1"]
"""

BASIC = HERMETIC + """
[relay]
hostname = "relay.test"
data_dir = "var"
hosted_domains = ["example.com", "*.example.org"]

[groups.scanners]
networks = ["127.0.0.3/32"]
recipient_domains = ["example.com", "*.example.com"]
senders = ["example.com"]
on_violation = "badmail"

[groups.printers]
networks = ["127.0.0.4/32"]
recipient_domains = ["example.com"]
on_violation = "reject"

[listeners.main]
address = "127.0.0.1"
port = {main}
max_message_size = "200KB"
max_recipients = 100
command_timeout = 3
data_timeout = 3

[listeners.main.access]
default = "allow"
deny = ["127.0.0.66/32"]

[listeners.main.relay]
networks = ["127.0.0.1/32", "127.0.0.3/32", "127.0.0.4/32"]

[listeners.main.line_endings]
bare_lf = "reject"
normalize_networks = ["127.0.0.9/32"]

# Above the defaults (1000, 50 per address): test_hostile opens 2,000 connections at once
# from 127.0.0.1. The limits themselves are tested in test_limits.py.
[listeners.main.limits]
max_connections = 5000
max_connections_per_ip = 5000
"""
