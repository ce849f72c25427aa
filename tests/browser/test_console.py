"""The web console in a real browser, against a real relay (see conftest.py).

Each test logs in through the form, as an admin would, and checks what the page shows
against what the relay did (the queue's own rows, the mail it received)."""

from __future__ import annotations

import re
import time

from playwright.sync_api import Page, expect

from .conftest import PASSWORD, USER, VIEWER, Console, unique


def login(page: Page, user: str = USER, password: str = PASSWORD) -> None:
    page.goto("/")
    expect(page.locator("#login-form")).to_be_visible()
    page.fill("#login-username", user)
    page.fill("#login-password", password)
    page.get_by_test_id("login-submit").click()
    expect(page.locator("#app")).to_be_visible()
    expect(page.get_by_test_id("whoami-user")).to_have_text(user)


def wait_history(page: Page, console: Console, queue_id: str, timeout: float = 25) -> None:
    """Until the history (fed by the admin process from the queue's journal) has the
    message: a search right after the SMTP reply may come before the indexer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = page.request.get(f"{console.base}/api/v1/history/{queue_id}")
        if r.status == 200:
            return
        assert r.status == 404, r.text()
        time.sleep(0.3)
    raise AssertionError(f"{queue_id} never showed up in the history")


def test_login_shows_problem_then_signs_in_and_out(page: Page, console: Console):
    page.goto("/")
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    page.fill("#login-username", USER)
    page.fill("#login-password", "not the password")
    page.get_by_test_id("login-submit").click()
    error = page.get_by_test_id("login-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("wrong user name or password")
    expect(error).to_contain_text("401")
    expect(page.locator("#app")).to_be_hidden()

    page.fill("#login-password", PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.locator("#app")).to_be_visible()
    expect(page.get_by_test_id("whoami-user")).to_have_text(USER)
    expect(page.get_by_test_id("whoami-role")).to_have_text("admin")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.get_by_test_id("nav-dashboard")).to_have_attribute("aria-current", "page")

    # The session (cookie) outlives a reload; the CSRF token comes back from GET /session,
    # which a state change then proves (a flush is a POST).
    page.reload()
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#login-form")).to_be_hidden()
    page.get_by_test_id("nav-queue").click()
    page.get_by_test_id("flush-submit").click()
    expect(page.get_by_test_id("notice")).to_contain_text("due now")

    page.get_by_test_id("logout").click()
    expect(page.locator("#login-form")).to_be_visible()
    page.reload()
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()


def test_a_session_that_ends_asks_to_sign_in_again(page: Page, console: Console):
    login(page)
    page.get_by_test_id("nav-queue").click()
    expect(page.get_by_test_id("queue-table")).to_be_visible()
    page.context.clear_cookies()                    # as when the session times out
    page.get_by_test_id("nav-badmail").click()
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.get_by_test_id("login-error")).to_contain_text("session has ended")
    page.fill("#login-password", PASSWORD)          # the user name is kept
    page.get_by_test_id("login-submit").click()
    # Back where the admin was going.
    expect(page.get_by_role("heading", name="Badmail")).to_be_visible()
    expect(page.get_by_test_id("badmail-table")).to_be_visible()


def test_a_viewer_sees_no_actions(page: Page, console: Console):
    queue_id = console.send(unique("viewer"))
    login(page, VIEWER)
    expect(page.get_by_test_id("whoami-role")).to_have_text("viewer")
    page.goto(f"/#/message/{queue_id}")
    expect(page.get_by_test_id("message-status")).to_have_text(re.compile(r"^(queued|deferred)$"))
    expect(page.get_by_test_id("action-eml")).to_be_visible()
    for action in ("retry", "hold", "release", "delete", "delete-dsn"):
        expect(page.get_by_test_id(f"action-{action}")).to_have_count(0)
    page.get_by_test_id("nav-queue").click()
    expect(page.locator(f"[data-testid=queue-row][data-id='{queue_id}']")).to_be_visible()
    expect(page.get_by_test_id("row-hold")).to_have_count(0)
    expect(page.get_by_test_id("flush-form")).to_have_count(0)
    expect(page.get_by_test_id("bulk-submit")).to_have_count(0)
    # The API agrees: a viewer's hold is a 403 (and the queue is unchanged).
    csrf = page.evaluate("() => fetch('/api/v1/session').then((r) => r.json()).then((s) => s.csrf_token)")
    r = page.request.post(f"{console.base}/api/v1/queue/{queue_id}/hold", headers={"X-CSRF-Token": csrf})
    assert r.status == 403
    assert all(r["status"] == "queued" for r in console.recipients(queue_id).values())


def test_find_message_by_recipient_in_two_clicks(page: Page, console: Console):
    rcpt = unique("track")
    other = console.send(unique("other"), subject="not this one")
    queue_id = console.send(rcpt, subject="find me")
    login(page)
    wait_history(page, console, queue_id)

    page.get_by_test_id("nav-track").click()                       # click 1
    search = page.locator("#track-q")
    expect(search).to_be_focused()
    page.keyboard.type(rcpt)                                       # typing, no click
    rows = page.get_by_test_id("track-row")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", queue_id)
    expect(rows.first).to_contain_text("find me")
    rows.first.click()                                             # click 2

    expect(page).to_have_url(re.compile(rf"#/message/{queue_id}$"))
    expect(page.get_by_test_id("message-id")).to_have_text(queue_id)
    expect(page.get_by_test_id("message-summary")).to_contain_text("find me")
    expect(page.get_by_test_id("message-recipients")).to_contain_text(rcpt)
    received = page.locator("[data-testid=timeline-event][data-kind=received]")
    expect(received).to_have_count(1)
    expect(received).to_contain_text(rcpt)
    expect(received).to_contain_text("app@example.com")
    assert other != queue_id
    expect(page.get_by_test_id("message-body")).not_to_contain_text(other)

    # The search is kept: back to the results, the same query is in the box.
    page.go_back()
    expect(page.locator("#track-q")).to_have_value(rcpt)
    expect(page.get_by_test_id("track-row")).to_have_count(1)


def test_hold_and_release_from_the_message_page(page: Page, console: Console):
    rcpt = unique("hold")
    queue_id = console.send(rcpt)
    login(page)
    page.goto(f"/#/message/{queue_id}")
    status = page.get_by_test_id("message-status")
    expect(status).to_have_text(re.compile(r"^(queued|deferred)$"))
    hold, release = page.get_by_test_id("action-hold"), page.get_by_test_id("action-release")
    expect(release).to_be_disabled()

    hold.click()
    expect(status).to_have_text("held")
    expect(page.get_by_test_id("notice")).to_contain_text("1 recipient held")
    expect(page.get_by_test_id("recipient-status")).to_have_text("held")
    assert console.recipients(queue_id)[rcpt]["status"] == "held"
    expect(hold).to_be_disabled()
    expect(release).to_be_enabled()
    # The history records the action with who did it; the page polls it.
    held = page.locator("[data-testid=timeline-event][data-action=hold]")
    expect(held).to_have_count(1, timeout=25_000)
    expect(held).to_contain_text(USER)

    release.click()
    expect(status).to_have_text(re.compile(r"^(queued|deferred)$"))
    assert console.recipients(queue_id)[rcpt]["status"] == "queued"
    expect(release).to_be_disabled()
    expect(page.locator("[data-testid=timeline-event][data-action=release]")).to_have_count(1, timeout=25_000)

    # Retry, now that it is queued again: a 409 would show as a problem instead.
    page.get_by_test_id("action-retry").click()
    expect(page.get_by_test_id("notice")).to_contain_text("1 recipient due now")


def test_release_badmail(page: Page, console: Console):
    bad = unique("quarantined", "private-mail.test")
    queue_id = console.send("boss@example.com", bad, sender="scanner@example.com",
                            source="127.0.0.3")
    assert console.recipients(queue_id)[bad]["status"] == "badmail"
    login(page)
    page.get_by_test_id("nav-badmail").click()
    row = page.locator(f"[data-testid=badmail-row][data-id='{queue_id}']")
    expect(row).to_be_visible()
    expect(row).to_contain_text(bad)
    expect(row).not_to_contain_text("boss@example.com")    # only the quarantined ones
    expect(row).to_contain_text("groups.scanners")
    row.get_by_test_id("badmail-release").click()
    expect(page.get_by_test_id("notice")).to_contain_text(f"Badmail {queue_id} released")
    expect(row).to_have_count(0)
    r = console.recipients(queue_id)[bad]
    assert r["status"] == "queued" and r["rule"] == "badmail.release"

    # Its message page tells the story: quarantined on arrival, released by alice.
    page.goto(f"/#/message/{queue_id}")
    expect(page.get_by_test_id("message-status")).not_to_have_text("badmail")
    event = page.locator("[data-testid=timeline-event][data-action=badmail-release]")
    expect(event).to_have_count(1, timeout=25_000)
    expect(event).to_contain_text(USER)


def test_delete_badmail_asks_first(page: Page, console: Console):
    bad = unique("dropme", "private-mail.test")
    queue_id = console.send(bad, sender="scanner@example.com", source="127.0.0.3")
    login(page)
    page.get_by_test_id("nav-badmail").click()
    row = page.locator(f"[data-testid=badmail-row][data-id='{queue_id}']")
    row.get_by_test_id("badmail-delete").click()
    expect(page.locator("#confirm")).to_be_visible()
    page.get_by_test_id("confirm-cancel").click()
    expect(row).to_be_visible()
    assert console.recipients(queue_id)[bad]["status"] == "badmail"
    row.get_by_test_id("badmail-delete").click()
    page.get_by_test_id("confirm-ok").click()
    expect(row).to_have_count(0)
    assert console.recipients(queue_id).get(bad, {}).get("status") != "badmail"


def test_queue_filter_and_row_actions(page: Page, console: Console):
    rcpt = unique("queued", "queue-view.test")
    queue_id = console.send(rcpt)
    console.send(unique("noise", "elsewhere.test"))
    login(page)
    page.get_by_test_id("nav-queue").click()
    page.fill("#queue-recipient", rcpt)
    page.get_by_test_id("queue-apply").click()
    expect(page).to_have_url(re.compile(r"#/queue\?recipient="))
    rows = page.get_by_test_id("queue-row")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", queue_id)

    rows.first.get_by_test_id("row-hold").click()
    expect(rows.first.get_by_test_id("queue-row-status")).to_have_text("held")
    assert console.recipients(queue_id)[rcpt]["status"] == "held"

    # A bulk action on the filter: release everything held for that domain.
    page.goto("/#/queue?domain=queue-view.test&status=held")
    expect(page.get_by_test_id("queue-row")).to_have_count(1)
    page.select_option("#bulk-action", "release")
    page.get_by_test_id("bulk-submit").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("notice")).to_contain_text("1 message(s), 1 recipient(s)")
    expect(page.get_by_test_id("queue-row")).to_have_count(0)
    assert console.recipients(queue_id)[rcpt]["status"] == "queued"

    # Delete with a DSN from the message page: the sender gets one, queued in its turn.
    page.goto(f"/#/message/{queue_id}")
    page.get_by_test_id("action-delete-dsn").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("notice")).to_contain_text("the sender gets DSN")
    assert console.recipients(queue_id) == {}
    expect(page.get_by_test_id("message-actions")).to_be_hidden()


def test_dashboard_counters_move_after_a_real_send(page: Page, console: Console):
    login(page)
    received = page.get_by_test_id("stat-received")
    queue = page.get_by_test_id("queue-size")
    expect(received).not_to_have_attribute("data-value", "")
    expect(queue).to_have_attribute("data-value", re.compile(r"^\d+$"))
    before = int(received.get_attribute("data-value"))
    queued_before = int(queue.get_attribute("data-value"))
    console.send(unique("dash"))
    # The sampler reads the counters every 10 s and the page polls every 5 s: no reload,
    # the numbers on the open page must move by themselves.
    page.wait_for_function(
        "([sel, n]) => Number(document.querySelector(sel)?.dataset.value) > n",
        arg=["[data-testid=stat-received]", before], timeout=30_000)
    page.wait_for_function(
        "([sel, n]) => Number(document.querySelector(sel)?.dataset.value) > n",
        arg=["[data-testid=queue-size]", queued_before], timeout=15_000)
    assert int(received.get_attribute("data-value")) >= before + 1
    expect(page.get_by_test_id("chart").locator("polyline")).to_have_count(6)
    expect(page.get_by_test_id("listeners")).to_contain_text(str(console.smtp_port))
    expect(page.get_by_test_id("disk-free")).to_have_attribute("data-value", re.compile(r"^\d+$"))
    expect(page.get_by_test_id("dashboard-problem")).to_have_count(0)

    page.get_by_test_id("window-day").click()
    expect(page.get_by_test_id("window-day")).to_have_attribute("aria-pressed", "true")
    expect(page).to_have_url(re.compile(r"#/dashboard\?window=day$"))
    expect(page.get_by_role("heading", name=re.compile("last 24 hours"))).to_be_visible()


def test_live_log_shows_a_send(page: Page, console: Console):
    login(page)
    page.get_by_test_id("nav-logs").click()
    expect(page.get_by_test_id("log-status")).to_have_text("live")
    rcpt = unique("live")
    queue_id = console.send(rcpt)
    lines = page.get_by_test_id("log-lines")
    line = lines.locator("li", has_text=rcpt).filter(has_text="event=queued")
    expect(line).to_have_count(1, timeout=20_000)
    # The queue ID is a link to the message page.
    line.get_by_role("link", name=queue_id).click()
    expect(page).to_have_url(re.compile(rf"#/message/{queue_id}$"))

    page.goto("/#/logs?log=protocol")
    expect(page.get_by_test_id("log-protocol")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("log-status")).to_have_text("live")
    rcpt2 = unique("proto")
    console.send(rcpt2)
    expect(page.get_by_test_id("log-lines").locator("li", has_text=rcpt2).first).to_be_visible(timeout=20_000)

    # The outbound log: the attempt on the next hop, with the queue ID on its lines.
    page.get_by_test_id("log-outbound").click()
    expect(page).to_have_url(re.compile(r"#/logs\?log=outbound$"))
    expect(page.get_by_test_id("log-status")).to_have_text("live")
    queue_id = console.send(unique("out"))
    expect(page.get_by_test_id("log-lines").locator("li", has_text=queue_id).first).to_be_visible(timeout=20_000)


def test_policy_explain_form(page: Page, console: Console):
    login(page)
    page.get_by_test_id("nav-explain").click()
    expect(page.locator("#explain-listener")).to_have_value("main")
    page.fill("#explain-client", "127.0.0.3")
    page.fill("#explain-from", "scanner@example.com")
    page.fill("#explain-to", "someone@private-mail.test")
    page.get_by_test_id("explain-submit").click()
    expect(page.get_by_test_id("explain-decision")).to_have_text("badmail")
    expect(page.get_by_test_id("explain-text")).to_contain_text("groups.scanners")

    page.fill("#explain-client", "127.0.0.1")
    page.get_by_test_id("explain-submit").click()
    expect(page.get_by_test_id("explain-decision")).to_have_text("accept")

    page.fill("#explain-client", "not-an-address")
    page.get_by_test_id("explain-submit").click()
    problem = page.get_by_test_id("explain-problem")
    expect(problem).to_contain_text("is not an IP address")
    expect(problem).to_contain_text("client")
    expect(page.locator("#explain-client")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#explain-client")).to_be_focused()


def test_config_view_is_the_effective_config(page: Page, console: Console):
    login(page)
    page.get_by_test_id("nav-config").click()
    view = page.get_by_test_id("config-view")
    expect(view).to_contain_text('hostname = "relay.test"')
    listeners = page.locator("[data-testid=config-section][data-section=listeners]")
    expect(listeners).to_contain_text("[listeners.main]")
    expect(listeners).to_contain_text(f"port = {console.smtp_port}")
    expect(page.get_by_test_id("config-source")).to_contain_text("relay.toml")
    # Defaults are filled in (history is not in the test's file).
    expect(page.locator("[data-testid=config-section][data-section=history]")).to_contain_text("keep_days = 30")

    page.fill("#config-filter", "max_message_size")
    expect(listeners).to_be_visible()
    expect(page.locator("[data-testid=config-section][data-section=history]")).to_be_hidden()
