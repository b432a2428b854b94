"""docker-compose.yml, its development override, the Dockerfile and .dockerignore.

No Docker engine runs where the tests run, so the compose files are checked the
way `docker compose config` would check them: variables interpolated with their
defaults, the override merged by the Compose merge rules, and the result
validated against the Compose Specification's JSON schema (vendored in
tests/data/, see tests/data/README.md). Then the promises the deployment makes
are checked one by one: the Procfile's processes all run, each process sees
only the networks it needs, keys come from a volume and never from the image.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest

from common.config import Env

DATA = Path(__file__).resolve().parent / "data"

# The processes built from this project's image, by role.
WEB_APPS = {"auth": 5001, "user": 5002}
RELAYS = ("auth_relay", "user_relay")
WORKERS = ("auth_worker", "user_worker")
MAILER = "mailer"
JANITORS = ("auth_janitor", "user_janitor")
ONE_SHOT = ("migrate", "keys")
AUTH_SIDE = ("auth", "auth_relay", "auth_worker", MAILER, "auth_janitor")
USER_SIDE = ("user", "user_relay", "user_worker", "user_janitor")
AUTH_STATE = ("auth-db", "redis")
USER_STATE = ("user-db",)
BACKING = ("auth-db", "user-db", "redis", "rabbitmq")

# `web` is the PaaS form of `auth` and `user` (APP=auth|user picks one); compose
# runs the two named processes instead. `mailsink` is `make run`'s mail printer;
# compose catches mail with Mailpit.
PROCFILE_ONLY = {"web", "mailsink"}
# URLs for browsers, not for the processes to connect to.
BROWSER_URLS = {"FRONTEND_URL"}


# --- what `docker compose config` does before validating ---------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class UnsetVariable(Exception):
    """A ``${NAME:?message}`` variable is unset."""


def interpolate(text: str, environ: dict[str, str]) -> str:
    """Expand ``$NAME``, ``${NAME}``, ``${NAME:-default}``, ``${NAME:?err}`` and ``$$``.

    The same rules as Compose's interpolation and, for these forms, the shell's.
    """

    def replace(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value = environ.get(name)
        op, arg = match["op"], match["arg"] or ""
        is_set = value is not None if op and not op.startswith(":") else bool(value)
        if op in (":-", "-"):
            return value if is_set else arg
        if op in (":?", "?"):
            if not is_set:
                raise UnsetVariable(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            return arg if is_set else ""
        return value or ""

    return _VARIABLE.sub(replace, text)


def interpolate_tree(node, environ: dict[str, str]):
    """Interpolate every string value of a parsed compose file (keys are left as they are)."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, environ) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, environ) for value in node]
    if isinstance(node, str):
        return interpolate(node, environ)
    return node


def environment_of(service: dict) -> dict[str, str]:
    """A service's environment as a mapping, whichever form the file uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _mount_target(mount) -> str:
    if isinstance(mount, dict):
        return mount["target"]
    parts = mount.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _merge_service(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if key == "environment":
            merged[key] = {**environment_of(base), **environment_of(override)}
        elif key in ("volumes", "devices"):
            by_target = {_mount_target(m): m for m in base.get(key, [])}
            by_target.update({_mount_target(m): m for m in value})
            merged[key] = list(by_target.values())
        elif key in ("ports", "expose", "dns", "dns_search", "tmpfs"):
            merged[key] = base.get(key, []) + [v for v in value if v not in base.get(key, [])]
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = {**base[key], **value}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_compose(base: dict, override: dict) -> dict:
    """Merge an override file over a compose file by the Compose Specification's merge rules.

    Mappings merge, ``environment`` merges by name, ``volumes`` by target path,
    ``ports`` and the like append; a scalar or a ``command`` is replaced.
    """
    merged = copy.deepcopy(base)
    for section, value in override.items():
        if section == "services":
            services = merged.setdefault("services", {})
            for name, service in value.items():
                services[name] = _merge_service(services.get(name, {}), service)
        elif isinstance(value, dict):
            merged[section] = {**merged.get(section, {}), **value}
        else:
            merged[section] = value
    return merged


@pytest.fixture(scope="module")
def schema() -> dict:
    """The Compose Specification's JSON schema."""
    return json.loads((DATA / "compose-spec.json").read_text())


