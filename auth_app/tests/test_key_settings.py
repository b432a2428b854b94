"""``KEY_STORE``, ``KEY_ENCRYPTION_KEY``, ``KEY_CHECK_INTERVAL_SECONDS``: read, checked, hidden."""

from __future__ import annotations

import base64
import os

import pytest

from auth_app.config import load_settings
from common.config import ConfigError

RAW_KEY = os.urandom(32)
# What `openssl rand -base64 32` prints, and the base64url form without padding.
BASE64_KEY = base64.b64encode(RAW_KEY).decode()
BASE64URL_KEY = base64.urlsafe_b64encode(RAW_KEY).decode().rstrip("=")
# The development pepper: these tests are about the keys alone.
DEVELOPMENT = {"APP_ENV": "development"}
DATABASE = {**DEVELOPMENT, "KEY_STORE": "database"}


def test_the_key_store_is_files_unless_told_otherwise():
    settings = load_settings(environ=DEVELOPMENT)
    assert settings.key_store == "file"
    assert settings.key_sealing_key is None
    assert settings.key_check_interval_seconds == 2.0


@pytest.mark.parametrize("given", [BASE64_KEY, BASE64URL_KEY], ids=["base64", "base64url"])
def test_the_database_store_takes_32_bytes_in_base64_or_base64url(given):
    settings = load_settings(environ={**DATABASE, "KEY_ENCRYPTION_KEY": given})
    assert settings.key_store == "database"
    assert settings.key_sealing_key == RAW_KEY


def test_the_database_store_without_a_key_encryption_key_is_refused():
    with pytest.raises(
        ConfigError, match="^KEY_ENCRYPTION_KEY must be set with KEY_STORE=database"
    ):
        load_settings(environ=DATABASE)


@pytest.mark.parametrize(
    "given",
    [
        base64.b64encode(os.urandom(31)).decode(),
        base64.b64encode(os.urandom(33)).decode(),
        "not base64 at all, but long enough to be 32 bytes!!",
        "a-passphrase-someone-typed",
    ],
    ids=["31-bytes", "33-bytes", "not-base64", "passphrase"],
)
def test_a_malformed_key_encryption_key_is_refused_without_quoting_it(given):
    with pytest.raises(ConfigError) as error:
        load_settings(environ={**DATABASE, "KEY_ENCRYPTION_KEY": given})
    assert str(error.value).startswith("KEY_ENCRYPTION_KEY must be 32 random bytes in base64")
    assert given not in str(error.value)


def test_a_malformed_key_encryption_key_is_refused_with_the_file_store_too():
    with pytest.raises(ConfigError, match="^KEY_ENCRYPTION_KEY must be 32 random bytes"):
        load_settings(environ={**DEVELOPMENT, "KEY_ENCRYPTION_KEY": "short"})


def test_an_unknown_key_store_is_refused():
    with pytest.raises(ConfigError, match="^KEY_STORE must be one of file, database"):
        load_settings(environ={**DEVELOPMENT, "KEY_STORE": "vault"})


def test_pem_signing_key_and_database_store_together_are_refused():
    environ = {**DATABASE, "KEY_ENCRYPTION_KEY": BASE64_KEY, "JWT_PRIVATE_KEY": "-----BEGIN..."}
    with pytest.raises(ConfigError, match="^JWT_PRIVATE_KEY is set, but KEY_STORE=database"):
        load_settings(environ=environ)


@pytest.mark.parametrize("given", ["0", "61", "often"])
def test_a_key_check_interval_out_of_bounds_is_refused(given):
    with pytest.raises(ConfigError, match="^KEY_CHECK_INTERVAL_SECONDS must be"):
        load_settings(environ={**DEVELOPMENT, "KEY_CHECK_INTERVAL_SECONDS": given})


def test_a_rotated_in_key_signs_only_after_every_node_has_checked_the_store():
    settings = load_settings(environ={**DEVELOPMENT, "KEY_CHECK_INTERVAL_SECONDS": "1.5"})
    assert settings.key_activation_seconds > settings.key_check_interval_seconds


def test_the_key_encryption_key_never_shows_in_the_settings_repr():
    settings = load_settings(environ={**DATABASE, "KEY_ENCRYPTION_KEY": BASE64_KEY})
    shown = repr(settings)
    assert BASE64_KEY not in shown
    assert repr(RAW_KEY) not in shown
    assert "key_sealing_key" not in shown


def test_the_public_development_key_encryption_key_works_only_in_development():
    development_key = "YXV0aHN2YyBkZXZlbG9wbWVudCBrZXk7IHB1YmxpYyE="
    settings = load_settings(environ={**DATABASE, "KEY_ENCRYPTION_KEY": development_key})
    assert settings.key_sealing_key == base64.b64decode(development_key)
    production = {
        "APP_ENV": "production",
        "PASSWORD_PEPPER": "a-pepper-of-this-test",
        "KEY_STORE": "database",
        "KEY_ENCRYPTION_KEY": development_key,
    }
    with pytest.raises(ConfigError, match="^KEY_ENCRYPTION_KEY is the public development key"):
        load_settings(environ=production)
