# The reverse proxy of `docker compose up`: Debian's nginx in front of every replica of both services, with
# deploy/proxy.nginx.conf. Built from the services' base image, like the other images of the compose file.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
# Debian's nginx of the base image's release, security updates included: the release pins it, not a version.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default
COPY deploy/proxy.nginx.conf /etc/nginx/proxy.conf
USER 10001:10001
EXPOSE 8001 8002
# Healthy while it reaches a healthy auth replica.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=2)"]
# -e: errors to stderr from the start, before the configuration (whose error_log says the same) is read.
CMD ["nginx", "-e", "stderr", "-c", "/etc/nginx/proxy.conf"]