@pytest.fixture(scope="module")
def base(compose_base) -> dict:
    """docker-compose.yml as Compose sees it with an empty environment (every default taken)."""
    return interpolate_tree(compose_base, {})


@pytest.fixture(scope="module")
def merged(compose_base, compose_override) -> dict:
    """docker-compose.yml with docker-compose.override.yml merged over it, interpolated."""
    return interpolate_tree(merge_compose(compose_base, compose_override), {})


@pytest.fixture(scope="module", params=["base", "merged"])
def config(request, base, merged) -> dict:
    """Each configuration a user can start: production-like, and development."""
    return {"base": base, "merged": merged}[request.param]


def schema_errors(schema: dict, document: dict) -> list[str]:
    """Every schema violation, as 'path: message' lines."""
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def networks_of(service: dict) -> set[str]:
    """The networks a service's containers join."""
    if service.get("network_mode") == "none":
        return set()
    networks = service.get("networks")
    if networks is None:
        return {"default"}
    return set(networks)


def argv_of(service: dict) -> list[str]:
    """A service's command as an argument list, with a ``sh -c`` script split into words."""
    command = service["command"]
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[:2] == ["sh", "-c"] and len(argv) == 3:
        return shlex.split(argv[2])
    return argv


def app_services(config: dict) -> dict[str, dict]:
    """The services that run this project's image."""
    return {name: s for name, s in config["services"].items() if "build" in s}


# --- the checker itself follows Compose's rules ------------------------------


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A:-d}", {"A": "x"}, "x"),
        ("${A:+on}|${B:+on}", {"A": "x"}, "on|"),
        ("${A+on}", {"A": ""}, "on"),
        ("$A-${A}", {"A": "x"}, "x-x"),
        ("$$HOME", {"HOME": "x"}, "$HOME"),
        ("${A?need}", {"A": ""}, ""),
    ],
)
def test_interpolation_follows_compose(text, environ, expected):
    assert interpolate(text, environ) == expected


@pytest.mark.parametrize("text", ["${A:?set A}", "${A?set A}"])
def test_interpolation_refuses_an_unset_required_variable(text):
    with pytest.raises(UnsetVariable, match="set A"):
        interpolate(text, {})


def test_override_merge_follows_compose():
    base = {
        "name": "a",
        "services": {
            "s": {
                "command": ["run", "--fast"],
                "environment": ["A=1", "B=2", "EMPTY"],
                "volumes": ["data:/data", {"type": "volume", "source": "k", "target": "/k"}],
                "ports": ["80:80"],
                "deploy": {"replicas": 1},
            }
        },
        "volumes": {"data": None},
    }
    override = {
        "name": "b",
        "services": {
            "s": {
                "command": ["run"],
                "environment": {"B": "3"},
                "volumes": ["other:/data"],
                "ports": ["80:80", "81:81"],
                "deploy": {"restart_policy": {"condition": "any"}},
            },
            "t": {"image": "x"},
        },
        "volumes": {"other": None},
    }

    merged = merge_compose(base, override)

    service = merged["services"]["s"]
    assert service["command"] == ["run"]
    assert environment_of(service) == {"A": "1", "B": "3", "EMPTY": ""}
    assert service["volumes"] == ["other:/data", {"type": "volume", "source": "k", "target": "/k"}]
    assert service["ports"] == ["80:80", "81:81"]
    assert service["deploy"] == {"replicas": 1, "restart_policy": {"condition": "any"}}
    assert merged["services"]["t"] == {"image": "x"}
    assert merged["volumes"] == {"data": None, "other": None}
    assert merged["name"] == "b"


