"""Item 11: the docs say what the code does. Every repository path the README names exists (DESIGN.md included);
the Kubernetes example runs the image the Dockerfile builds under the README's tag; `health` documents exit 1 while
draining (and does so); every `serve --help` text says what its flag does, what 0 means, which values a choice takes."""

from __future__ import annotations

import dataclasses
import re

import pytest

from tests.first_contact.fc_helpers import REPO, cli
from vlm_service.config import EngineConfig, LimitsConfig, ModelConfig, ParallelConfig

README = (REPO / "README.md").read_text()


def _exists(name: str) -> bool:
    """A path from the repo root, or (as the README names files beside their folder) somewhere below it."""
    if (REPO / name).exists():
        return True
    return any(p for p in REPO.glob("**/" + name.rstrip("/")) if ".venv" not in p.parts and ".git" not in p.parts)


def test_every_path_the_readme_names_exists():
    names = set(re.findall(r"`((?:[\w.-]+/)+[\w.-]*|[\w-]+\.(?:md|py|sh|yaml|txt|service))`", README))
    names |= set(re.findall(r"\]\(([\w./-]+)\)", README))
    mime = re.compile(r"^(image|video|audio|application|text)/[\w.+-]+$")  # media types, not paths
    names = {n for n in names if not n.startswith(("http", "/", "~", ".venv", "-")) and "<" not in n
             and not mime.match(n)}
    assert "DESIGN.md" in names and "Dockerfile" in README
    missing = sorted(n for n in names if not _exists(n))
    assert not missing, missing


def test_kubernetes_example_runs_the_image_the_dockerfile_builds():
    yaml = (REPO / "deploy" / "kubernetes-sidecar.yaml").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    [tag] = re.findall(r"docker build -t (\S+) \.", README)
    images = re.findall(r"image: (\S+)", yaml)
    assert tag in images
    assert 'HEALTHCHECK' in dockerfile and '"--service", "vlm.v1.VisionLanguageService"' in dockerfile
    [state] = re.findall(r"VLM_STATE_DIR=(\S+)", dockerfile)
    assert f'VOLUME ["{state}"]' in dockerfile and f"mountPath: {state}" in yaml
    assert "[gpu]" in dockerfile


def test_health_exit_code_while_draining_is_documented():
    line = next(line for line in README.splitlines() if line.startswith(".venv/bin/vlm-service health  "))
    assert "1 once draining" in line and "while the process is up" not in README


@pytest.fixture(scope="module")
def serve_help() -> str:
    run = cli("serve", "--help")
    assert run.returncode == 0
    return " ".join(run.stdout.split("options:", 1)[1].split())  # the flag texts, past the usage lines


def _help_of(text: str, flag: str) -> str:
    """The help text of flag in a whitespace-collapsed --help output."""
    match = re.search(re.escape(flag) + r"(?:, --no-[\w-]+)?(?: [A-Z_]+| \{[^}]+\})? (.*?)\[env VLM_", text)
    assert match, flag
    return match.group(1)


def test_every_serve_flag_says_what_it_does(serve_help):
    for cls in (ModelConfig, LimitsConfig, EngineConfig, ParallelConfig):
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            text = _help_of(serve_help, flag)
            assert text.strip() != f.name.replace("_", " "), f"{flag}: help only repeats the name"
            if f.default == 0 and f.default is not False:
                assert re.search(r"\b0 (=|means)", text), f"{flag}: says nothing of what 0 means"


@pytest.mark.parametrize("flag,values", [("--dtype", "auto,float32,bfloat16,float16"),
                                         ("--vit-attention-backend", "auto,sdpa,fa3,flashinfer_cudnn"),
                                         ("--log-format", "text,json")])
def test_choices_are_listed_and_enforced(serve_help, flag, values):
    assert f"{flag} {{{values}}}" in serve_help
    run = cli("serve", flag, "nope")
    assert run.returncode == 2 and "invalid choice" in run.stderr
