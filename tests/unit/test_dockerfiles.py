"""The two Dockerfiles, checked without a Docker engine: statically, then by running what they run.

Why it exists: no image can be built here, so the static checks pin the properties a reviewer
would look for (pinned bases, non-root user, exec-form entrypoint, no remote ADD, lean pip
layers, only existing and not-ignored paths copied), and the runtime checks install the package
with the very pip command the Dockerfile runs into a fresh virtualenv and start the declared
ENTRYPOINT + CMD, so a dependency missing from the image's install set fails here.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / "Dockerfile"
TRAINER = REPO / "trainer_image" / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    buf, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        name, _, args = buf.partition(" ")
        out.append(Instruction(start, name.upper(), args.strip()))
        buf = ""
    assert not buf, f"{path}: dangling line continuation at line {start}"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.name == "FROM":
            result.append([])
        assert result, f"line {ins.line}: {ins.name} before the first FROM"
        result[-1].append(ins)
    return result


def _exec_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), ins
    return value


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    top = rel.split("/")[0]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(top, p) for p in patterns)


@pytest.fixture(params=[OPERATOR, TRAINER], ids=["operator", "trainer"])
def dockerfile(request: pytest.FixtureRequest) -> Path:
    return request.param


def test_every_base_is_pinned(dockerfile: Path) -> None:
    aliases: set[str] = set()
    for ins in parse(dockerfile):
        if ins.name != "FROM":
            continue
        parts = ins.args.split()
        image = parts[0]
        if "AS" in (p.upper() for p in parts):
            aliases.add(parts[-1])
        if image in aliases:
            continue
        assert "$" not in image, (
            f"{dockerfile.name}:{ins.line}: base image from an ARG is not pinned"
        )
        if "@sha256:" in image:
            assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"{dockerfile.name}:{ins.line}"
            continue
        assert ":" in image, f"{dockerfile.name}:{ins.line}: {image} has no tag"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest", f"{dockerfile.name}:{ins.line}: latest is not a pin"
        # An exact version: major.minor.patch, not a floating "3.11" or "2".
        assert re.match(r"^\d+\.\d+\.\d+", tag), f"{dockerfile.name}:{ins.line}: {tag} floats"


def test_final_stage_runs_as_non_root(dockerfile: Path) -> None:
    final = stages(parse(dockerfile))[-1]
    users = [ins for ins in final if ins.name == "USER"]
    assert users, f"{dockerfile.name}: the final stage never sets USER (it would run as root)"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}, f"{dockerfile.name}:{users[-1].line}: USER {user}"
    assert user.isdigit(), "a numeric UID lets Kubernetes verify runAsNonRoot"
    # Nothing after USER may switch back.
    after = final[final.index(users[-1]) + 1 :]
    assert not [i for i in after if i.name == "USER"]


def test_no_remote_add_and_lean_layers(dockerfile: Path) -> None:
    for ins in parse(dockerfile):
        if ins.name == "ADD":
            assert not re.search(r"https?://|git@", ins.args), f"{dockerfile.name}:{ins.line}"
        if ins.name == "RUN":
            if re.search(r"\bpip install\b", ins.args):
                assert "--no-cache-dir" in ins.args, f"{dockerfile.name}:{ins.line}: pip cache kept"
            if "apt-get install" in ins.args:
                assert "--no-install-recommends" in ins.args
                assert "rm -rf /var/lib/apt/lists" in ins.args
            assert "curl " not in ins.args and "wget " not in ins.args, "download in a layer"


def test_entrypoint_is_exec_form(dockerfile: Path) -> None:
    final = stages(parse(dockerfile))[-1]
    entry = [i for i in final if i.name == "ENTRYPOINT"]
    assert entry, f"{dockerfile.name}: no ENTRYPOINT"
    _exec_form(entry[-1])
    for cmd in (i for i in final if i.name == "CMD"):
        _exec_form(cmd)


def test_copied_paths_exist_and_are_not_ignored(dockerfile: Path) -> None:
    patterns = _dockerignore()
    for ins in parse(dockerfile):
        if ins.name != "COPY" or "--from=" in ins.args:
            continue
        sources = shlex.split(ins.args)[:-1]
        for src in sources:
            assert (REPO / src).exists(), f"{dockerfile.name}:{ins.line}: {src} does not exist"
            assert not _ignored(src, patterns), (
                f"{dockerfile.name}:{ins.line}: {src} is in .dockerignore"
            )


def _pip_spec(dockerfile: Path) -> str:
    """The requirement the Dockerfile installs (the /src path of `pip install ... /src[...]`)."""
    for ins in parse(dockerfile):
        if ins.name == "RUN" and "pip install" in ins.args:
            for word in shlex.split(ins.args):
                if word.startswith("/src"):
                    return word
    raise AssertionError(f"{dockerfile.name}: no `pip install /src...`")


def test_operator_image_installs_without_torch_and_trainer_image_with_it() -> None:
    assert _pip_spec(OPERATOR) == "/src", "the operator image must not install the trainer extra"
    assert _pip_spec(TRAINER) == "/src[trainer]"
    base = next(i for i in parse(TRAINER) if i.name == "FROM").args
    assert "pytorch" in base and "cuda" in base, "the trainer image needs a CUDA PyTorch base"
    final = stages(parse(TRAINER))[-1]
    entry = _exec_form(next(i for i in final if i.name == "ENTRYPOINT"))
    cmd = _exec_form(next(i for i in final if i.name == "CMD"))
    assert entry + cmd == ["python", "-m", "finetune_trainer", "launch"]


def _entrypoint(dockerfile: Path) -> list[str]:
    final = stages(parse(dockerfile))[-1]
    entry = _exec_form([i for i in final if i.name == "ENTRYPOINT"][-1])
    cmd = [i for i in final if i.name == "CMD"]
    return entry + (_exec_form(cmd[-1]) if cmd else [])


@pytest.mark.slow
def test_operator_entrypoint_starts_from_a_fresh_install(tmp_path: Path) -> None:
    """pip install the repo the way the operator Dockerfile does (no extras) into a new venv, then
    run ENTRYPOINT + CMD + --help. torch must be absent from that environment."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(REPO)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    argv = _entrypoint(OPERATOR)
    assert argv == ["finetune", "operator"]
    exe = env_dir / "bin" / argv[0]
    run = subprocess.run(
        [str(exe), *argv[1:], "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "--namespace" in run.stdout, run.stdout
    no_torch = subprocess.run(
        [str(py), "-c", "import torch"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert no_torch.returncode != 0, "torch leaked into the operator image's dependency set"


def test_trainer_entrypoint_starts() -> None:
    """ENTRYPOINT + CMD of the trainer image (`python -m finetune_trainer launch`) with --help,
    from the project environment, which is the same install set as the image (.[trainer])."""
    argv = _entrypoint(TRAINER)
    assert argv[:3] == ["python", "-m", "finetune_trainer"]
    run = subprocess.run(
        [sys.executable, *argv[1:], "--help"], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "usage" in (run.stdout + run.stderr).lower()
