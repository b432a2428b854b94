"""Password hashing and the password policy.

bcrypt reads only the first 72 bytes of its input, so a password is first
reduced with HMAC-SHA256 keyed by the pepper and base64-encoded (44 bytes):
every character counts, any length up to the policy's maximum hashes in the
same time, and a stolen database alone is not enough to test guesses.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from importlib import resources

import bcrypt

MAX_PASSWORD_LENGTH = 1024
_TRAILING_NOISE = re.compile(r"[\d\W_]+$")


class PasswordPolicyError(Exception):
    """The password is refused; ``messages`` says why, for the client."""

    def __init__(self, messages: list[str]):
        super().__init__("; ".join(messages))
        self.messages = messages


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, lower-cased."""
    text = resources.files("auth_app").joinpath("data/common-passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower()
        for line in text.splitlines()
        if line.strip() and not line.startswith("# ")
    )


def _is_common(password: str) -> bool:
    lowered = password.lower()
    listed = common_passwords()
    if lowered in listed:
        return True
    # "password2024!" is as weak as "password": refuse a listed word plus digits or symbols.
    stem = _TRAILING_NOISE.sub("", lowered)
    return len(stem) >= 4 and stem != lowered and stem in listed


def check_policy(password: str, *, email: str, username: str, min_length: int) -> None:
    """Raise PasswordPolicyError unless ``password`` is acceptable for this account."""
    problems = []
    if len(password) < min_length:
        problems.append(f"Password must be at least {min_length} characters long.")
    if len(password) > MAX_PASSWORD_LENGTH:
        problems.append(f"Password must be at most {MAX_PASSWORD_LENGTH} characters long.")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        problems.append("Password must be valid Unicode text.")
    lowered = password.lower()
    personal = {email.lower(), email.lower().partition("@")[0], username.lower()}
    if lowered in personal:
        problems.append("Password must not be your email address or username.")
    elif _is_common(password):
        problems.append("Password is too common; choose a less guessable one.")
    if problems:
        raise PasswordPolicyError(problems)


class PasswordHasher:
    """bcrypt over a peppered HMAC-SHA256 of the password, at a configured cost."""

    def __init__(self, rounds: int, pepper: str):
        self.rounds = rounds
        self._pepper = pepper.encode("utf-8")
        self._dummy: bytes | None = None

    def _prehash(self, password: str) -> bytes:
        # surrogatepass: a lone surrogate from JSON must hash (and fail), never crash.
        digest = hmac.new(
            self._pepper, password.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).digest()
        return base64.b64encode(digest)

    def hash(self, password: str) -> str:
        """A new bcrypt hash of ``password`` at the configured cost."""
        return bcrypt.hashpw(self._prehash(password), bcrypt.gensalt(self.rounds)).decode("ascii")

    def verify(self, password: str, hashed: str) -> bool:
        """Whether ``password`` matches ``hashed``; a malformed hash never matches."""
        try:
            return bcrypt.checkpw(self._prehash(password), hashed.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return False

    def burn(self, password: str) -> None:
        """Spend the time of one verification, for a user that does not exist."""
        if self._dummy is None:
            self._dummy = bcrypt.hashpw(b"dummy", bcrypt.gensalt(self.rounds))
        bcrypt.checkpw(self._prehash(password), self._dummy)

    def needs_rehash(self, hashed: str) -> bool:
        """Whether ``hashed`` was made at a lower cost than the configured one."""
        try:
            return int(hashed.split("$")[2]) < self.rounds
        except (IndexError, ValueError):
            return True
