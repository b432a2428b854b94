"""``flask --app auth_app keys ...`` and ``flask --app auth_app users ...``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from auth_app import accounts, key_store
from auth_app.extensions import revocation, settings
from common.keys import generate_key_pair, rotate_key_pair

T = TypeVar("T")

keys_cli = AppGroup("keys", help="Manage the RS256 signing keys.")
users_cli = AppGroup("users", help="Manage accounts.")


def init_app(app: Flask) -> None:
    """Add the ``keys`` and ``users`` command groups to ``app``."""
    app.cli.add_command(keys_cli)
    app.cli.add_command(users_cli)


def _key_paths() -> tuple[Path, Path]:
    config = settings()
    if config.jwt_private_key:
        raise click.ClickException(
            "JWT_PRIVATE_KEY is set: the key comes from the environment, not from files"
        )
    if config.private_key_path is None or config.public_key_path is None:
        raise click.ClickException("PRIVATE_KEY_PATH and PUBLIC_KEY_PATH must be set")
    return config.private_key_path, config.public_key_path


def _in_key_store(change: Callable[[Session, key_store.KeySealer], T]) -> T:
    """Run ``change`` on the database key store and commit it; errors as one clear line."""
    config = settings()
    assert config.key_sealing_key is not None  # the settings refuse the store without it
    sealer = key_store.KeySealer(config.key_sealing_key)
    session = current_app.extensions["database"].sessionmaker()
    try:
        return key_store.commit_with_retry(session, lambda s: change(s, sealer))
    except key_store.ConcurrentChange:
        raise click.ClickException(
            "The key store kept changing under this command; run it again"
        ) from None
    except key_store.SealedKeyError as error:
        raise click.ClickException(
            f"KEY_ENCRYPTION_KEY: {error}; use the key every auth node was given"
        ) from None
    except key_store.NoSigningKey:
        raise click.ClickException(
            "No signing key in the auth database; run `flask --app auth_app keys generate` first"
        ) from None
    except (OperationalError, ProgrammingError) as error:
        reason = str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else ""
        raise click.ClickException(
            f"Cannot use the key store in the auth database ({reason}); "
            "is it reachable, and migrated (`alembic -n auth upgrade head`)?"
        ) from None
    finally:
        session.close()


def _generate_in_database() -> None:
    kid, made = _in_key_store(key_store.generate)
    if made:
        click.echo(f"Generated signing key {kid} in the auth database.")
    else:
        click.echo(f"Signing key {kid} already exists in the auth database; nothing to do.")


def _rotate_in_database() -> None:
    config = settings()
    activation = config.key_activation_seconds
    retain = config.key_retention_seconds
    old_kid, new_kid, at = _in_key_store(
        lambda session, sealer: key_store.rotate(
            session, sealer, retired_for=timedelta(seconds=activation + retain)
        )
    )
    signs_from = (at + timedelta(seconds=activation)).isoformat(timespec="seconds")
    click.echo(
        f"Rotated signing key {old_kid} -> {new_kid}. Every auth node publishes the new key "
        f"within {config.key_check_interval_seconds:g}s and signs with it from {signs_from}; "
        f"the old one stays trusted {retain}s longer."
    )


@keys_cli.command("generate")
def generate_keys() -> None:
    """Create the signing key pair unless it exists."""
    if settings().key_store == "database":
        _generate_in_database()
        return
    private_path, public_path = _key_paths()
    kid = generate_key_pair(private_path, public_path)
    if kid is None:
        click.echo(f"Key pair already exists at {private_path}; nothing to do.")
    else:
        click.echo(f"Generated key pair {kid} at {private_path} and {public_path}.")


@keys_cli.command("rotate")
def rotate_keys() -> None:
    """Make a new signing key active; the old public key stays published until its tokens expire."""
    if settings().key_store == "database":
        _rotate_in_database()
        return
    private_path, public_path = _key_paths()
    if not public_path.exists():
        raise click.ClickException(
            f"No key pair at {public_path}; run `flask --app auth_app keys generate` first"
        )
    retain = settings().key_retention_seconds
    old_kid, new_kid = rotate_key_pair(private_path, public_path, retain_seconds=retain)
    click.echo(f"Rotated signing key {old_kid} -> {new_kid}; {old_kid} stays trusted {retain}s.")


def _set_role(email: str, role: str, grant: bool) -> None:
    session = current_app.extensions["database"].sessionmaker()
    try:
        user = accounts.set_role(
            session, revocation(), email, role, grant=grant, roles=settings().roles
        )
        session.commit()
    except accounts.InvalidRole as error:
        raise click.BadParameter(str(error), param_hint="ROLE") from None
    except accounts.UnknownAccount:
        raise click.ClickException(f"No account with email {email}") from None
    finally:
        session.close()
    click.echo(f"{user.email} now has roles: {', '.join(user.roles)}")


@users_cli.command("grant-role")
@click.argument("email")
@click.argument("role")
def grant_role(email: str, role: str) -> None:
    """Give the account with EMAIL the role ROLE."""
    _set_role(email, role, grant=True)


@users_cli.command("revoke-role")
@click.argument("email")
@click.argument("role")
def revoke_role(email: str, role: str) -> None:
    """Take ROLE from the account with EMAIL; its sessions end so no token keeps the role."""
    _set_role(email, role, grant=False)
