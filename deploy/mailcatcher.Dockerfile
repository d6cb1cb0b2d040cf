# The mail catcher of `docker compose up` (deploy/mailcatcher.py): SMTP on 1025, a web inbox on 8025.
# Development only. Built from the services' base image; aiosmtpd and its dependencies pinned as in
# requirements-dev.lock. The services never import it.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY requirements-dev.lock /tmp/requirements-dev.lock
RUN python3 -m venv /opt/venv \
 && grep -E '^(aiosmtpd|atpublic|attrs)==' /tmp/requirements-dev.lock > /tmp/mailcatcher.txt \
 && /opt/venv/bin/pip install --only-binary=:all: -r /tmp/mailcatcher.txt \
 && rm /tmp/requirements-dev.lock /tmp/mailcatcher.txt
COPY deploy/mailcatcher.py /app/mailcatcher.py
USER 10001:10001
EXPOSE 1025 8025
CMD ["/opt/venv/bin/python", "/app/mailcatcher.py", "--host", "0.0.0.0", "--smtp-port", "1025", "--http-port", "8025"]
