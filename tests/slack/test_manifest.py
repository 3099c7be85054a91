"""The example Slack app manifest asks for what the bot calls, and points at our route."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from incident.api.slack import router

ROOT = Path(__file__).resolve().parents[2]
# The scope each Web API method we call needs (a private channel's too).
NEEDS = {
    "chat_postMessage": {"chat:write"},
    "chat_update": {"chat:write"},
    "conversations_history": {"channels:history", "groups:history"},
    "conversations_replies": {"channels:history", "groups:history"},
    "conversations_list": {"channels:read", "groups:read"},
}


def test_the_manifest_scopes_cover_every_method_the_bot_calls():
    manifest = yaml.safe_load((ROOT / "examples" / "slack-app-manifest.yaml").read_text())
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    source = (ROOT / "incident" / "integrations" / "slack.py").read_text()
    called = set(re.findall(r"self\._client\.(\w+)", source)) - {"base_url"}
    assert called and called <= set(NEEDS), called - set(NEEDS)
    for method in called:
        assert NEEDS[method] <= scopes, method


def test_the_manifest_turns_interactivity_on_at_our_route():
    manifest = yaml.safe_load((ROOT / "examples" / "slack-app-manifest.yaml").read_text())
    interactivity = manifest["settings"]["interactivity"]
    assert interactivity["is_enabled"] is True
    path = urlsplit(interactivity["request_url"]).path
    assert path in {route.path for route in router.routes}
