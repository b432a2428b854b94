"""Fixtures for the deployment files at the repository root (Procfile, Dockerfile, compose)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def parse_procfile(text: str) -> dict[str, str]:
    """Process type -> command line, as honcho and PaaS platforms read a Procfile."""
    processes = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, command = line.partition(":")
        assert name.strip() not in processes, f"process type {name!r} appears twice"
        processes[name.strip()] = command.strip()
    return processes


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root, where the deployment files live."""
    return ROOT


@pytest.fixture(scope="session")
def procfile() -> dict[str, str]:
    """The Procfile's process types and their commands."""
    return parse_procfile((ROOT / "Procfile").read_text())


@pytest.fixture(scope="session")
def compose_base() -> dict:
    """docker-compose.yml as YAML (anchors and merge keys resolved, no interpolation)."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def compose_override() -> dict:
    """docker-compose.override.yml as YAML."""
    return yaml.safe_load((ROOT / "docker-compose.override.yml").read_text())
