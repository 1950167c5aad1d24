"""Packaging: the configs ship inside the wheel, one module finds them, installs follow constraints.txt."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from wmplan.config_dir import CONFIG_DIR, config_path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
SOURCE_CONFIGS = ROOT / "wmplan" / "configs"
# Not part of a source tree: left out when the repository is copied for the wheel build.
SCRATCH = (".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "outputs", "data",
           "multirun", "lightning_logs", ".pytest_cache", ".gl", ".whl")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyYAML`` == ``pyyaml``, ``a_b`` == ``a-b``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}."""
    out = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip() and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name.strip()), (
            f"constraints.txt: {raw!r} is not an exact name==version pin")
        assert canonical(name) not in out, f"constraints.txt pins {name} twice"
        out[canonical(name)] = version.strip()
    return out


def requirement_name(requirement: str) -> str:
    return canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def test_config_dir_holds_the_entry_point_configs():
    assert CONFIG_DIR.is_absolute() and CONFIG_DIR.is_dir()
    for name in ("train.yaml", "plan.yaml", "collect.yaml", "train_vae.yaml", "train_jepa.yaml", "sweep.yaml"):
        assert (CONFIG_DIR / name).is_file(), name
    for group in ("env", "latent", "model", "diffusion", "sampler", "planner", "objective", "experiment", "ablation"):
        assert any(config_path(group).glob("*.yaml")), group
    assert config_path("env", "wall.yaml") == CONFIG_DIR / "env" / "wall.yaml"


def test_env_configs_load_without_torch(tmp_path):
    """``wmplan.envs.config`` finds its yaml files through wmplan.config_dir and stays torch-free."""
    code = ("import sys; from wmplan.envs.config import ENV_CONFIG_DIR, load_env_config; "
            "from wmplan.config_dir import CONFIG_DIR; assert ENV_CONFIG_DIR == CONFIG_DIR / 'env'; "
            "load_env_config('wall'); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_installed_packages_match_constraints():
    """Every pinned package this environment has is at exactly the pinned version."""
    wrong = []
    for name, pinned in pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        # A pin without a local tag (torch==2.13.0) matches any build of it (2.13.0+cpu).
        if installed != pinned and not ("+" not in pinned and installed.startswith(pinned + "+")):
            wrong.append(f"{name}: installed {installed}, pinned {pinned}")
    assert not wrong, "the venv drifted from constraints.txt (rebuild with `make venv`):\n" + "\n".join(wrong)


def test_every_requirement_of_wmplan_is_pinned():
    requires = metadata.requires("wmplan") or []
    assert requires, "wmplan's metadata lists no Requires-Dist: is it installed (make venv)?"
    pinned = pins()
    missing = sorted({requirement_name(r) for r in requires} - set(pinned))
    assert not missing, f"Requires-Dist of wmplan not pinned in constraints.txt: {missing}"
    assert "wmplan" not in pinned


def test_installed_dependency_closure_is_pinned():
    """Walk the installed requirement graph from wmplan[dev,wandb]: every distribution on it is pinned."""
    markers = pytest.importorskip("packaging.markers")
    requirements = pytest.importorskip("packaging.requirements")
    pinned = pins()
    seen, unpinned = set(), set()
    todo = [("wmplan", frozenset({"dev", "wandb"}))]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # required only on another platform, or optional and absent
        for text in requires:
            req = requirements.Requirement(text)
            if req.marker is not None:
                try:
                    if not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                        continue
                except markers.UndefinedEnvironmentName:
                    continue
            dep = canonical(req.name)
            try:
                metadata.version(dep)
            except metadata.PackageNotFoundError:
                continue
            if dep not in pinned:
                unpinned.add(dep)
            todo.append((dep, frozenset(req.extras)))
    assert not unpinned, f"installed dependencies missing from constraints.txt (see `make constraints`): {sorted(unpinned)}"


def test_wheel_ships_every_config_and_no_top_level_configs(tmp_path):
    """Build the wheel from a copy of the tree: it holds wmplan/configs/** and nothing called configs/."""
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("tests run outside a source tree")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*SCRATCH))
    dist = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(dist)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = dist.glob("wmplan-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    expected = {f"wmplan/configs/{p.relative_to(SOURCE_CONFIGS).as_posix()}"
                for p in SOURCE_CONFIGS.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert len(expected) > 40 and "wmplan/configs/train.yaml" in expected
    assert not expected - names, f"configs missing from the wheel: {sorted(expected - names)}"
    assert not {n for n in names if n.startswith("configs/")}, "a top-level configs/ is in the wheel"
    assert "wmplan/config_dir.py" in names and "wmplan/py.typed" in names
    for name in ("experiment/wall.yaml", "env/wall.yaml", "sampler/ddim_eval.yaml"):
        assert f"wmplan/configs/{name}" in names
    shipped = {f"wmplan/pretrained/{p.name}" for p in (ROOT / "wmplan" / "pretrained").glob("*")
               if p.suffix in (".safetensors", ".json")}
    assert not shipped - names, f"pretrained files missing from the wheel: {sorted(shipped - names)}"