def test_a_service_without_networks_is_on_the_default_one():
    assert networks_of({}) == {"default"}
    assert networks_of({"network_mode": "none", "networks": ["a"]}) == set()
    assert networks_of({"networks": {"a": {}, "b": None}}) == {"a", "b"}


def test_dockerfile_parser_joins_continued_lines_and_skips_comments():
    text = "# top\nFROM a AS one\nRUN x \\\n  # inside\n  && y\n\nFROM b\nUSER 1000\n"
    assert dockerfile_stages(text) == [
        [("FROM", "a AS one"), ("RUN", "x && y")],
        [("FROM", "b"), ("USER", "1000")],
    ]


def test_dockerignore_matching_follows_docker():
    assert ignored(["*.pem"], "a.pem") and not ignored(["*.pem"], "dir/a.pem")
    assert ignored(["**/*.pem"], "dir/sub/a.pem")
    assert ignored(["keys", "!keys/README.md"], "keys/a.pem")
    assert not ignored(["keys", "!keys/README.md"], "keys/README.md")
    assert ignored(["da?a"], "data/x")


# --- the files are valid Compose ---------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification(schema, base):
    assert schema_errors(schema, base) == []


def test_compose_file_with_the_development_override_is_valid(schema, merged):
    assert schema_errors(schema, merged) == []


def test_the_schema_refuses_a_misspelt_key_and_an_unknown_condition(schema, base):
    broken = copy.deepcopy(base)
    broken["services"]["auth"]["helthcheck"] = broken["services"]["auth"].pop("healthcheck")
    broken["services"]["user"]["depends_on"]["migrate"]["condition"] = "service_finished"

    errors = schema_errors(schema, broken)

    assert any("helthcheck" in error for error in errors)
    assert any("service_finished" in error for error in errors)


def test_every_variable_has_a_default_so_a_bare_compose_up_works(compose_base, compose_override):
    for document in (compose_base, compose_override):
        interpolate_tree(document, {})  # a ${NAME:?...} without a value would raise


# --- the Procfile's processes ------------------------------------------------


def test_every_procfile_process_runs_as_a_compose_service_with_the_same_command(procfile, base):
    services = app_services(base)
    for process, line in procfile.items():
        if process in PROCFILE_ONLY:
            continue
        matches = []
        for name, service in services.items():
            try:
                expected = shlex.split(interpolate(line, environment_of(service)))
            except UnsetVariable:
                continue
            if argv_of(service) == expected:
                matches.append(name)
        assert matches, f"no compose service runs the Procfile's {process!r}: {line}"


def test_compose_runs_nothing_the_procfile_does_not_know_besides_key_generation(procfile, base):
    known = [shlex.split(line) for line in procfile.values()]
    for name, service in app_services(base).items():
        argv = argv_of(service)
        if name == "keys":
            assert argv == ["flask", "--app", "auth_app", "keys", "generate"]
            continue
        assert argv[0] in {words[0] for words in known}, f"{name} runs {argv}"


def test_web_apps_bind_on_every_interface_at_their_own_port(base):
    for name, port in WEB_APPS.items():
        argv = argv_of(base["services"][name])
        assert argv[argv.index("--bind") + 1] == f"0.0.0.0:{port}"
        assert f"{port}:{port}" in base["services"][name]["ports"]


def test_development_override_reloads_both_web_apps_from_the_mounted_source(base, merged):
    for name in WEB_APPS:
        service = merged["services"][name]
        assert "--reload" in argv_of(service)
        assert [w for w in argv_of(service) if w != "--reload"] == argv_of(base["services"][name])
        assert ".:/app" in service["volumes"]
        assert environment_of(service)["LOG_FORMAT"] == "text"


