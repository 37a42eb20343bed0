# syntax=docker/dockerfile:1.7
# The trainer image: the marketsearch package on a TensorFlow base. train_image, train_text,
# train_fusion, build_index and evaluate run in it. CPU by default; the GPU variant (the
# trainers on the GPU node group) is the same file on the CUDA TensorFlow base:
#   make images                # builds and pushes base, trainer, trainer -gpu and serving
#   docker build -f images/trainer.Dockerfile -t $REGISTRY/trainer:$TAG .
#   docker build -f images/trainer.Dockerfile --build-arg TF_VARIANT=-gpu -t $REGISTRY/trainer:$TAG-gpu .
# TF_VERSION + TF_VARIANT name a pinned tag of the official image: tensorflow/tensorflow:2.21.0
# (CPU) or tensorflow/tensorflow:2.21.0-gpu (CUDA + cuDNN). The base already holds that
# tensorflow (pyproject pins 2.21.*), so pip keeps the base's build (with CUDA in the -gpu one)
# and installs only the rest. Keep TF_VERSION in step with pyproject's tensorflow pin.
#checkov:skip=CKV_DOCKER_2:a batch image: KFP runs one stage per pod and watches the process; the serving image has the HEALTHCHECK
ARG TF_VERSION=2.21.0
ARG TF_VARIANT=""

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

FROM tensorflow/tensorflow:${TF_VERSION}${TF_VARIANT}
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
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    python3 -m pip install --no-cache-dir -r /dist/requirements.txt
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    python3 -m pip install --no-cache-dir --no-deps /dist/wheels/marketsearch-*.whl \
 && python3 -c "import marketsearch.components, marketsearch.pipelines; \
from marketsearch.components.validate import EXPECTATIONS; assert EXPECTATIONS.is_file(), EXPECTATIONS"
WORKDIR /home/app
USER 10001:10001
ENTRYPOINT ["marketsearch"]
CMD ["--help"]
