# syntax=docker/dockerfile:1.7
# The serving image: the KServe custom predictor of the fused model and the FAISS index
# (`marketsearch serve`, V1/V2 protocols, the search page). The InferenceService runs it with
# its storageUri mounted at /mnt/models:
#   make images                # builds and pushes base, trainer, trainer -gpu and serving
#   docker build -f images/serving.Dockerfile -t $REGISTRY/serving:$TAG .
#   docker run -p 8080:8080 -v $PWD/runs/serving/marketsearch:/mnt/models:ro $REGISTRY/serving:$TAG
#
# The same two stages as the base image (builder: wheel + dependency list; runtime: install,
# numeric non-root user).

FROM python:3.11.13-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /build
COPY pyproject.toml README.md ./
RUN mkdir -p /dist \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /dist/requirements.txt
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist/wheels .

FROM python:3.11.13-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLBACKEND=Agg
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install --no-cache-dir -r /dist/requirements.txt
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install --no-cache-dir --no-deps /dist/wheels/marketsearch-*.whl \
 && python -c "import marketsearch.serving.server"
WORKDIR /home/app
USER 10001:10001
EXPOSE 8080
# Live as soon as the port answers (KServe's probes use /v2/health/ready for readiness).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=4)"]
ENTRYPOINT ["marketsearch", "serve"]
CMD ["--model", "/mnt/models", "--port", "8080"]