def test_logs_are_json_in_the_base_file_and_text_under_the_override(base, merged):
    for name in app_services(base):
        assert environment_of(base["services"][name])["LOG_FORMAT"] == "json", name
        assert environment_of(merged["services"][name])["LOG_FORMAT"] == "text", name


def test_every_process_of_the_project_is_built_from_the_one_dockerfile(base):
    services = app_services(base)
    assert set(services) == {*WEB_APPS, *RELAYS, *WORKERS, MAILER, *JANITORS, *ONE_SHOT}
    builds = {json.dumps(s["build"], sort_keys=True) for s in services.values()}
    assert len(builds) == 1
    assert {s["image"] for s in services.values()} == {"authsvc:latest"}


# --- health, order, limits, restarts -----------------------------------------


def test_every_service_has_cpu_and_memory_limits(config):
    for name, service in config["services"].items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), f"{name} has no limits"


def test_every_service_has_a_restart_policy_and_one_shot_jobs_do_not_restart(config):
    for name, service in config["services"].items():
        expected = {"no"} if name in ONE_SHOT else {"always", "unless-stopped", "on-failure"}
        assert service.get("restart") in expected, name


def test_backing_services_have_their_own_healthchecks(base):
    probes = {
        "auth-db": "pg_isready",
        "user-db": "pg_isready",
        "redis": "redis-cli ping",
        "rabbitmq": "rabbitmq-diagnostics -q ping",
    }
    for name, probe in probes.items():
        assert probe in " ".join(base["services"][name]["healthcheck"]["test"]), name


def test_web_apps_are_healthy_only_when_ready_on_their_own_port(base):
    for name, port in WEB_APPS.items():
        test = base["services"][name]["healthcheck"]["test"]
        # The slim image has no curl: the probe is Python's urllib, which fails on a 503.
        assert test[:3] == ["CMD", "python", "-c"]
        assert f"http://127.0.0.1:{port}/health/ready" in test[3]
        assert "urllib.request.urlopen" in test[3]


def test_every_dependency_waits_for_health_or_completion(config):
    services = config["services"]
    for name, service in services.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = spec["condition"]
            if target in ONE_SHOT:
                assert condition == "service_completed_successfully", (name, target)
            else:
                assert condition == "service_healthy", (name, target)
                assert "healthcheck" in services[target], f"{target} has no healthcheck"


def test_no_process_starts_before_migrations_and_web_apps_wait_for_keys(base):
    services = base["services"]
    for name in (*WEB_APPS, *RELAYS, *WORKERS):
        assert "migrate" in services[name]["depends_on"], name
    for name in WEB_APPS:
        assert "keys" in services[name]["depends_on"], name


def test_every_process_waits_for_the_servers_its_urls_name(config):
    services = config["services"]
    for name, service in app_services(config).items():
        hosts = {
            urlsplit(value).hostname
            for key, value in environment_of(service).items()
            if key.endswith("_URL") and "://" in value and key not in BROWSER_URLS
        }
        for host in hosts:
            assert host in services[name].get("depends_on", {}), f"{name} -> {host}"


@pytest.mark.parametrize("variant", ["base", "merged"])
def test_every_process_accepts_the_environment_compose_gives_it(
    variant, base, merged, compose_base
):
    # A bad value would stop the container at start with a configuration error.
    from auth_app.config import load_settings as auth_settings
    from common.config import Env, database_url
    from user_app.config import load_settings as user_settings
    from workers.settings import BrokerSettings

    services = {"base": base, "merged": merged}[variant]["services"]
    if variant == "base":
        # Production-like: the operator's shell (or .env) supplies the pepper.
        with_pepper = interpolate_tree(compose_base, {"PASSWORD_PEPPER": "pepper-of-this-host"})
        services = with_pepper["services"]
    auth = auth_settings(environ=environment_of(services["auth"]))
    assert auth.database_url.startswith("postgresql://auth:")
    assert auth.redis_url == "redis://redis:6379/0"
    user = user_settings(environ=environment_of(services["user"]))
    assert user.database_url.startswith("postgresql://users:")
    for name, prefix in [
        ("auth_relay", "AUTH"),
        ("auth_worker", "AUTH"),
        ("user_relay", "USER"),
        ("user_worker", "USER"),
    ]:
        env = Env(environment_of(services[name]))
        assert database_url(env, prefix, prefix.lower()).startswith("postgresql://"), name
        assert BrokerSettings.from_env(env).url.startswith("amqp://"), name
    for name in AUTH_SETTINGS_LOADERS:
        auth_settings(environ=environment_of(services[name]))


