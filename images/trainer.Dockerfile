# The trainer image: the same package on a TensorFlow base. CPU by default; the GPU variant
# (train_image, train_text, train_fusion on the GPU node group) is built on the CUDA base:
#   docker build -f images/trainer.Dockerfile -t $REGISTRY/trainer:$TAG .
#   docker build -f images/trainer.Dockerfile --build-arg TF_IMAGE=tensorflow/tensorflow:2.21.0-gpu \
#                -t $REGISTRY/trainer:$TAG-gpu .
ARG TF_IMAGE=tensorflow/tensorflow:2.21.0
FROM ${TF_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    GX_ANALYTICS_ENABLED=False

RUN groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid app --create-home app
WORKDIR /opt/marketsearch

COPY pyproject.toml README.md ./
RUN mkdir -p src/marketsearch/models components pipelines \
 && touch src/marketsearch/__init__.py src/marketsearch/models/__init__.py \
          components/__init__.py pipelines/__init__.py \
 && pip install . && pip uninstall -y marketsearch
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
COPY config ./config
RUN pip install --no-deps . && python -c "import marketsearch.components, marketsearch.pipelines"

USER 10001:10001
ENTRYPOINT ["marketsearch"]
