# graduate's images, multi-stage; the service is the command:
#   docker run graduate serve router --host 0.0.0.0 --port 8080
#   docker run graduate worker judge --web-port 6066
#   docker run graduate-trainer train --task banking77-intent
# Which packages (build arg IMAGE, VARIANT), each from a hash-locked file (deploy/docker/lock.sh):
#   IMAGE=service (default)      router, stream workers, CLI: no torch, no onnxruntime  deploy/docker/service.lock
#   IMAGE=trainer VARIANT=cpu    + torch, transformers, optimum, onnxruntime             deploy/docker/trainer-cpu.lock
#   IMAGE=trainer VARIANT=gpu    onnxruntime-gpu in place of onnxruntime                 deploy/docker/trainer-gpu.lock
#   docker build -t graduate:0.1.0 .
#   docker build -t graduate-trainer-gpu:0.1.0 --build-arg IMAGE=trainer --build-arg VARIANT=gpu .
# The base is named in full and pinned by digest for a release: PYTHON_DIGEST (deploy/compose.env,
# or --build-arg) takes the digest that `docker buildx imagetools inspect $PYTHON_IMAGE` prints;
# deploy/README.md (Images) says how. Empty, the tag alone is used (local builds).
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
ARG PYTHON_DIGEST=

FROM ${PYTHON_IMAGE}${PYTHON_DIGEST:+@${PYTHON_DIGEST}} AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --- build: a virtual environment with the locked packages and graduate's own wheel -------------
FROM python AS build
ARG IMAGE=service
ARG VARIANT=cpu
RUN python -m venv /opt/venv
COPY deploy/docker/*.lock /tmp/locks/
RUN set -eux; \
    case "$IMAGE-$VARIANT" in \
      service-cpu|service-gpu) lock=service.lock ;; \
      trainer-cpu) lock=trainer-cpu.lock ;; \
      trainer-gpu) lock=trainer-gpu.lock ;; \
      *) echo "IMAGE must be service or trainer, VARIANT cpu or gpu" >&2; exit 1 ;; \
    esac; \
    /opt/venv/bin/pip install --require-hashes --no-deps -r "/tmp/locks/$lock"
WORKDIR /src
COPY . .
# A wheel, not an editable install. The code reads schemas/, config/ and data/ from the folder
# above its packages (REPO_ROOT in services/common/settings.py): site-packages here.
RUN set -eux; \
    /opt/venv/bin/pip wheel --no-deps -w /tmp/wheels . ; \
    /opt/venv/bin/pip install --no-deps /tmp/wheels/graduate-*.whl; \
    site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    cp -r schemas config data "$site/"; \
    /opt/venv/bin/graduate --help > /dev/null; \
    /opt/venv/bin/python -c 'from services.common.codec import Codec; Codec()'

# --- runtime: the base, a non-root user, the environment; nothing to compile with ---------------
FROM python AS runtime
RUN groupadd --system --gid 10001 graduate \
 && useradd --system --uid 10001 --gid graduate --home-dir /var/lib/graduate --no-create-home graduate \
 && install -d -o graduate -g graduate /var/lib/graduate /var/lib/graduate/datasets /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    GRADUATE_VAR_DIR=/var/lib/graduate \
    GRADUATE_MODEL_REPOSITORY=/models
USER 10001:10001
WORKDIR /var/lib/graduate
EXPOSE 8080 8090 6066
ENTRYPOINT ["graduate"]
CMD ["--help"]
