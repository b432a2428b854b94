"""What both services' ``/docs`` page must be: self-contained, under a same-origin-only policy."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

# Every directive the page's policy must have, exactly.
EXPECTED_POLICY = {
    "default-src": ["'none'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
_CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+)""")


class _PageParser(HTMLParser):
    """Collects the page's subresource URLs and anything inline."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        for name, _value in attrs:
            if name.startswith("on") or name == "style":
                self.inline.append(f"<{tag} {name}=...>")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self._in_script = True
            if not names.get("src"):
                self.inline.append("<script> without src")
        for name in ("src", "href"):
            if names.get(name):
                self.urls.append(names[name] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline script text")


def parse_policy(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as directive -> sources."""
    policy = {}
    for directive in header.split(";"):
        name, *sources = directive.split()
        policy[name] = sources
    return policy


def assert_same_origin(url: str) -> None:
    """A URL of this origin: a path, no scheme, no host (``//host/...`` included)."""
    parts = urlsplit(url)
    assert not parts.scheme and not parts.netloc and url.startswith("/"), url


def check_docs_page(client) -> list[str]:
    """Assert the page and everything it loads; return the URLs it loads (page, scripts, CSS)."""
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert parse_policy(page.headers["Content-Security-Policy"]) == EXPECTED_POLICY

    parser = _PageParser()
    parser.feed(page.get_data(as_text=True))
    assert parser.inline == [], "the policy would block these"
    assert len(parser.urls) >= 3, parser.urls
    loaded = []
    for url in parser.urls:
        assert_same_origin(url)
        asset = client.get(url)
        assert asset.status_code == 200, url
        loaded.append(url)
        if url.endswith(".css"):
            for inner in _CSS_URL.findall(asset.get_data(as_text=True)):
                if inner.startswith("data:"):
                    continue  # allowed by img-src
                inner_url = urljoin(url, inner)
                assert_same_origin(inner_url)
                assert client.get(inner_url).status_code == 200, inner_url
    # The start script names the document by a path of this origin, and it is there.
    [init] = [url for url in parser.urls if url.endswith("swagger-init.js")]
    script = client.get(init).get_data(as_text=True)
    assert "SwaggerUIBundle(" in script
    named = re.search(r'"url": "([^"]+)"', script)
    assert named is not None, script
    spec_url = named.group(1)
    assert_same_origin(spec_url)
    assert client.get(spec_url).status_code == 200
    return loaded
