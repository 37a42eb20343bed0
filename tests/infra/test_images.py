"""The container images (images/*.Dockerfile) and their build context (.dockerignore), read
statically: no Docker engine here. Pinned bases, a numeric non-root user, no secrets, multi-stage
builds without caches, the serving entrypoint, the CUDA base of the GPU trainer, and checkov's
Dockerfile checks when .venv-tools has it (`make tools-checkov`)."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from marketsearch.config import KfpConfig

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
DOCKERFILES = {name: IMAGES / f"{name}.Dockerfile" for name in ("base", "trainer", "serving")}
GPU_BUILD_ARGS = {"TF_VARIANT": "-gpu"}
# Each Dockerfile under every set of build args the Makefile uses.
VARIANTS = [("base", {}), ("trainer", {}), ("trainer", GPU_BUILD_ARGS), ("serving", {})]
FROM_STAGE = re.compile(r"--from=([^\s,]+)|[\s,]from=([^\s,]+)")  # COPY --from, RUN --mount
SECRET_NAME = re.compile(r"KEY|PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|AUTH", re.I)


def parse(name: str, build_args: dict | None = None) -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILES[name]), build_args=build_args or {},
                            cache_content=True)


def stages(df: DockerfileParser) -> list[dict]:
    """[{"from": image, "alias": name | None, "instructions": [...]}] in file order."""
    out: list[dict] = []
    for ins in df.structure:
        if ins["instruction"] == "FROM":
            words = ins["value"].split()
            words = [w for w in words if not w.startswith("--platform")]
            alias = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            out.append({"from": words[0], "alias": alias, "instructions": []})
        elif out:
            out[-1]["instructions"].append(ins)
    return out


def final_stages(df: DockerfileParser) -> list[dict]:
    """Stages no other stage builds on or copies from: the images a build produces."""
    all_stages = stages(df)
    used = set()
    for st in all_stages:
        used.add(st["from"])
        for ins in st["instructions"]:
            for copy_from, mount_from in FROM_STAGE.findall(ins["value"]):
                used.add(copy_from or mount_from)
    return [st for st in all_stages if st["alias"] is None or st["alias"] not in used]


def instructions(stage: dict, kind: str) -> list[str]:
    return [ins["value"] for ins in stage["instructions"] if ins["instruction"] == kind]


def env_names(value: str) -> list[str]:
    """Names an ENV/ARG line sets: `A=1 B=2`, `A 1` (legacy ENV form) or `A`."""
    words = shlex.split(value, posix=True)
    if words and "=" not in words[0]:
        return [words[0]]
    return [w.split("=", 1)[0] for w in words]


# --- pinned bases -------------------------------------------------------------------------
@pytest.mark.parametrize("name,args", VARIANTS)
def test_every_from_is_pinned(name, args):
    df = parse(name, args)
    aliases = {st["alias"] for st in stages(df) if st["alias"]}
    images = [img for img in df.parent_images if img not in aliases]
    assert images, name
    for image in images:
        assert "$" not in image, f"{name}: unresolved build arg in FROM {image}"
        repo, _, digest = image.partition("@")
        tag = repo.rsplit(":", 1)[1] if ":" in repo.rsplit("/", 1)[-1] else ""
        assert tag or digest, f"{name}: FROM {image} has no tag or digest"
        assert tag != "latest", f"{name}: FROM {image} uses latest"
        assert digest or re.search(r"\d+\.\d+", tag), f"{name}: FROM {image}: tag is no version"
    # the BuildKit frontend is pinned to a version too
    first = DOCKERFILES[name].read_text().splitlines()[0]
    assert re.fullmatch(r"# syntax=docker/dockerfile:\d+(\.\d+)*", first), first


def test_the_python_base_is_one_pinned_slim_tag():
    bases = {img for name, args in VARIANTS for img in parse(name, args).parent_images
             if img.startswith("python:")}
    assert len(bases) == 1, bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", bases.pop())


# --- non-root, no secrets, small layers ---------------------------------------------------
@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_runs_as_a_numeric_non_root_user(name):
    finals = final_stages(parse(name))
    assert len(finals) == 1, f"{name}: expected one final stage, got {finals}"
    for stage in finals:
        kinds = [ins["instruction"] for ins in stage["instructions"]]
        assert "USER" in kinds, f"{name}: the final stage sets no USER"
        user = instructions(stage, "USER")[-1]
        assert re.fullmatch(r"\d+(:\d+)?", user), f"{name}: USER {user} is not numeric"
        assert all(int(part) != 0 for part in user.split(":")), f"{name}: USER {user} is root"
        # nothing runs or is installed after the switch back to root
        after = kinds[len(kinds) - 1 - kinds[::-1].index("USER") + 1:]
        assert not {"RUN", "COPY", "ADD", "USER"} & set(after), f"{name}: {after} after USER"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_no_secret_in_env_or_arg(name):
    df = parse(name)
    for ins in df.structure:
        if ins["instruction"] in ("ENV", "ARG"):
            for var in env_names(ins["value"]):
                assert not SECRET_NAME.search(var), f"{name}:{ins['startline'] + 1}: {var}"
    text = DOCKERFILES[name].read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "credentials in a URL"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_multi_stage_and_no_caches_in_layers(name):
    df = parse(name)
    all_stages = stages(df)
    assert len(all_stages) >= 2 and all_stages[0]["alias"] == "builder", name
    (final,) = final_stages(df)
    # the runtime takes what the builder made (wheel, dependency list), not the source tree
    runs = instructions(final, "RUN")
    assert any("from=builder" in r for r in runs), name
    for src in instructions(final, "COPY"):
        assert "--from=" in src, f"{name}: the final stage copies {src!r} from the context"
    assert not [ins for ins in df.structure if ins["instruction"] == "ADD"], f"{name}: use COPY"
    for r in (ins["value"] for ins in df.structure if ins["instruction"] == "RUN"):
        for cmd in re.split(r"&&|;", r):
            if re.search(r"\bpip(3)?\b.*\binstall\b|-m pip install", cmd):
                assert "--no-cache-dir" in cmd, f"{name}: {cmd.strip()}"
            if "apt-get install" in cmd:
                assert "--no-install-recommends" in cmd, f"{name}: {cmd.strip()}"


# --- what each image runs ------------------------------------------------------------------
def test_serving_image_runs_the_kserve_predictor():
    (final,) = final_stages(parse("serving"))
    assert json.loads(instructions(final, "ENTRYPOINT")[-1]) == ["marketsearch", "serve"]
    assert json.loads(instructions(final, "CMD")[-1]) == ["--model", "/mnt/models", "--port", "8080"]
    assert "8080" in " ".join(instructions(final, "EXPOSE")).split()
    (health,) = instructions(final, "HEALTHCHECK")
    assert "/v2/health/live" in health and "8080" in health


@pytest.mark.parametrize("name", ["base", "trainer"])
def test_stage_images_run_marketsearch(name):
    (final,) = final_stages(parse(name))
    assert json.loads(instructions(final, "ENTRYPOINT")[-1]) == ["marketsearch"]


def test_gpu_trainer_is_built_on_the_cuda_tensorflow_base():
    pyproject = (REPO / "pyproject.toml").read_text()
    pin = re.search(r'"tensorflow==(\d+\.\d+)\.\*"', pyproject).group(1)
    cpu = parse("trainer").parent_images[-1]
    gpu = parse("trainer", GPU_BUILD_ARGS).parent_images[-1]
    assert re.fullmatch(rf"tensorflow/tensorflow:{re.escape(pin)}\.\d+", cpu), cpu
    assert gpu == f"{cpu}-gpu", gpu
    # the Makefile builds the GPU variant with that build arg, as trainer:<tag><gpu_tag_suffix>
    mk = (REPO / "mk" / "images.mk").read_text()
    assert re.search(r"^TF_GPU_VARIANT \?= -gpu$", mk, re.M)
    assert "--build-arg TF_VARIANT=$(TF_GPU_VARIANT)" in mk
    assert "-t $(REGISTRY)/$(TRAINER_IMAGE):$(TAG)$(TF_GPU_VARIANT)" in mk
    assert KfpConfig().gpu_tag_suffix == "-gpu"


def test_makefile_pushes_the_images_the_pipeline_names():
    mk = (REPO / "mk" / "images.mk").read_text()
    k = KfpConfig()
    for var, image, dockerfile in (("BASE_IMAGE", k.base_image, "base"),
                                   ("TRAINER_IMAGE", k.trainer_image, "trainer"),
                                   ("SERVING_IMAGE", k.serving_image, "serving")):
        assert re.search(rf"^{var}\s*\?=\s*{re.escape(image)}$", mk, re.M), var
        assert re.search(rf"-f images/{dockerfile}\.Dockerfile \\\n\s+-t \$\(REGISTRY\)/\$\({var}\):"
                         rf"\$\(TAG\) \.", mk), var
        assert f"$(DOCKER) push $(REGISTRY)/$({var}):$(TAG)\n" in mk, var
    assert "$(DOCKER) info" in mk and "no Docker engine" in mk


# --- the build context -----------------------------------------------------------------------
def _dockerignore_regexes() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex + r"\Z")))
    return rules


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, regex in _dockerignore_regexes():
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


@pytest.mark.parametrize("path", [
    "runs/kfp/marketsearch-training-1/ingest/products.parquet", "runs/mlflow.db",
    ".venv/bin/python", ".venv-tools/bin/checkov", "tests/unit/test_config.py",
    "tests/fixtures/gumtree_small/products.csv", "build/pipelines/eks-training.yaml",
    ".git/config", ".git/objects/ab/cdef", "terraform/terraform.tfstate",
    "terraform/.terraform/providers/x", "k8s/overlays/kind/kustomization.yaml", ".env",
    "bench/reports/serve.md", "src/marketsearch/__pycache__/config.cpython-311.pyc",
    "src/marketsearch.egg-info/PKG-INFO", "components/__pycache__/ingest.cpython-311.pyc",
])
def test_dockerignore_keeps_heavy_and_secret_paths_out(path):
    assert ignored(path), path


def test_dockerignore_sends_what_the_dockerfiles_copy():
    sources = set()
    for name in DOCKERFILES:
        for ins in parse(name).structure:
            if ins["instruction"] == "COPY" and "--from" not in ins["value"]:
                sources.update(ins["value"].split()[:-1])
    assert sources == {"pyproject.toml", "README.md", "src", "components", "pipelines"}
    for path in ["pyproject.toml", "README.md", "src/marketsearch/config/__init__.py",
                 "src/marketsearch/data/uk_counties.csv", "src/marketsearch/serving/page.html",
                 "components/ingest.py", "pipelines/training.py", "src/marketsearch/data/expectations.yaml"]:
        assert not ignored(path), path


# --- checkov ----------------------------------------------------------------------------------
def test_checkov_dockerfile_checks_pass():
    checkov = REPO / ".venv-tools" / "bin" / "checkov"
    if not checkov.exists():
        pytest.skip("checkov is not installed (make tools-checkov creates .venv-tools)")
    proc = subprocess.run([str(checkov), "-d", str(IMAGES), "--framework", "dockerfile",
                           "--quiet", "--compact", "--skip-download", "-o", "json"],
                          capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    assert not failed, [(c["check_id"], c["file_path"]) for c in failed]
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    assert passed > 0 and proc.returncode == 0, proc.stderr[-2000:]
