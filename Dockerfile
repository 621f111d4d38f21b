# One image for every graduate process; the service is the command:
#   docker run graduate serve router --host 0.0.0.0 --port 8080
#   docker run graduate worker judge --web-port 6066
#   docker run graduate train --task banking77-intent
# Variants (build arg VARIANT): cpu (default, onnxruntime) and gpu (onnxruntime-gpu instead):
#   docker build -t graduate:0.1.0 .
#   docker build -t graduate-gpu:0.1.0 --build-arg VARIANT=gpu .
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG VARIANT=cpu
# extras of pyproject.toml to install; "trainer" brings torch, transformers, optimum, onnxruntime
ARG EXTRAS=trainer
# onnxruntime-gpu trails onnxruntime on the package index: its own pin
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
# optional package index for torch alone (e.g. PyTorch's CPU-only wheels, to keep the cpu image small)
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    GRADUATE_VAR_DIR=/var/lib/graduate \
    GRADUATE_MODEL_REPOSITORY=/models

RUN groupadd --system --gid 10001 graduate \
 && useradd --system --uid 10001 --gid graduate --home-dir /var/lib/graduate --no-create-home graduate \
 && install -d -o graduate -g graduate /var/lib/graduate /var/lib/graduate/datasets /models

WORKDIR /app

# Dependencies first, pinned by the lock (as constraints: only what the extras need is installed),
# so a code change does not reinstall them.
COPY pyproject.toml requirements.lock deploy/image_requirements.py ./
RUN python image_requirements.py > /tmp/requirements.txt
RUN set -eux; \
    grep -v '^onnxruntime==' requirements.lock > /tmp/constraints.txt; \
    if [ -n "$TORCH_INDEX_URL" ] && grep -q '^torch==' /tmp/requirements.txt; then \
        pip install --index-url "$TORCH_INDEX_URL" -c /tmp/constraints.txt torch; \
    fi; \
    pip install -c /tmp/constraints.txt -r /tmp/requirements.txt; \
    if [ "$VARIANT" = "gpu" ]; then \
        pip uninstall -y onnxruntime || true; \
        pip install "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"; \
    else \
        pip install "onnxruntime==$(sed -n 's/^onnxruntime==//p' requirements.lock)"; \
    fi

# The code, the contracts and the data the services read at run time (schemas/, config/, data/).
# (.dockerignore keeps tests, local state and the deploy manifests out)
COPY . .
# editable: the code finds schemas/, config/ and data/ next to it, in /app
RUN pip install --no-deps -e . && graduate --help > /dev/null

USER 10001:10001
WORKDIR /var/lib/graduate
EXPOSE 8080 8090 6066
ENTRYPOINT ["graduate"]
CMD ["--help"]
