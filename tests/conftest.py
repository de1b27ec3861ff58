from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
# The tiers are folders; each tier's tests carry its marker (`pytest -m e2e` still selects them).
TIER_MARKERS = {"stages": "stages", "e2e": "e2e", "cluster": "cluster"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        if tier in TIER_MARKERS:
            item.add_marker(getattr(pytest.mark, TIER_MARKERS[tier]))


@pytest.fixture(autouse=True)
def _unit_tests_run_in_process(request, monkeypatch):
    """The fast tier runs in process: a unit test that starts a command (a CLI, Snakemake, a benchmark
    worker) fails at once, naming it; such tests belong to tests/stages."""
    if Path(str(request.node.fspath)).resolve().relative_to(TESTS).parts[0] != "unit":
        return
    import platform
    import subprocess

    # libraries' one-time probes, cached after their first call, are not the test's commands: torch's
    # first import runs ldconfig (CUDA's library finder), platform.processor() runs `uname -p`, and
    # matplotlib's font manager runs fc-list once to build its font cache (a fresh machine's first plot)
    import matplotlib.font_manager  # noqa: F401
    import torch  # noqa: F401
    platform.processor()

    def refuse(args, *rest, **kwargs):
        raise AssertionError(f"the unit tier runs no commands ({args!r}): move the test to tests/stages")
    monkeypatch.setattr(subprocess, "Popen", refuse)
MIRROR = Path(os.environ.get("LWPAR_MIRROR", ROOT.parent / "shared" / "datasets"))
# Tests set their mirror through params; an outer LWPAR_MIRROR (CI sets one) must not override it,
# not even in module- or session-scoped fixtures, which run before any function-scoped monkeypatch.
os.environ.pop("LWPAR_MIRROR", None)
os.environ.pop("LWPAR_WEIGHTS", None)


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch):
    # A test that sets one of them must not leak it into the next.
    monkeypatch.delenv("LWPAR_MIRROR", raising=False)
    monkeypatch.delenv("LWPAR_WEIGHTS", raising=False)


@pytest.fixture(scope="session")
def real_mirror() -> Path:
    if not (MIRROR / "PETA.zip").is_file():
        pytest.skip(f"the PETA mirror is not at {MIRROR}")
    return MIRROR


BIN = Path(sys.executable).parent


def run_command(args, cwd, timeout=900, env=None):
    """Run a tool of this environment (snakemake, dvc, lwpar) with the venv first on PATH. On a
    timeout its whole process group is killed, not only the tool: a workflow engine's jobs would
    otherwise go on running beside the next test."""
    import signal
    import subprocess
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})}
    with subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException as error:  # a timeout, or the test run interrupted (its own session: Ctrl-C misses it)
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            if isinstance(error, subprocess.TimeoutExpired):
                raise subprocess.TimeoutExpired(args, timeout, stdout, stderr) from None
            raise
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def scratch_workflow(work: Path, mirror: Path, edit=None) -> dict:
    """A scratch copy of the workflow in `work` running the smoke params (as smoke.yaml) on `mirror`."""
    for name in ("Snakefile", "workflow", "src", "profiles"):
        (work / name).symlink_to(ROOT / name)
    from lwpar.config import load_params

    params = load_params(ROOT / "workflow/params/smoke.yaml")  # merged onto params.yaml: one standalone file
    params["paths"]["mirror"] = str(mirror)
    if edit:
        edit(params)
    (work / "smoke.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def _code_key(mirror: Path) -> str:
    """What a finished smoke run was made from: the workflow, the package and the mirror."""
    digest = hashlib.sha256(str(mirror.resolve()).encode())
    for top in ("Snakefile", "workflow", "src", "profiles"):
        paths = [ROOT / top] if (ROOT / top).is_file() else sorted((ROOT / top).rglob("*"))
        for path in paths:
            if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path):
                digest.update(f"{path.relative_to(ROOT)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def smoke_run(real_mirror, tmp_path_factory):
    """The smoke configuration run once by Snakemake in a scratch copy of the workflow; every
    end-to-end test reads it, and a test that changes it works on `copy_run` of it.

    With LWPAR_SMOKE_DIR set the run lives in that folder and is reused by later pytest processes
    while the code and the mirror are the same (`make test-all`: the cluster tier compares its
    metrics with the run the end-to-end tier made); an unfinished or stale run there is redone."""
    shared = os.environ.get("LWPAR_SMOKE_DIR")
    work = Path(shared).resolve() if shared else tmp_path_factory.mktemp("smoke")
    done, key = work / ".smoke-run-finished", _code_key(real_mirror)
    if done.is_file() and done.read_text() == key:
        return work, yaml.safe_load((work / "smoke.yaml").read_text())
    if shared:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    params = scratch_workflow(work, real_mirror)
    # the timeout guards against a hang, not a slow machine: alone it takes 5-10 min on 2 cores
    run = run_command([str(BIN / "snakemake"), "--cores", "2", "--config", "params=smoke.yaml"], work, timeout=2400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    done.write_text(key)
    return work, params


def copy_run(work: Path, dest: Path, real_src: bool = False) -> Path:
    """A copy of a finished run's folder that a test may change: outputs, Snakemake's records, the
    params file; links to the workflow stay links. Modification times are kept, so both engines
    see the copy as finished. `real_src`: the package as files, not a link (DVC hashes its modules
    as dependencies inside the repository)."""
    shutil.copytree(work, dest, symlinks=True, ignore=shutil.ignore_patterns("locks", ".smoke-run-finished"))
    if real_src:
        (dest / "src").unlink()
        shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


# Small real runs shared by the tests of one module (each module makes its own, in its own folder).

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A synthetic PETA release prepared, and params for a seconds-long training run on it (tiny ALM)."""
    import synthetic
    from lwpar.data.prepare import prepare

    tmp = tmp_path_factory.mktemp("tiny")
    members, _ = synthetic.make_release(persons_per_subset=12, images_per_person=3)
    synthetic.write_zip(tmp / "mirror" / "PETA.zip", members)
    params = synthetic.tiny_training_params(tmp, tmp / "mirror")
    prepare(params, "peta", tmp / "prepared", tmp / "dl")
    return tmp, params


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A tiny ALM (5 attributes, ResNet-18) and its ONNX export at 64 x 32."""
    import torch

    from lwpar.deploy.export import export_onnx
    from lwpar.models import build_model

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("onnx")
    model = build_model("alm", "resnet18", 5).eval()
    export_onnx(model, (64, 32), tmp / "model.onnx")
    return model, tmp / "model.onnx"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A tiny ALM exported as `lwpar export` does, and a folder of photos of other sizes."""
    import synthetic

    return synthetic.make_artifact(tmp_path_factory.mktemp("artifact"), synthetic.ATTRIBUTES, synthetic.SIZE)


# Lines a test wants in CI's output even when it passes (for example the SLURM job ids).
SUMMARY_LINES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if SUMMARY_LINES:
        terminalreporter.section("lwpar")
        for line in SUMMARY_LINES:
            terminalreporter.write_line(line)
