"""The policy's verdict caches (issue 15, receive code): a Policy object answers from its
cache exactly what it would decide afresh, for every client fact that takes part in the
decision (address, verified name, user, directory groups, listener), and a new Policy (what a
SIGHUP reload builds) never sees the old one's verdicts."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from relaywarden.policy import ClientFacts, ListenerPolicy, Policy

from test_policy_decisions import POLICY, addr


def fresh() -> Policy:
    """The same rules, nothing decided yet."""
    return Policy(dict(POLICY.listeners))


CLIENTS = st.builds(
    lambda listener, ip, name, user, groups: ClientFacts(
        listener=listener, ip=ip_address(ip), verified_name=name, user=user,
        directory_groups=frozenset(groups)),
    listener=st.sampled_from(["inbound", "outbound", "submission", "ties"]),
    ip=st.sampled_from(["10.0.0.1", "10.0.5.7", "10.0.5.200", "10.0.6.1", "::ffff:10.0.5.7",
                        "203.0.113.1", "198.51.100.7", "2001:db8:1::5"]),
    name=st.sampled_from([None, "a.scan.example.com", "host.dialup.example.net"]),
    user=st.sampled_from([None, "scanner", "Printer", "someone"]),
    groups=st.sampled_from([(), ("Scan Devices",), ("scan devices",)]),
)
SENDERS = st.sampled_from([None, "a@example.com", "noreply@example.org", "NoReply@example.org",
                           "x@evil.test"])
RECIPIENTS = st.sampled_from(["u@example.com", "u@sub.example.com", "u@other.test", "postmaster",
                              "u%x@example.com", "u@[192.0.2.25]", "v@other.test"])


@settings(max_examples=300)
@given(st.lists(st.tuples(CLIENTS, SENDERS, RECIPIENTS), min_size=1, max_size=30))
def test_cached_verdicts_are_the_fresh_ones(steps):
    policy = fresh()
    for client, sender, recipient in steps:
        s, r = addr(sender), addr(recipient)
        assert policy.check_connect(client) == fresh().check_connect(client)
        assert policy.check_sender(client, s) == fresh().check_sender(client, s)
        assert policy.check_recipient(client, s, r) == fresh().check_recipient(client, s, r)
        assert policy.group_of(client) == fresh().group_of(client)


def test_what_auth_adds_to_a_client_changes_the_cached_verdict():
    policy = fresh()
    stranger = ClientFacts(listener="outbound", ip=ip_address("10.0.7.1"))
    assert policy.check_recipient(stranger, None, addr("u@other.test")).rule == "relay.denied"
    # The same address, logged in: relay for authenticated users, not the cached refusal.
    user = ClientFacts(listener="outbound", ip=ip_address("10.0.7.1"), user="someone")
    assert policy.check_recipient(user, None, addr("u@other.test")).rule == \
        "listeners.outbound.relay.authenticated"
    # In the scanners group by its directory group: other domains go to badmail.
    member = ClientFacts(listener="outbound", ip=ip_address("10.0.7.1"), user="someone",
                         directory_groups=frozenset({"Scan Devices"}))
    decision = policy.check_recipient(member, None, addr("u@other.test"))
    assert (decision.action.value, decision.rule) == ("badmail", "groups.scanners.recipient_domains")
    assert policy.group_of(stranger) is None and policy.group_of(member) == "scanners"


def test_a_new_policy_does_not_answer_from_the_old_ones_cache():
    client = ClientFacts(listener="l", ip=ip_address("10.0.0.1"))
    old = Policy({"l": ListenerPolicy(name="l", relay_networks=(ip_network("10.0.0.0/24"),))})
    new = Policy({"l": ListenerPolicy(name="l")})          # the reloaded config: no relay
    assert old.check_recipient(client, None, addr("u@other.test")).action.value == "accept"
    assert new.check_recipient(client, None, addr("u@other.test")).action.value == "reject"


def test_the_rules_of_a_policy_cannot_change_under_its_cache():
    try:
        POLICY.listeners["inbound"] = ListenerPolicy(name="inbound")   # type: ignore[index]
    except TypeError:
        return
    raise AssertionError("Policy.listeners accepted a new rule set")
