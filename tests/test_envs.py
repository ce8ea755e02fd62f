"""envs/, docker/ and noxfile.py agree with pyproject.toml's pins (no network, no Docker).

A lock that drifts from the pins, an image matrix that names another torch than its lock, or an
entrypoint that stops dispatching a command fails here, not on a rented GPU box.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("cpu", "cu117", "cu118")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the tests run on the cpu target's Python 3.11
    tomllib = pytest.importorskip("tomli")


def load_noxfile():
    """Import noxfile.py without nox installed (the tests venv has none): stub the decorators."""
    fake = types.ModuleType("nox")
    fake.options = types.SimpleNamespace()
    fake.session = lambda *args, **kwargs: (lambda func: func)
    fake.Session = object
    saved = sys.modules.get("nox")
    sys.modules["nox"] = fake
    try:
        spec = importlib.util.spec_from_file_location("reviewgpt_noxfile", ROOT / "noxfile.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["nox"]
        else:
            sys.modules["nox"] = saved
    return module


NOXFILE = load_noxfile()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def parse_lock(path: Path) -> dict:
    """name -> (version, number of hashes) for every requirement in a pip/uv lock."""
    text = path.read_text()
    entries = {}
    for block in re.split(r"\n(?=\S)", text):
        match = re.match(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", block)
        if match:
            name = canonicalize_name(match.group(1).split("[")[0])
            entries[name] = (match.group(2), block.count("--hash=sha256:"))
    return entries


def locked(target: str) -> dict:
    entries = parse_lock(ROOT / "envs" / target / "requirements.lock")
    torch_txt = ROOT / "envs" / target / "torch.txt"
    if "torch" not in entries and torch_txt.exists():
        pin = next(line for line in torch_txt.read_text().splitlines() if line.startswith("torch=="))
        entries["torch"] = (pin.split("==", 1)[1], 0)
    return entries


def requirements(extra=None):
    if extra is None:
        return [Requirement(r) for r in PYPROJECT["dependencies"]]
    return [Requirement(r) for r in PYPROJECT["optional-dependencies"][extra]]


@pytest.mark.parametrize("target", TARGETS)
def test_lock_satisfies_every_pyproject_pin(target):
    versions = {name: Version(v) for name, (v, _) in locked(target).items()}
    wanted = requirements() + [r for extra in NOXFILE.LOCK_EXTRAS[target] for r in requirements(extra)]
    for req in wanted:
        name = canonicalize_name(req.name)
        if name == "flash-attn":
            continue  # a wheel in the image, not in the lock: test_flash_attn_wheels_match_the_images
        assert name in versions, f"{target}: {name} is missing from the lock"
        assert req.specifier.contains(versions[name], prereleases=True), (
            f"envs/{target}: {name} {versions[name]} does not satisfy pyproject's {req} (run `nox -s lock`)")


@pytest.mark.parametrize("target", TARGETS)
def test_every_locked_package_is_hashed(target):
    entries = parse_lock(ROOT / "envs" / target / "requirements.lock")
    assert len(entries) > 30
    unhashed = [name for name, (_, hashes) in entries.items() if hashes == 0]
    assert not unhashed, f"envs/{target}: no --hash for {unhashed}"


@pytest.mark.parametrize("target", TARGETS)
def test_lock_holds_the_images_torch_and_the_known_fixes(target):
    versions = {name: v for name, (v, _) in locked(target).items()}
    assert versions["torch"] == NOXFILE.IMAGES[target]["torch"]
    assert Version(versions["numpy"]) < Version("2")  # datasets 2.16 calls np.array(copy=False)
    if target == "cpu":
        # deepspeed 0.13.1 does not import on torch 2.13, and breaks `import trl` while installed.
        assert "deepspeed" not in versions
    else:
        assert versions["deepspeed"] == "0.13.1"  # transformers#29207
        assert "setuptools" in versions  # triton imports it
        # a bitsandbytes that ships libbitsandbytes_cuda117/118
        assert Version(versions["bitsandbytes"]) >= Version("0.43")


def test_the_tests_triton_has_its_own_hashed_lock_and_stays_out_of_the_cpu_image():
    """triton is ~1 GB installed and the CPU image cannot use it: in the image's lock it filled CI's
    disk while podman (vfs) copied the image. The CPU tests need it for the kernels' interpreter."""
    from reviewgpt.torch_support import MIN_TRITON

    assert "triton" not in parse_lock(ROOT / "envs" / "cpu" / "requirements.lock")
    entries = parse_lock(ROOT / "envs" / "cpu" / "triton.lock")
    assert list(entries) == ["triton"]
    version, hashes = entries["triton"]
    assert Version(version) >= Version(MIN_TRITON) and hashes > 0
    noxfile = (ROOT / "noxfile.py").read_text()
    assert '"-r", "envs/cpu/triton.lock"' in noxfile