# Every service whose process loads the auth service's settings, and so checks the pepper.
AUTH_SETTINGS_LOADERS = ("auth", "keys", "auth_relay", "auth_worker")


def test_production_like_compose_refuses_to_start_without_a_pepper(base):
    from auth_app.config import load_settings as auth_settings
    from common.config import ConfigError

    for name in AUTH_SETTINGS_LOADERS:
        environ = environment_of(base["services"][name])
        assert environ["APP_ENV"] == "production", name
        with pytest.raises(ConfigError, match="^PASSWORD_PEPPER must be set"):
            auth_settings(environ=environ)


def test_production_like_compose_needs_an_smtp_server_for_the_mailer(base):
    from common.config import ConfigError
    from workers.mailer import MailerSettings

    environ = environment_of(base["services"][MAILER])
    assert environ["SMTP_URL"] == ""
    with pytest.raises(ConfigError, match="^SMTP_URL must be set"):
        MailerSettings.from_env(Env(environ))
    given = {**environ, "SMTP_URL": "smtps://mailer:secret@smtp.example:465"}
    assert MailerSettings.from_env(Env(given)).smtp.host == "smtp.example"


def test_development_compose_sends_mail_to_mailpit_and_shows_it_on_loopback(merged):
    from workers.mailer import MailerSettings

    services = merged["services"]
    settings = MailerSettings.from_env(Env(environment_of(services[MAILER])))
    assert (settings.smtp.host, settings.smtp.port) == ("mailpit", 1025)
    assert networks_of(services["mailpit"]) == {"mail-network"}
    assert services["mailpit"]["ports"] == ["127.0.0.1:8025:8025"]
    assert services[MAILER]["depends_on"]["mailpit"]["condition"] == "service_healthy"


def test_development_compose_runs_on_the_development_pepper(merged):
    from auth_app.config import DEV_PASSWORD_PEPPER
    from auth_app.config import load_settings as auth_settings

    for name in AUTH_SETTINGS_LOADERS:
        environ = environment_of(merged["services"][name])
        assert environ["APP_ENV"] == "development", name
        assert auth_settings(environ=environ).password_pepper == DEV_PASSWORD_PEPPER


def test_the_database_urls_compose_hands_out_use_the_installed_driver(base):
    from common.db import make_engine

    urls = {
        value
        for service in app_services(base).values()
        for key, value in environment_of(service).items()
        if key.endswith("DATABASE_URL")
    }
    assert len(urls) == 2
    for url in urls:
        engine = make_engine(url)  # builds the dialect and imports its driver; no connection
        try:
            assert engine.dialect.driver == "psycopg2"
        finally:
            engine.dispose()


# --- networks ----------------------------------------------------------------


def test_every_url_a_process_is_given_points_at_a_service_on_a_shared_network(config):
    services = config["services"]
    for name, service in app_services(config).items():
        for key, value in environment_of(service).items():
            if not key.endswith("_URL") or "://" not in value or key in BROWSER_URLS:
                continue
            host = urlsplit(value).hostname
            assert host in services, f"{name}: {key} names unknown host {host}"
            shared = networks_of(service) & networks_of(services[host])
            assert shared, f"{name} cannot reach {host} ({key})"


