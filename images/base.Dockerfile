# The base image: the marketsearch package and its dependencies (CPU TensorFlow).
# Data stages (ingest, validate, clean, deploy) run in it.
#   docker build -f images/base.Dockerfile -t $REGISTRY/base:$TAG .
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    GX_ANALYTICS_ENABLED=False

RUN groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid app --create-home app
WORKDIR /opt/marketsearch

# Dependencies first (a layer that changes only with pyproject.toml), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p src/marketsearch components pipelines \
 && touch src/marketsearch/__init__.py components/__init__.py pipelines/__init__.py \
 && mkdir -p src/marketsearch/models && touch src/marketsearch/models/__init__.py \
 && pip install . && pip uninstall -y marketsearch
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
COPY config ./config
RUN pip install --no-deps . && python -c "import marketsearch.components, marketsearch.pipelines"

USER 10001:10001
ENTRYPOINT ["marketsearch"]
