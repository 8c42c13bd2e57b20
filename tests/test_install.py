"""`pip install -e .` and `pip install .` both make `sheeprl exp=dreamer_v3_jepa` work from any folder.

Each case installs the project into a fresh virtual environment and composes the experiment from a folder outside the
repository, through the `sheeprl` command and in-process. The dependencies are not reinstalled: a .pth file puts the
running environment's site-packages on the fresh one's sys.path as a plain path entry, so the .pth files in there (among
them this project's own editable install) are not processed and the fresh environment sees the project only through the
install under test.
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
# What a copy of the checkout leaves out: environments, builds, caches, runs
UNTRACKED = (".venv", ".git", "build", "*.egg-info", "__pycache__", "runs", "test_runs", ".whl", ".dmc", ".gl")

# In-process composition; prints where the project and its Hydra plugin were imported from
COMPOSE = """
import sys
from hydra import compose, initialize_config_module
with initialize_config_module("sheeprl.configs", version_base="1.3"):
    cfg = compose(config_name="config", overrides=["exp=dreamer_v3_jepa"])
print("algo.name:", cfg.algo.name)
print("algo.jepa_coef:", cfg.algo.jepa_coef)
print("plugin:", sys.modules["hydra_plugins.jepa_dreamer_searchpath.jepa_dreamer_searchpath"].__file__)
print("project:", sys.modules["jepa_dreamer"].__file__)
"""

SEES_PROJECT = """
import importlib.util
for name in ("jepa_dreamer", "hydra_plugins.jepa_dreamer_searchpath"):
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:
        spec = None
    print(name, spec.origin if spec else None)
"""


def _start(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _output(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{stdout[-4000:]}\n{stderr[-4000:]}"
    return stdout


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    return _output(_start(cmd, cwd, env))


def _fresh_venv(root: Path) -> tuple[Path, dict[str, str]]:
    """A venv without pip that imports the running environment's packages (pip, setuptools, SheepRL, Hydra...)."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # Plain path lines, not `import site; site.addsitedir(...)`: the .pth files in there must stay unprocessed
    (Path(purelib) / "_outer_site_packages.pth").write_text("\n".join(sorted(ours)) + "\n")
    # SheepRL's dist-info lives in the outer environment, so no pip run here writes its console script
    (entry_point,) = importlib.metadata.entry_points(group="console_scripts", name="sheeprl")
    module, func = entry_point.value.split(":")
    sheeprl = venv / "bin" / "sheeprl"
    sheeprl.write_text(f"#!{python}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    sheeprl.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME") and not k.startswith("PIP_")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")
    return venv, env


@pytest.mark.slow
@pytest.mark.parametrize("editable", [True, False], ids=["pip_install_-e", "pip_install"])
def test_sheeprl_finds_exp_dreamer_v3_jepa_from_any_folder_after_pip_install(tmp_path: Path, editable: bool) -> None:
    venv, env = _fresh_venv(tmp_path)
    python = str(venv / "bin" / "python")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    seen = _run([python, "-c", SEES_PROJECT], elsewhere, env)
    assert seen.split() == ["jepa_dreamer", "None", "hydra_plugins.jepa_dreamer_searchpath", "None"], (
        f"the fresh venv sees the project before any install (a non-editable install in {sys.prefix}?):\n{seen}"
    )

    # No build isolation: it would fetch setuptools from an index; the outer environment's setuptools builds it
    install = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    if editable:
        _run([*install, "-e", str(REPO)], elsewhere, env)
    else:
        # A regular install builds in the source folder (build/, *.egg-info): a copy keeps the checkout's clean, and
        # no stale build/lib of an earlier build can end up in the wheel
        source = tmp_path / "source"
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*UNTRACKED))
        _run([*install, str(source)], elsewhere, env)

    # Both at once (each spends its time importing torch and SheepRL); `--cfg job`: Hydra prints the composed job
    # config and stops before training
    cli = _start([str(venv / "bin" / "sheeprl"), "exp=dreamer_v3_jepa", "--cfg", "job"], elsewhere, env)
    in_process = _start([python, "-c", COMPOSE], elsewhere, env)
    try:
        job, out = _output(cli), _output(in_process)
    finally:
        for proc in (cli, in_process):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "name: dreamer_v3_jepa" in job, job[-4000:]
    assert "jepa_coef:" in job, job[-4000:]
    assert "algo.name: dreamer_v3_jepa" in out, out
    assert "algo.jepa_coef:" in out, out
    # Found through the install under test: the checkout when editable, the fresh venv's site-packages otherwise
    where = REPO if editable else venv
    for line in ("plugin:", "project:"):
        (path,) = [row.split(": ", 1)[1] for row in out.splitlines() if row.startswith(line)]
        assert Path(path).resolve().is_relative_to(where.resolve()), out
