"""What a person sees in the console, in Chromium: sign-in through the provider, the list
refreshing itself, Acknowledge reaching PagerDuty, Silence reaching Alertmanager, the
stats charts drawn, and every page fitting a phone's width."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser.conftest import (
    DESKTOP,
    PHONE,
    WAIT_MS,
    ConsoleStack,
    screenshot,
    sign_in,
)
from tests.conftest import API_TOKEN, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.alertmanager, pytest.mark.timeout(180)]

EMAIL = "alice@example.com"  # the fake provider's user


def test_a_page_asked_for_signed_out_comes_back_after_the_providers_sign_in(
    chromium: Browser, console_stack: ConsoleStack,
):
    before = len(console_stack.provider.authorizations)
    context = chromium.new_context(viewport=DESKTOP)
    try:
        page = sign_in(context, console_stack, "/stats")

        assert len(console_stack.provider.authorizations) == before + 1
        assert page.url == f"{console_stack.api.url}/stats"
        expect(page.locator("header .who")).to_have_text(EMAIL)
    finally:
        context.close()


def test_an_incident_from_a_webhook_appears_on_the_list_without_reloading(
    signed_in: BrowserContext, console_stack: ConsoleStack,
):
    page = signed_in.new_page()
    page.goto(console_stack.api.url + "/")
    page.evaluate("window.notReloaded = true")

    made = console_stack.open_incident(alertname="HighErrorRate", service="checkout")

    row = page.locator(f'tr.incident-row[data-id="{made["id"]}"]')
    expect(row).to_be_visible(timeout=WAIT_MS)
    expect(row).to_contain_text("HighErrorRate checkout")
    assert page.evaluate("window.notReloaded") is True, "the page was reloaded"
    _more_incidents(console_stack)
    page.reload()
    screenshot(page, "list")


def test_acknowledge_in_the_browser_is_by_the_user_and_reaches_pagerduty(
    signed_in: BrowserContext, console_stack: ConsoleStack,
):
    made = console_stack.open_incident(alertname="PaymentsDeclined", service="payments")
    wait_for(lambda: console_stack.pagerduty_actions(made["key"]) == ["trigger"], timeout=30,
             what="the PagerDuty trigger")
    page = signed_in.new_page()
    page.goto(console_stack.api.url + "/")
    page.locator(f'tr.incident-row[data-id="{made["id"]}"] td.title a').click()
    page.wait_for_url(f"{console_stack.api.url}/incidents/{made['id']}")

    page.get_by_role("button", name="Acknowledge").click()

    entry = page.locator("ol.timeline li.kind-acknowledged")
    expect(entry).to_have_count(1)
    expect(entry).to_contain_text(EMAIL)
    expect(page.get_by_role("button", name="Acknowledge")).to_have_count(0)
    wait_for(lambda: console_stack.pagerduty_actions(made["key"]) == ["trigger", "acknowledge"],
             timeout=30, what="the PagerDuty acknowledge")
    page.reload()  # the notifications as they stand now: both sent
    screenshot(page, "incident")


def test_silence_1h_in_the_browser_is_listed_on_the_page_and_in_alertmanager(
    signed_in: BrowserContext, console_stack: ConsoleStack,
):
    made = console_stack.open_incident(alertname="DiskFull", service="search", severity="warning")
    page = signed_in.new_page()
    page.goto(f"{console_stack.api.url}/incidents/{made['id']}")

    page.locator("form.silence").get_by_role("button", name="1h", exact=True).click()

    expect(page.locator("ul.silences > li")).to_have_count(1)
    made_in_alertmanager = wait_for(
        lambda: _silences_of(console_stack, "search"), timeout=30, what="the Alertmanager silence"
    )
    [silence] = made_in_alertmanager
    assert silence["status"]["state"] == "active"
    assert silence["createdBy"] == f"web:{EMAIL}"
    expect(page.locator("ul.silences > li code").first).to_have_text(silence["id"])
    expect(page.locator("ol.timeline li.kind-silenced")).to_contain_text(EMAIL)


def test_the_stats_charts_are_drawn_from_the_figures(
    signed_in: BrowserContext, console_stack: ConsoleStack,
):
    made = console_stack.open_incident(alertname="HighLatency", service="api", severity="critical")
    acknowledged = httpx.post(f"{console_stack.api.url}/api/incidents/{made['id']}/acknowledge",
                              headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10)
    assert acknowledged.status_code == 200, acknowledged.text
    page = signed_in.new_page()
    page.goto(console_stack.api.url + "/stats")

    for chart in ("chart-per-day", "chart-acknowledge", "chart-resolve"):
        canvas = page.locator(f"canvas#{chart}")
        expect(canvas).to_be_visible()
        box = canvas.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, (chart, box)
    drawn = page.evaluate("""() => Object.fromEntries(
        ["chart-per-day", "chart-acknowledge"].map((id) => {
            const chart = Chart.getChart(document.getElementById(id));
            const values = chart ? chart.data.datasets.flatMap((d) => d.data) : [];
            return [id, values.filter((v) => v !== null && v !== undefined)];
        }))""")
    per_day = sum(drawn["chart-per-day"])
    assert per_day >= 1, drawn  # today's incidents, counted by severity
    assert drawn["chart-acknowledge"], drawn  # the acknowledged one's time, a bar of its own
    assert _painted(page, "chart-per-day"), "the per-day chart's canvas is blank"
    screenshot(page, "stats")


def test_no_page_scrolls_sideways_on_a_390px_phone(
    chromium: Browser, signed_in: BrowserContext, console_stack: ConsoleStack,
):
    made = console_stack.open_incident(alertname="PodCrashLooping", service="recommendations")
    phone = chromium.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True,
                                 has_touch=True, storage_state=signed_in.storage_state())
    try:
        page = phone.new_page()
        for path in ("/", f"/incidents/{made['id']}", "/stats"):
            page.goto(console_stack.api.url + path)
            page.wait_for_load_state("load")
            widths = page.evaluate("""() => ({scroll: document.documentElement.scrollWidth,
                                              client: document.documentElement.clientWidth})""")
            assert widths["client"] == PHONE["width"], (path, widths)
            assert widths["scroll"] <= widths["client"], f"{path} scrolls sideways: {widths}"
            if path.startswith("/incidents/"):
                screenshot(page, "incident-phone")
    finally:
        phone.close()


def _more_incidents(stack: ConsoleStack) -> None:
    """A few more, of every severity, so the list reads as a real one."""
    for alertname, service, severity in (
        ("KafkaConsumerLag", "orders", "warning"), ("CertificateExpiring", "edge", "info"),
        ("HighErrorRate", "checkout-eu", "critical"),
    ):
        stack.open_incident(alertname=alertname, service=service, severity=severity)


def _silences_of(stack: ConsoleStack, service: str) -> list[dict]:
    listed = httpx.get(f"{stack.alertmanager.url}/api/v2/silences", timeout=5).json()
    return [s for s in listed if {"name": "service", "value": service, "isRegex": False,
                                  "isEqual": True} in s["matchers"]]


def _painted(page: Page, canvas_id: str) -> bool:
    """Some pixel of the canvas is not transparent."""
    return page.evaluate("""(id) => {
        const canvas = document.getElementById(id);
        const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) return true;
        return false;
    }""", canvas_id)
