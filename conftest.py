"""Settings every test process (and every process a test starts) runs with.

The auth service refuses the public development pepper unless
``APP_ENV=development``, as under ``make run``. The tests run as development
does, whatever the calling shell says; a test of the production rule passes
its own environment (``auth_app/tests/test_pepper.py``, the end-to-end run).
"""

from __future__ import annotations

import os

os.environ["APP_ENV"] = "development"
