"""What a role name is: the rule ``ROLES``, tokens, events and HTTP bodies share.

Kept apart from common.fields (marshmallow) so that reading the configuration,
as every worker process does, does not load the web stack's schema library.
"""

from __future__ import annotations

import re

# Matched whole (``fullmatch``): ``$`` alone lets a trailing newline through.
ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ROLE_NAME_ERROR = "Role names are 1-32 of a-z, 0-9, _ and -, starting with a letter."
MAX_ROLES = 20
