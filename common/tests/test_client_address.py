"""The client's address: the peer's, or behind TRUSTED_PROXY_COUNT proxies the one they saw."""

from __future__ import annotations

import pytest
from flask import Flask, request

from common.config import ConfigError, Env, WebSettings, web_settings_values
from common.web import create_api

PEER = "10.0.0.1"


def address_seen(count: int, forwarded: str | None) -> str:
    app = Flask("probe")

    @app.get("/whoami")
    def whoami():
        return {"address": request.remote_addr}

    settings = WebSettings(database_url="sqlite://", log_format="text", trusted_proxy_count=count)
    create_api(app, settings, title="probe")
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    answer = app.test_client().get("/whoami", headers=headers, environ_base={"REMOTE_ADDR": PEER})
    return answer.json["address"]


@pytest.mark.parametrize(
    ("count", "forwarded", "seen"),
    [
        # No trusted proxy: the header is anyone's to write, so never read.
        (0, "203.0.113.7", PEER),
        (1, "203.0.113.7", "203.0.113.7"),
        # What the client wrote further left is never the address.
        (1, "198.51.100.1, 203.0.113.7", "203.0.113.7"),
        (1, "198.51.100.1,203.0.113.7", "203.0.113.7"),
        (2, "198.51.100.1, 203.0.113.7, 10.1.1.1", "203.0.113.7"),
        # Without the header, or with fewer hops than proxies: the peer.
        (1, None, PEER),
        (2, "203.0.113.7", PEER),
        # Routers that add a port; IPv6 in its one normal spelling.
        (1, "203.0.113.7:51234", "203.0.113.7"),
        (1, "[2001:DB8:0::1]:443", "2001:db8::1"),
        (1, "2001:db8:0:0::1", "2001:db8::1"),
        # Not an address (a miscounted proxy): the peer, never the junk.
        (1, "unknown", PEER),
        (1, "x" * 500, PEER),
    ],
)
def test_the_client_address(count, forwarded, seen):
    assert address_seen(count, forwarded) == seen


def test_trusted_proxy_count_is_read_and_checked():
    assert (
        web_settings_values(Env({}), leeway_minimum=0, access_maximum=None)["trusted_proxy_count"]
        == 0
    )
    values = web_settings_values(
        Env({"TRUSTED_PROXY_COUNT": "2"}), leeway_minimum=0, access_maximum=None
    )
    assert values["trusted_proxy_count"] == 2
    for bad in ("-1", "one", "11"):
        with pytest.raises(ConfigError, match="TRUSTED_PROXY_COUNT"):
            web_settings_values(
                Env({"TRUSTED_PROXY_COUNT": bad}), leeway_minimum=0, access_maximum=None
            )
