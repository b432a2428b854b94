# syntax=docker/dockerfile:1
#
# One image for every process of the Procfile: both web apps, both outbox
# relays, both workers and the migrations. docker-compose.yml picks the process
# with `command:`; the default is the auth web app.

ARG PYTHON_VERSION=3.12

# ---- build: wheels of the project and of every dependency -----------------
FROM python:${PYTHON_VERSION}-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Metadata first, so the dependency wheels stay cached while only code changes.
# README.md is optional (the glob lets the build go on without it).
COPY pyproject.toml README.md* ./
COPY common ./common
COPY auth_app ./auth_app
COPY user_app ./user_app
COPY workers ./workers
RUN pip wheel --wheel-dir /wheels .

# ---- runtime: the wheels on a slim Python, run as an unprivileged user -----
FROM python:${PYTHON_VERSION}-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    LOG_FORMAT=json

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin app

# Install from the build stage's wheels only (no index): the runtime stage
# needs no compiler and no network, and the wheels never land in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels authsvc

WORKDIR /app
COPY alembic.ini gunicorn.conf.py Procfile ./
COPY migrations ./migrations

# /keys is where the `keys` volume is mounted. A fresh named volume takes the
# owner of the directory it is mounted over, so the unprivileged user can write
# the first key pair there. No key is ever part of the image.
RUN mkdir -p /keys /app/var && chown app:app /keys /app/var

USER app:app

EXPOSE 5001 5002

CMD ["gunicorn", "--config", "gunicorn.conf.py", "--bind", "0.0.0.0:5001", "auth_app:create_app()"]
