"""gunicorn settings for both web apps (``gunicorn -c gunicorn.conf.py 'auth_app:create_app()'``).

Worker model: ``gthread``. Login is bcrypt-bound, and bcrypt releases the GIL
while it hashes, so threads keep both cores busy on logins; reads are I/O-bound
(PostgreSQL, Redis), which threads overlap cheaply. One process per core keeps
memory low; ``WEB_CONCURRENCY`` and ``WEB_THREADS`` override.
"""

import multiprocessing
import os
import shutil
import tempfile

import gunicorn.http.wsgi

# A PaaS hands the web process its port in PORT; the Procfile's named
# processes pass --bind, which wins over this.
bind = f"0.0.0.0:{os.environ['PORT']}" if os.environ.get("PORT") else "127.0.0.1:8000"

# gthread, with request heads read by the event loop under a deadline so a
# slow client cannot hold a thread (see common/gunicorn_worker.py).
worker_class = "common.gunicorn_worker.DeadlineWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
threads = int(os.environ.get("WEB_THREADS", "4"))

# Slow or hostile clients: a request line or header block must arrive within
# WEB_READ_TIMEOUT seconds (the worker enforces it) and stay small, and a
# stuck request cannot hold a worker for long.
timeout = int(os.environ.get("WEB_TIMEOUT", "30"))
graceful_timeout = 10
keepalive = 5
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# Recycle workers now and then so slow leaks cannot grow without bound.
max_requests = 10000
max_requests_jitter = 1000

# Access log on stdout with the request id the app puts on every response.
# The path without its query string (%(U)s, not the request line %(r)s): a
# client may put a token or a password in the query, and it must not be logged.
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").strip().lower() or "info"

# LOG_FORMAT=json (the default, as in common.config): gunicorn's own lines,
# error and access, go through the services' handler, so every line of the
# process is one JSON object of the same keys and a log shipper needs one
# parser; access lines add method, path, status, duration_ms and request_id
# (common.logging.AccessLogFields). With text, gunicorn keeps its own format.
# A bad LOG_FORMAT or LOG_LEVEL is refused by the app, built in on_starting.
if (os.environ.get("LOG_FORMAT") or "json").strip().lower() == "json":
    _level = loglevel.upper() if loglevel in ("debug", "info", "warning", "error") else "INFO"
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": _level, "handlers": ["service"]},
        "loggers": {
            "gunicorn.error": {"level": _level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
        "handlers": {"service": {"()": "common.logging.service_handler", "fmt": "json"}},
        "formatters": {},
    }

# Do not tell clients which server this is: gunicorn puts its name in every
# Server header (the module global its responses read; workers fork after this).
proc_name = "authsvc"
gunicorn.http.wsgi.SERVER = "authsvc"

# gunicorn 25.1+ opens a control socket (for gunicornc) at one path per user
# by default, so the auth and user services on one host would take it from
# each other; nothing here uses it, and it can resize or stop the server.
control_socket_disable = True


# Metrics (GET /metrics): prometheus_client's multiprocess mode. Every worker
# writes its values to files in PROMETHEUS_MULTIPROC_DIR and /metrics, served
# by any one worker, sums them all; the files of a worker that exited stay, so
# its counts survive recycling (max_requests). The directory is this master's
# own, made empty at its start (tempfile.mkdtemp: private, under TMPDIR) and
# removed at its exit, so two services, or two instances of one, on a host
# never share one, and a restart starts from zero as Prometheus expects of a
# restarted target. The variable must be set before prometheus_client is first
# imported (it picks its mode then): here, before the app is built; the
# workers inherit it.
METRICS_PREFIX = "authsvc-metrics-"


def on_starting(server):
    """Build the app once in the master, before any worker forks: the app every worker serves.

    A bad or missing setting or key then stops gunicorn with the app's
    one-line message, instead of every worker failing on its own. And the
    app's objects (routes, schemas, the OpenAPI document, keys) are built
    once, their pages shared by the workers: each worker costs a few MB less.
    This is gunicorn's ``preload_app``, done here because that setting loads
    the app before on_starting, before the metrics directory exists.

    Building the app opens no connection, except the one that reads the
    signing keys under KEY_STORE=database (so a wrong KEY_ENCRYPTION_KEY
    stops it here too); it is closed before any fork, and each worker starts
    its own pools (post_fork): nothing is shared across the fork.
    With METRICS_ENABLED (the default), the metrics directory is made first.
    """
    from common.config import Env, stop_on_config_error

    package = _app_package(server)
    if package is None:
        return
    with stop_on_config_error():
        metrics_enabled = Env().bool("METRICS_ENABLED", True)
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if metrics_enabled:
        service = package[: -len("_app")]
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
            prefix=f"{METRICS_PREFIX}{service}-"
        )
    try:
        _preload(server, package)
    except BaseException:
        # A configuration error stops the master before on_exit would run.
        _remove_metrics_directory()
        raise


def on_reload(server):
    """``kill -HUP``: build the app again, so the new workers read the settings and keys anew.

    The workers a HUP starts, and those that replace a recycled one
    (max_requests) after it, serve this app. A configuration error stops
    gunicorn (exit status 4) with its one-line message, as at start.
    """
    package = _app_package(server)
    if package is None:
        return
    try:
        _preload(server, package)
    except BaseException as error:
        # As when a worker cannot load the app: the master stops its workers
        # and exits (its message, for a bad setting, already on stderr).
        from gunicorn.errors import HaltServer

        if not isinstance(error, SystemExit):
            server.log.exception("rebuilding the app on reload failed")
        raise HaltServer("App failed to load on reload", 4) from None


def post_fork(server, worker):
    """In each new worker: its own database pool, never one of the master's connections."""
    app = server.app.callable
    database = getattr(app, "extensions", {}).get("database")
    if database is not None:
        database.engine.dispose(close=False)


def _app_package(server):
    package = (getattr(server.app, "app_uri", "") or "").split(":", 1)[0]
    return package if package in ("auth_app", "user_app") else None


def _preload(server, package):
    """Build ``package``'s app, close what building opened, and make it the workers' app."""
    import gc
    import importlib

    # A previous app (before a HUP) may go: let the collector see it again.
    gc.unfreeze()
    app = importlib.import_module(package).create_app()
    app.extensions["database"].engine.dispose()
    client = app.extensions.get("redis")
    if client is not None:
        client.connection_pool.disconnect()
    # What gunicorn's preload_app does: the workers' load_wsgi returns this app.
    server.app.callable = app
    # The collector of a worker would otherwise write to every object the
    # master made (its bookkeeping lives in each object's header) and copy
    # the pages they share: they are left out of its passes.
    gc.collect()
    gc.freeze()


def child_exit(server, worker):
    """A worker exited: drop its live gauges' files (its counters and histograms stay summed)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """The master stops: its metrics directory goes with it."""
    _remove_metrics_directory()


def _remove_metrics_directory():
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.basename(directory).startswith(METRICS_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)