@pytest.mark.parametrize("target", TARGETS)
def test_requirements_in_and_environment_yml_match_the_image_matrix(target):
    image = NOXFILE.IMAGES[target]
    pins = [line for line in (ROOT / "envs" / target / "requirements.in").read_text().splitlines()
            if line.startswith("torch==")]
    assert pins == [f"torch=={image['torch']}"]
    conda = yaml.safe_load((ROOT / "envs" / target / "environment.yml").read_text())
    assert f"python={image['python']}" in conda["dependencies"]
    assert "pip" in conda["dependencies"]
    if image["cuda"]:
        major_minor = ".".join(image["cuda"].split(".")[:2])
        assert f"cuda-nvcc={major_minor}" in conda["dependencies"]  # flash-attn / DeepSpeed builds
        assert image["base_image"].startswith(f"nvidia/cuda:{image['cuda']}-cudnn8-devel-")


def test_cu118_torch_names_its_index_where_the_lock_lacks_it():
    entries = parse_lock(ROOT / "envs" / "cu118" / "requirements.lock")
    torch_txt = ROOT / "envs" / "cu118" / "torch.txt"
    if "torch" in entries:  # resolved where PyPI's cu118 index was reachable
        assert "download.pytorch.org/whl/cu118" in (ROOT / "envs/cu118/requirements.lock").read_text()
    else:
        assert "--index-url https://download.pytorch.org/whl/cu118" in torch_txt.read_text()


def test_torch22_session_takes_every_cpu_pin_but_torch_bitsandbytes_and_triton(monkeypatch):
    monkeypatch.chdir(ROOT)
    pins = NOXFILE.torch22_pins()
    assert {canonicalize_name(pin.split("==")[0]) for pin in pins} == set(locked("cpu")) - {
        "torch", "bitsandbytes", "triton"}  # torch 2.2.1 requires triton==2.2.0: pip would refuse the lock's 3.x
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==\S+", pin) for pin in pins)


def test_flash_attn_wheels_match_the_images():
    spec = next(r for r in requirements("gpu") if r.name == "flash-attn").specifier
    assert spec.contains(NOXFILE.FLASH_ATTN)
    for image in NOXFILE.IMAGES.values():
        wheel = image["flash_attn_wheel"]
        if not image["cuda"]:
            assert wheel == ""
            continue
        py = "cp" + image["python"].replace(".", "")
        torch_mm = ".".join(image["torch"].split("+")[0].split(".")[:2])
        assert f"flash_attn-{NOXFILE.FLASH_ATTN}+" in wheel and f"torch{torch_mm}cxx11abiFALSE-{py}-{py}" in wheel


DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


def dockerfile_default(arg: str) -> str:
    match = re.search(rf"^ARG {arg}=(.*)$", DOCKERFILE, re.M)
    assert match, f"docker/Dockerfile has no default for ARG {arg}"
    return match.group(1).strip('"')


def test_dockerfile_defaults_are_the_cu118_image():
    image = NOXFILE.IMAGES["cu118"]
    assert dockerfile_default("CUDA_VERSION") == image["cuda"]
    assert dockerfile_default("PYTHON_VERSION") == image["python"]
    assert dockerfile_default("TARGET") == "cu118"
    assert dockerfile_default("FLASH_ATTN_WHEEL") == image["flash_attn_wheel"]
    assert dockerfile_default("BASE_IMAGE").replace("${CUDA_VERSION}", image["cuda"]) == image["base_image"]
    assert dockerfile_default("RUNTIME_IMAGE").replace("${CUDA_VERSION}", image["cuda"]) == image["runtime_image"]


