"""checkov over the infrastructure code: zero failed checks, no parsing errors, and every
skipped check skipped next to the code (`#checkov:skip=CKV_...:reason`) with a reason.
Run as `checkov -d DIR --framework F --compact -o json --skip-download`: no --quiet, so that
the report lists the skipped checks and their reasons; --skip-download keeps checkov off the
network (no guideline or external-check downloads).

checkov lives in its own virtual environment (.venv-tools: its pins conflict with the
project's); `make tools-checkov` creates it. One parameter per directory:

    terraform/  --framework terraform
    k8s/        --framework kustomize   (only once k8s/ holds a kustomization)
    images/     --framework dockerfile  (only if it holds Dockerfiles)
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKOV = Path(os.environ.get("MARKETSEARCH_CHECKOV", REPO / ".venv-tools" / "bin" / "checkov"))


def _has_kustomization(path: Path) -> bool:
    return any(path.rglob("kustomization.yaml")) or any(path.rglob("kustomization.yml")) \
        or any(path.rglob("Kustomization"))


def _has_dockerfiles(path: Path) -> bool:
    return any(p.is_file() for pattern in ("Dockerfile", "*.Dockerfile", "Dockerfile.*")
               for p in path.rglob(pattern))


def _has_terraform(path: Path) -> bool:
    return any(path.glob("*.tf"))


# (directory, checkov framework, "is there anything to scan", what is missing otherwise)
TARGETS = [
    ("terraform", "terraform", _has_terraform, "no *.tf files"),
    ("k8s", "kustomize", _has_kustomization, "no kustomization.yaml yet"),
    ("images", "dockerfile", _has_dockerfiles, "no Dockerfiles"),
]


def _reports(output: str) -> list[dict]:
    """checkov's JSON: one report per framework (a list when several), or a bare summary
    when nothing matched."""
    data = json.loads(output)
    reports = data if isinstance(data, list) else [data]
    return [r if "summary" in r else {"summary": r, "results": {}} for r in reports]


def _where(check: dict) -> str:
    lines = check.get("file_line_range") or []
    span = f":{lines[0]}-{lines[1]}" if len(lines) == 2 else ""
    return f"{check.get('file_path') or check.get('repo_file_path')}{span}"


@pytest.mark.parametrize(("directory", "framework", "present", "missing"), TARGETS,
                         ids=[t[0] for t in TARGETS])
def test_checkov(directory: str, framework: str, present, missing: str):
    if not CHECKOV.exists():
        pytest.skip(f"checkov is not installed at {CHECKOV.relative_to(REPO)}: run "
                    "`make tools-checkov` (a separate venv, .venv-tools)")
    path = REPO / directory
    if not path.is_dir() or not present(path):
        pytest.skip(f"{directory}/: {missing}, nothing for checkov --framework {framework}")

    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    proc = subprocess.run(
        [str(CHECKOV), "-d", directory, "--framework", framework, "--compact", "-o", "json",
         "--skip-download"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    try:
        reports = _reports(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov exited {proc.returncode} without a JSON report:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)

    failed = [c for r in reports for c in r["results"].get("failed_checks", [])]
    skipped = [c for r in reports for c in r["results"].get("skipped_checks", [])]
    passed = sum(r["summary"].get("passed", 0) for r in reports)
    parsing_errors = [e for r in reports for e in r["results"].get("parsing_errors", [])] \
        or sum(r["summary"].get("parsing_errors", 0) for r in reports)

    assert not failed, f"checkov --framework {framework} on {directory}/: {len(failed)} failed:\n" \
        + "\n".join(f"  {c['check_id']} {c.get('resource')} at {_where(c)}: {c.get('check_name')}"
                    for c in failed)
    assert not parsing_errors, f"checkov could not parse: {parsing_errors}"
    assert passed > 0, f"checkov ran no checks on {directory}/:\n{proc.stderr[-2000:]}"
    unexplained = [c for c in skipped
                   if not (c.get("check_result", {}).get("suppress_comment") or "").strip()
                   or c["check_result"]["suppress_comment"].strip() == "No comment provided"]
    assert not unexplained, "skips without a reason:\n" + "\n".join(
        f"  {c['check_id']} {c.get('resource')} at {_where(c)}" for c in unexplained)
    print(f"checkov {framework} {directory}/: {passed} passed, {len(skipped)} skipped: "
          + ", ".join(sorted({c["check_id"] for c in skipped})))
