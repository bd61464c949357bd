# syntax=docker/dockerfile:1
# The muscle-spasm FHIR guideline service: fhir_service.main:app on port 8000 (README.md).
#
#   docker build -t fhir-service .
#   docker run --rm -p 8000:8000 -e FHIR_SERVICE_AUTH=off fhir-service      # development only
#
# Settings are the contract's FHIR_SERVICE_* variables; the image keeps the contract defaults
# (JWT auth on, no trusted issuer, no outbound calls). docs/deployment.md has the details.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- 1. LHC-Forms assets for /forms (static files only; node/npm never reach the runtime image)
FROM ${PYTHON_IMAGE} AS forms
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY fhir_service/static/forms/package.json fhir_service/static/forms/package.json
COPY scripts/browser-deps.sh scripts/browser-deps.sh
# browser-deps.sh never fails by design; the test makes a missing lforms fail the build.
RUN bash scripts/browser-deps.sh --lforms-only \
 && test -f fhir_service/static/forms/node_modules/lforms/dist/lforms/webcomponent/main.js

# ---- 2. The service
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app
WORKDIR /app
# Dependencies first (a layer that changes only with the lock). The lock pins the whole CI set,
# dev tools included; as constraints it pins exactly the runtime dependencies of pyproject.toml
# without installing pytest, mypy, playwright & co. into the image.
COPY requirements.lock pyproject.toml ./
RUN mkdir fhir_service && touch fhir_service/__init__.py \
 && pip install -c requirements.lock -e . \
 && rm -rf fhir_service fhir_service.egg-info
COPY fhir_service ./fhir_service
COPY definitions ./definitions
# Editable install from the source tree: definitions/ and fhir_service/static/ are found next
# to the package, as in development.
RUN pip install --no-deps -e . \
 && mkdir -p /app/var \
 && chown app:app /app/var
COPY --from=forms /src/fhir_service/static/forms/node_modules/lforms/package.json \
     ./fhir_service/static/forms/node_modules/lforms/package.json
COPY --from=forms /src/fhir_service/static/forms/node_modules/lforms/dist/lforms \
     ./fhir_service/static/forms/node_modules/lforms/dist/lforms

USER app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=40s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
# python -m fhir_service (fhir_service/serve.py): one uvicorn worker per CPU core the container
# may use (FHIR_SERVICE_WORKERS overrides; set it to the CPU limit under Kubernetes), metrics
# summed across workers (multiprocess files under /tmp, or PROMETHEUS_MULTIPROC_DIR), proxy
# headers trusted from FORWARDED_ALLOW_IPS: behind nginx, the client address in logs is the real
# one. The JWT aud never depends on headers: it comes from FHIR_SERVICE_PUBLIC_BASE_URL.
ENV FORWARDED_ALLOW_IPS="*"
CMD ["python", "-m", "fhir_service", "--host", "0.0.0.0", "--port", "8000"]