def test_build_args_cover_every_dockerfile_arg():
    declared = set(re.findall(r"^ARG (\w+)", DOCKERFILE, re.M))
    passed = {flag.removeprefix("--build-arg=").split("=", 1)[0] for flag in NOXFILE.build_args("cu117")}
    assert passed <= declared
    assert declared - passed <= {"CUDA_VERSION", "TORCH_FIND_LINKS", "CA_BUNDLE"}


def test_dockerignore_lets_in_what_the_dockerfile_copies():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*"  # everything else stays out of the build context
    for path in ("envs/", "reviewgpt/", "docker/entrypoint.sh", "pyproject.toml", "README.md"):
        assert f"!{path}" in ignore


@pytest.fixture()
def fake_bin(tmp_path):
    """Stand-ins for the commands the entrypoint may exec: each prints its name and arguments."""
    for name in ("reviewgpt", "train-gemma", "train-mistral", "bash", "accelerate"):
        script = tmp_path / name
        script.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        script.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("argv, expected", [
    (["train-gemma", "--data", "/data/papers.jsonl"], "train-gemma --data /data/papers.jsonl"),
    (["train-mistral", "--data", "x"], "train-mistral --data x"),
    (["doctor", "--json"], "reviewgpt doctor --json"),
    (["train", "--recipe", "tiny"], "reviewgpt train --recipe tiny"),
    (["reviewgpt", "recipes"], "reviewgpt recipes"),
    (["bash", "-c", "true"], "bash -c true"),
    (["accelerate", "launch", "-m", "reviewgpt"], "accelerate launch -m reviewgpt"),
    ([], "reviewgpt --help"),
])
def test_entrypoint_dispatch(fake_bin, argv, expected):
    env = {**os.environ, "PATH": f"{fake_bin}:/usr/bin:/bin"}
    out = subprocess.run(["sh", str(ROOT / "docker" / "entrypoint.sh"), *argv], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


# Imported at run time by the stack on reviewgpt's behalf, so not seen among reviewgpt's own imports.
INDIRECT_IMPORTS = {
    "jinja2": "peft 0.9.0's adapter save writes a model card with huggingface_hub's RepoCard.from_template",
}
# Imported only where installed (each import is guarded) and locked per image: the `gpu` and `test`
# extras, which test_lock_satisfies_every_pyproject_pin checks. triton (the triton_* speed options)
# comes with torch where CUDA is (torch.txt's cu118 build brings 2.2, which they do without); the cpu
# lock holds it for the tests, which run the kernels in triton's interpreter.
OPTIONAL_IMPORTS = {"bitsandbytes", "deepspeed", "flash-attn", "mistral-common", "triton"}


def runtime_distributions() -> dict:
    """distribution -> the modules of it that reviewgpt imports (any `import` in reviewgpt/, at module
    level or inside a function), plus INDIRECT_IMPORTS."""
    import ast

    stdlib = getattr(sys, "stdlib_module_names", None)
    if stdlib is None:
        pytest.skip("telling the standard library apart needs Python >= 3.10")
    from importlib.metadata import packages_distributions

    providers = packages_distributions()
    modules = set(INDIRECT_IMPORTS)
    for path in (ROOT / "reviewgpt").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    found = {}
    for module in sorted(modules - set(stdlib) - {"reviewgpt", "__future__"}):
        dist = canonicalize_name(providers.get(module, [module])[0])  # not installed here: its own name
        found.setdefault(dist, []).append(module)
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_lock_holds_every_package_imported_at_run_time(target):
    """A package imported at run time that reaches a lock only through another package's
    dependencies (Jinja2 through torch 2.x) is missing from a lock without that package (cu117)."""
    versions = locked(target)
    needed = runtime_distributions()
    assert {"jinja2", "transformers", "peft", "pyyaml", "torch"} <= set(needed)
    missing = {dist: modules for dist, modules in needed.items()
               if dist not in versions and dist not in OPTIONAL_IMPORTS}
    assert not missing, f"envs/{target}/requirements.lock lacks {missing} (add to pyproject.toml, run `nox -s lock`)"
