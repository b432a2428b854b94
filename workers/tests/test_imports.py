"""A worker process loads what it runs, not the web stack.

Each module is imported in a fresh interpreter, as ``python -m`` would start
it, and the packages it must not pull in are looked for in ``sys.modules``.
How much memory that saves is the bench's business (``python -m bench.memory``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The web stack: no relay, consumer, mailer or janitor serves HTTP.
WEB = {"flask", "flask_smorest", "flask_limiter", "flask_cors", "werkzeug", "webargs", "apispec"}
#: Rendering mails (the web app does it; the mailer sends them as stored) and rate limits.
RENDERING = {"jinja2", "limits"}
#: Redis, and cryptography which redis loads: only the auth worker's revocation store uses it.
REDIS = {"redis", "cryptography"}

CASES = {
    "workers.relay": WEB | RENDERING | REDIS,
    "workers.user_worker": WEB | RENDERING | REDIS,
    "workers.auth_worker": WEB | RENDERING,
    "workers.mailer": WEB | RENDERING | REDIS,
    "workers.janitor": WEB | RENDERING | REDIS,
}


def loaded_after_import(module: str) -> set[str]:
    """Every module a fresh interpreter holds after ``import module``."""
    code = f"import json, sys, {module}\nprint(json.dumps(sorted(name for name in sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("module", sorted(CASES))
def test_a_worker_does_not_import_the_web_stack(module):
    loaded = loaded_after_import(module)
    packages = {name.split(".", 1)[0] for name in loaded}

    assert packages & CASES[module] == set()
    # Nor the apps' web modules: their HTTP resources and schemas, their app factories' parts.
    web_modules = sorted(
        name
        for name in loaded
        if name.startswith(("auth_app.", "user_app."))
        and (".resources" in name or name.endswith((".extensions", ".access", ".cli")))
    )
    assert web_modules == []
    assert "common.web" not in loaded and "common.flask_db" not in loaded


def test_the_check_sees_what_a_web_module_pulls_in():
    # The same check on the web app's package finds flask: it is not vacuous.
    loaded = loaded_after_import("user_app.resources")
    assert {"flask", "flask_smorest"} <= {name.split(".", 1)[0] for name in loaded}
