# syntax=docker/dockerfile:1
# The operator image: `finetune operator` (kopf). No torch: the operator only renders manifests and
# talks to the Kubernetes API. Built from the repository root:
#   docker build -t ghcr.io/finetune-dev/finetune-operator:0.1.0 .
# tests/unit/test_dockerfiles.py checks this file statically and runs its entrypoint from a fresh
# virtualenv installed with the same pip command.

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
# Only what the wheel needs, so that edits to tests or docs do not invalidate this layer.
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY trainer_image/finetune_trainer /src/trainer_image/finetune_trainer
RUN /opt/venv/bin/pip install --no-cache-dir /src

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="finetune-operator" \
      org.opencontainers.image.description="Kubernetes operator for FineTuneJob (finetune.dev/v1alpha1)" \
      org.opencontainers.image.source="https://github.com/finetune-dev/finetune-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 finetune \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home finetune
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["finetune"]
CMD ["operator"]
