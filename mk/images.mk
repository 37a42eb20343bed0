# Container images (images/*.Dockerfile): build them and push them to ECR.
#   make images                       # build + push base, trainer, trainer (-gpu tag), serving
#   make images-build                 # build only
#   make images-compile               # the EKS pipeline YAML pointing at the pushed tags
# REGISTRY defaults to the ECR prefix from terraform's output ecr_repository_urls (e.g.
# 123456789012.dkr.ecr.eu-west-2.amazonaws.com/marketsearch, holding the repositories
# marketsearch/base, /trainer and /serving); TAG to the git short sha. Image names default to
# KfpConfig's (base, trainer, serving); the GPU trainer is trainer:$(TAG)-gpu.
# Needs a Docker engine with buildx (BuildKit); without one it stops and says so.

REGISTRY ?= $(shell terraform -chdir=terraform output -json ecr_repository_urls 2>/dev/null | \
  python3 -c 'import json, sys; print(json.load(sys.stdin)["base"].rsplit("/", 1)[0])' 2>/dev/null)
TAG      ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
BASE_IMAGE    ?= base
TRAINER_IMAGE ?= trainer
SERVING_IMAGE ?= serving
TF_GPU_VARIANT ?= -gpu
IMAGE_PLATFORM ?= linux/amd64
AWS_REGION ?= $(word 4,$(subst ., ,$(REGISTRY)))
DOCKER ?= docker
IMAGES := base trainer trainer-gpu serving

.PHONY: images images-check images-build images-push images-login images-compile \
        $(addprefix images-build-,$(IMAGES))

images: images-push

images-check:
	@$(DOCKER) info >/dev/null 2>&1 || { \
	  echo "make images: no Docker engine here ('docker info' failed). Build the images on a" >&2; \
	  echo "machine with Docker (and buildx), or in CI; see images/README.md." >&2; exit 1; }
	@test -n "$(REGISTRY)" || { \
	  echo "make images: REGISTRY is empty. Pass REGISTRY=<account>.dkr.ecr.<region>.amazonaws.com/marketsearch" >&2; \
	  echo "or apply terraform/ first (its output ecr_repository_urls gives the default)." >&2; exit 1; }
	@test -n "$(TAG)" || { echo "make images: TAG is empty" >&2; exit 1; }
	@echo "images: $(REGISTRY)/{$(BASE_IMAGE),$(TRAINER_IMAGE),$(SERVING_IMAGE)}:$(TAG), $(TRAINER_IMAGE):$(TAG)$(TF_GPU_VARIANT)"

images-build: images-check $(addprefix images-build-,$(IMAGES))

images-build-base:
	$(DOCKER) buildx build --load --platform $(IMAGE_PLATFORM) -f images/base.Dockerfile \
	  -t $(REGISTRY)/$(BASE_IMAGE):$(TAG) .
images-build-trainer:
	$(DOCKER) buildx build --load --platform $(IMAGE_PLATFORM) -f images/trainer.Dockerfile \
	  -t $(REGISTRY)/$(TRAINER_IMAGE):$(TAG) .
images-build-trainer-gpu:
	$(DOCKER) buildx build --load --platform $(IMAGE_PLATFORM) -f images/trainer.Dockerfile \
	  --build-arg TF_VARIANT=$(TF_GPU_VARIANT) -t $(REGISTRY)/$(TRAINER_IMAGE):$(TAG)$(TF_GPU_VARIANT) .
images-build-serving:
	$(DOCKER) buildx build --load --platform $(IMAGE_PLATFORM) -f images/serving.Dockerfile \
	  -t $(REGISTRY)/$(SERVING_IMAGE):$(TAG) .

# ECR login when the registry is ECR (needs the AWS CLI and credentials for the account).
images-login: images-check
	@case "$(REGISTRY)" in *.dkr.ecr.*.amazonaws.com*) \
	  aws ecr get-login-password --region $(AWS_REGION) | \
	    $(DOCKER) login --username AWS --password-stdin $(firstword $(subst /, ,$(REGISTRY))) ;; \
	  *) echo "images-login: $(REGISTRY) is not ECR; using the docker login you have" ;; esac

images-push: images-build images-login
	$(DOCKER) push $(REGISTRY)/$(BASE_IMAGE):$(TAG)
	$(DOCKER) push $(REGISTRY)/$(TRAINER_IMAGE):$(TAG)
	$(DOCKER) push $(REGISTRY)/$(TRAINER_IMAGE):$(TAG)$(TF_GPU_VARIANT)
	$(DOCKER) push $(REGISTRY)/$(SERVING_IMAGE):$(TAG)

# The pipeline a person uploads in the KFP UI, with the images this REGISTRY/TAG pushed.
images-compile:
	@test -n "$(REGISTRY)" || { echo "images-compile: REGISTRY is empty (see make images)" >&2; exit 1; }
	$(BIN)/marketsearch compile --config config/eks.yaml --set kfp.image_registry=$(REGISTRY) \
	  --set kfp.image_tag=$(TAG) --output build/pipelines/eks-training.yaml