def test_the_user_side_shares_no_network_with_the_auth_database_or_redis(config):
    services = config["services"]
    for name in USER_SIDE:
        for private in AUTH_STATE:
            assert not networks_of(services[name]) & networks_of(services[private]), (name, private)
    assert "auth-network" not in networks_of(services["user"])


def test_the_auth_side_shares_no_network_with_the_user_database(config):
    services = config["services"]
    for name in AUTH_SIDE:
        for private in USER_STATE:
            assert not networks_of(services[name]) & networks_of(services[private]), (name, private)
    assert "user-network" not in networks_of(services["auth"])


def test_rabbitmq_is_reachable_by_every_relay_and_worker(config):
    services = config["services"]
    broker = networks_of(services["rabbitmq"])
    for name in (*RELAYS, *WORKERS):
        assert networks_of(services[name]) & broker, name


def test_networks_are_the_four_named_ones(base):
    assert set(base["networks"]) == {
        "auth-network",
        "user-network",
        "microservice-network",
        "mail-network",
    }
    assert networks_of(base["services"]["rabbitmq"]) == {"microservice-network"}
    assert networks_of(base["services"]["auth-db"]) == {"auth-network"}
    assert networks_of(base["services"]["redis"]) == {"auth-network"}
    assert networks_of(base["services"]["user-db"]) == {"user-network"}


# --- keys and data -----------------------------------------------------------


def _volume_mounts(service: dict) -> list[dict]:
    mounts = []
    for mount in service.get("volumes", []):
        if isinstance(mount, str):
            source, target, *mode = mount.split(":")
            mount = {"source": source, "target": target, "read_only": mode == ["ro"]}
        mounts.append(mount)
    return mounts


def test_only_the_keys_job_can_write_the_keys_volume(config):
    writers, readers = [], []
    for name, service in config["services"].items():
        for mount in _volume_mounts(service):
            if mount["source"] == "keys":
                (readers if mount.get("read_only") else writers).append(name)
    assert writers == ["keys"]
    assert sorted(readers) == ["auth", "user"]


def test_the_user_app_gets_the_public_keys_alone(base):
    user = base["services"]["user"]
    [mount] = [m for m in _volume_mounts(user) if m["source"] == "keys"]
    assert mount["volume"]["subpath"] == "public"
    assert mount["read_only"] is True
    env = environment_of(user)
    assert env["PUBLIC_KEY_PATH"].startswith(mount["target"] + "/")
    assert "PRIVATE_KEY_PATH" not in env and "JWT_PRIVATE_KEY" not in env


def test_the_keys_job_writes_where_the_apps_read(base):
    services = base["services"]
    keys_env = environment_of(services["keys"])
    auth_env = environment_of(services["auth"])
    for variable in ("PRIVATE_KEY_PATH", "PUBLIC_KEY_PATH"):
        assert keys_env[variable] == auth_env[variable]
        assert keys_env[variable].startswith("/keys/")
    # The public half sits in the directory the user app is given.
    assert keys_env["PUBLIC_KEY_PATH"].startswith("/keys/public/")
    assert not keys_env["PRIVATE_KEY_PATH"].startswith("/keys/public/")


def test_both_services_agree_on_issuer_audience_and_token_lifetime(base):
    auth = environment_of(base["services"]["auth"])
    user = environment_of(base["services"]["user"])
    for variable in ("JWT_ISSUER", "JWT_AUDIENCE", "ACCESS_TOKEN_EXPIRE_MINUTES", "ALGORITHM"):
        assert auth[variable] == user[variable], variable
    assert auth["ALGORITHM"] == "RS256"


def test_each_database_keeps_its_data_in_its_own_volume(base):
    sources = {}
    for name in ("auth-db", "user-db"):
        [mount] = _volume_mounts(base["services"][name])
        assert mount["target"] == "/var/lib/postgresql/data"
        assert mount["source"] in base["volumes"]
        sources[name] = mount["source"]
    assert sources["auth-db"] != sources["user-db"]
    assert "keys" in base["volumes"]


