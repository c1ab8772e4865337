# syntax=docker/dockerfile:1
# Three images from one file; docker-compose.yml builds each with `target:`.
#   serve   TorchServe + the handler + configs/torchserve  -> service `torchserve`
#   train   serve's code + Lightning, MLflow, the archiver -> service `trainer` (profile `train`)
#   mlflow  MLflow tracking server and registry, PostgreSQL driver -> service `mlflow`
#   oip     train's + KServe's Python server: the Open Inference Protocol door -> service `kserve`
#           (profile `kserve`)
# Every image runs as the unprivileged user `catsdogs` (uid 10001) and holds no secret: TorchServe
# makes its tokens at start, passwords come from the environment.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# One MLflow version for the tracking server and the trainer's client.
ARG MLFLOW_VERSION=3.17.2

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 --user-group catsdogs

# --- MLflow server: artifacts proxied (--artifacts-destination) so clients need no storage access
FROM base AS mlflow
ARG MLFLOW_VERSION
# psycopg 3: the driver catsdogs_pl.mlflow_server names in the backend URI
RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg[binary]==3.2.13" \
    && install -d -o catsdogs -g catsdogs /mlartifacts
COPY catsdogs_pl/__init__.py catsdogs_pl/errors.py catsdogs_pl/mlflow_server.py /app/catsdogs_pl/
ENV PYTHONPATH=/app
USER 10001:10001
WORKDIR /home/catsdogs
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
CMD ["python", "-m", "catsdogs_pl.mlflow_server", "--host", "0.0.0.0", "--port", "5000"]

# --- what serve and train share: Java 17 for TorchServe, tini as PID 1, CPU torch wheels
FROM base AS runtime
# Debian's security updates move these versions; bookworm pins the major version (17).
# The JRE's postinst links a man page: slim images have no /usr/share/man/man1. TorchServe stops a
# worker by running `kill -9 PID` (procps): without it unregister answers 500 and keeps the version.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps tini \
    && rm -rf /var/lib/apt/lists/*
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.5.1
ARG TORCHVISION_VERSION=0.20.1
# TorchServe's worker imports PyYAML, which the torchserve wheel does not declare; OpenVINO (else
# ONNX Runtime) runs the model.onnx of a .mar (catsdogs_pl/servable.py forward); model-signing
# verifies a .mar's files before a worker loads them (it imports pyOpenSSL without declaring it).
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && pip install "torchserve==0.12.0" "pyyaml==6.0.2" "numpy==2.1.3" "pillow==11.0.0" \
        "onnxruntime==1.32.0" "openvino==2026.4.1" "model-signing==1.1.1" "pyopenssl==26.4.0"
# The code runs from /app (configs/ and handlers/ beside the package); state lives in the volume.
# TorchServe binds every interface: 127.0.0.1 in a container reaches nothing outside it.
ENV PYTHONPATH=/app \
    CATSDOGS_HOME=/srv/catsdogs \
    CATSDOGS_BIND_HOST=0.0.0.0
# captures/ and the key folders too: a volume mounted there starts owned by catsdogs, as docker
# copies the image's folder (compose: the signing key is the trainer's alone, signing.py)
RUN install -d -o catsdogs -g catsdogs /srv/catsdogs /srv/catsdogs/model-store /srv/catsdogs/captures \
        /srv/verify-key \
    && install -d -m 0700 -o catsdogs -g catsdogs /srv/signing-key
ENTRYPOINT ["/usr/bin/tini", "--"]

# --- TorchServe: `serve run` keeps it in the foreground and turns SIGTERM into a clean stop
FROM runtime AS serve
WORKDIR /app
COPY catsdogs_pl/ catsdogs_pl/
COPY configs/ configs/
COPY handlers/ handlers/
VOLUME ["/srv/catsdogs"]
USER 10001:10001
WORKDIR /srv/catsdogs
EXPOSE 8080 8081 8082
# Ready means the default model version has a READY worker; /ping is 200 while models still load.
HEALTHCHECK --interval=10s --timeout=8s --start-period=120s --retries=3 \
    CMD ["python", "-m", "catsdogs_pl.serving.serve", "ready"]
CMD ["python", "-m", "catsdogs_pl.serving.serve", "run"]

# --- training: the project's own dependencies first (cached), then serve's code
FROM runtime AS train
ARG MLFLOW_VERSION
WORKDIR /app
COPY pyproject.toml ./
# A stub package lets pip resolve the dependencies before the code exists (a cacheable layer).
RUN mkdir catsdogs_pl && touch catsdogs_pl/__init__.py README.md \
    && pip install --editable ".[pretrained,onnx]" "mlflow==${MLFLOW_VERSION}" \
    && rm -r catsdogs_pl
COPY --from=serve /app /app
# The work folder (checkpoints/, data/) exists, owned by catsdogs: a new volume mounted on it
# starts with this owner instead of root's.
RUN install -d -o catsdogs -g catsdogs /home/catsdogs/work
USER 10001:10001
WORKDIR /home/catsdogs/work
CMD ["python", "-m", "catsdogs_pl.fit", "--help"]

# --- the second door: a registry version on the Open Inference Protocol (catsdogs_pl/serving/oip.py)
# on KServe's Python server; train's image has the MLflow client and the runtimes it needs.
FROM train AS oip
USER 0:0
RUN pip install --editable "/app[oip]"
USER 10001:10001
WORKDIR /srv/catsdogs
EXPOSE 8085
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8085/v2/health/ready', timeout=4)"]
CMD ["python", "-m", "catsdogs_pl.serving.oip", "--model-version", "latest"]
