# syntax=docker/dockerfile:1.7
# The base image: the marketsearch package and its dependencies (CPU TensorFlow) on Python
# slim. The data stages (ingest, validate, clean) and deploy run in it.
#   make images                # builds and pushes base, trainer, trainer -gpu and serving
#   docker build -f images/base.Dockerfile -t $REGISTRY/base:$TAG .
#
# Two stages: the builder turns the source into a wheel (and the dependency list); the runtime
# installs them with no compiler, no source tree and no pip cache, then drops to a numeric
# non-root user.
#checkov:skip=CKV_DOCKER_2:a batch image: KFP runs one stage per pod and watches the process; the serving image has the HEALTHCHECK

FROM python:3.11.13-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /build
COPY pyproject.toml README.md ./
# The dependency list alone: the runtime's dependency layer changes only when it does.
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
    GX_ANALYTICS_ENABLED=False \
    MPLBACKEND=Agg
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app
# Dependencies (the big, rarely changing layer), then the package itself (the expectation
# suite ships inside it as package data).
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install --no-cache-dir -r /dist/requirements.txt
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install --no-cache-dir --no-deps /dist/wheels/marketsearch-*.whl \
 && python -c "import marketsearch.components, marketsearch.pipelines; \
from marketsearch.components.validate import EXPECTATIONS; assert EXPECTATIONS.is_file(), EXPECTATIONS"
WORKDIR /home/app
USER 10001:10001
ENTRYPOINT ["marketsearch"]
CMD ["--help"]