# --- Dockerfile --------------------------------------------------------------


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, grouped by stage: ``[[(INSTRUCTION, arguments), ...]]``."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line.strip())
        current = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, " ".join(arguments.split())))
    return stages


@pytest.fixture(scope="module")
def stages(root) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages."""
    return dockerfile_stages((root / "Dockerfile").read_text())


def _args(stage, instruction: str) -> list[str]:
    return [arguments for name, arguments in stage if name == instruction]


def test_dockerfile_builds_wheels_in_one_stage_and_installs_them_in_a_slim_one(stages):
    assert len(stages) >= 2
    build, runtime = stages[0], stages[-1]
    assert any("pip wheel" in run for run in _args(build, "RUN"))
    [base_image] = _args(runtime, "FROM")
    assert re.match(r"python:(\$\{PYTHON_VERSION\}|3\.1[12])-slim AS runtime$", base_image)
    [install] = [run for run in _args(runtime, "RUN") if "pip install" in run]
    assert "from=build" in install and "--no-index" in install


def test_dockerfile_final_stage_runs_as_a_non_root_user(stages):
    users = _args(stages[-1], "USER")
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_dockerfile_build_stage_copies_every_package_of_the_distribution(stages, root):
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    copied = " ".join(_args(stages[0], "COPY")).split()
    assert "pyproject.toml" in copied
    for package in packages:
        assert package in copied, f"the build stage does not copy {package}/"


def test_dockerfile_final_stage_has_what_the_processes_read_at_run_time(stages):
    copied = " ".join(_args(stages[-1], "COPY")).split()
    for needed in ("alembic.ini", "migrations", "gunicorn.conf.py", "Procfile"):
        assert needed in copied, needed


def test_dockerfile_copies_no_key_into_any_stage(stages):
    for stage in stages:
        for arguments in _args(stage, "COPY") + _args(stage, "ADD"):
            assert "keys" not in arguments.split() and ".pem" not in arguments, arguments


# --- .dockerignore -----------------------------------------------------------


def _ignore_pattern(pattern: str) -> re.Pattern:
    # Docker matches each pattern from the context root; `**` spans directories.
    pattern = pattern.strip("/")
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            regex, index = regex + ".*", index + 2
        elif pattern[index] == "*":
            regex, index = regex + "[^/]*", index + 1
        elif pattern[index] == "?":
            regex, index = regex + "[^/]", index + 1
        else:
            regex, index = regex + re.escape(pattern[index]), index + 1
    return re.compile(regex + "$")


def ignored(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves ``path`` (or a directory above it) out of the build context."""
    parents = [path]
    while "/" in parents[-1]:
        parents.append(parents[-1].rsplit("/", 1)[0])
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _ignore_pattern(pattern.lstrip("!"))
        if any(regex.match(candidate) for candidate in parents):
            result = not negate
    return result


@pytest.fixture(scope="module")
def ignore_patterns(root) -> list[str]:
    """The .dockerignore patterns, in order."""
    lines = (root / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        "keys",
        "keys/private.pem",
        "keys/retired/1700000000-abc.pem",
        "private.pem",
        "auth_app/tests/data/signing.pem",
        ".venv/bin/python",
        "var/auth.db",
        ".git/HEAD",
        "auth_app/__pycache__/config.cpython-312.pyc",
        ".env",
    ],
)
def test_dockerignore_keeps_keys_and_local_state_out_of_the_build_context(ignore_patterns, path):
    assert ignored(ignore_patterns, path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "auth_app/__init__.py",
        "auth_app/data/common-passwords.txt",
        "common/keys.py",
        "migrations/auth/env.py",
        "alembic.ini",
        "gunicorn.conf.py",
        "Procfile",
    ],
)
def test_dockerignore_keeps_what_the_image_needs(ignore_patterns, path):
    assert not ignored(ignore_patterns, path)
