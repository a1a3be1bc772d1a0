"""The torch installer: recorded nvidia-smi tables -> the exact pip command per platform; the
post-install check; --preset auto on a GPU torch cannot use; the launchers' argument flow (the .bat
under Wine's cmd with a stub python, the .sh with a stub python3)."""

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from emotion_summary import install_torch as it
from emotion_summary.commands import install_torch as main
from emotion_summary.core.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]
SMI = ROOT / "tests" / "fixtures" / "nvidia_smi"
PY = sys.executable
CPU = f"{PY} -m pip install torch==2.13.0+cpu --index-url https://download.pytorch.org/whl/cpu"
CU126 = f"{PY} -m pip install torch==2.13.0+cu126 --index-url https://download.pytorch.org/whl/cu126"
CU130 = f"{PY} -m pip install torch==2.13.0+cu130 --index-url https://download.pytorch.org/whl/cu130"
PYPI = f"{PY} -m pip install torch==2.13.0"
OLD_DRIVER = "driver 470.256.02 supports CUDA 11.4, older than every CUDA build of torch 2.13.0"
MIRROR = "https://mirrors.example.org/pytorch-wheels/cu126"

# fixture -> platform -> the exact command (or the error it must give)
EXPECTED = {
    "no_gpu_linux.txt": {"linux": CPU, "win32": CPU, "darwin": PYPI},
    "no_gpu_windows.txt": {"linux": CPU, "win32": CPU, "darwin": PYPI},
    "driver_470_cuda_11.4.txt": {"linux": OLD_DRIVER, "win32": OLD_DRIVER, "darwin": PYPI},
    "driver_560_cuda_12.6.txt": {"linux": CU126, "win32": CU126, "darwin": PYPI},
    "two_gpus_driver_535_cuda_12.2.txt": {"linux": CU126, "win32": CU126, "darwin": PYPI},
    "driver_580_cuda_13.0.txt": {"linux": PYPI, "win32": CU130, "darwin": PYPI},
    "driver_failed.txt": {"linux": "nvidia-smi is installed but failed", "win32": "nvidia-smi is installed but failed",
                          "darwin": PYPI},
}


@pytest.fixture
def no_installed_torch(monkeypatch):
    monkeypatch.setattr(it, "installed_torch_version", lambda: None)
    monkeypatch.delenv("TORCH_INDEX_URL", raising=False)


def dry_run(capsys, *args):
    """stdout of `install_torch.py --dry_run ARGS` (in process), or the one-line error."""
    try:
        main(["--dry_run", *args])
    except SystemExit as e:
        assert e.code == 2
        return capsys.readouterr().err.strip()
    return capsys.readouterr().out.strip()


@pytest.mark.parametrize("fixture,platform", [(f, p) for f in EXPECTED for p in ("linux", "win32", "darwin")])
def test_recorded_nvidia_smi_gives_the_exact_command(fixture, platform, capsys, no_installed_torch):
    out = dry_run(capsys, "--platform", platform, "--nvidia_smi_output", str(SMI / fixture))
    expected = EXPECTED[fixture][platform]
    if expected.startswith(PY):
        cmd = expected if platform != "win32" else subprocess.list2cmdline(expected.split(" "))
        assert out == cmd
    else:
        assert out.startswith("error: ") and expected in out and "TORCH_INDEX_URL=" in out


@pytest.mark.parametrize("platform", ["linux", "win32", "darwin"])
@pytest.mark.parametrize("fixture", ["no_gpu_linux.txt", "driver_470_cuda_11.4.txt", "driver_560_cuda_12.6.txt",
                                     "two_gpus_driver_535_cuda_12.2.txt"])
def test_torch_index_url_overrides_every_choice(fixture, platform, capsys, no_installed_torch, monkeypatch):
    monkeypatch.setenv("TORCH_INDEX_URL", MIRROR)
    out = dry_run(capsys, "--platform", platform, "--nvidia_smi_output", str(SMI / fixture))
    assert out == f"{PY} -m pip install torch==2.13.0 --index-url {MIRROR}"
    monkeypatch.delenv("TORCH_INDEX_URL")
    other = "https://other.example.org/simple"
    assert dry_run(capsys, "--platform", platform, "--nvidia_smi_output", str(SMI / fixture),
                   "--index_url", other) == f"{PY} -m pip install torch==2.13.0 --index-url {other}"


def test_the_script_prints_a_cuda_command_for_a_gpu_and_a_cpu_one_without():
    def run(fixture):
        return subprocess.run([PY, str(ROOT / "scripts" / "install_torch.py"), "--dry_run", "--platform", "win32",
                               "--nvidia_smi_output", str(SMI / fixture)], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    assert "--index-url https://download.pytorch.org/whl/cu126" in run("driver_560_cuda_12.6.txt")
    assert "--index-url https://download.pytorch.org/whl/cpu" in run("no_gpu_windows.txt")


def test_the_installer_imports_no_torch():
    code = "import sys, emotion_summary.install_torch; print('torch' in sys.modules)"
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.stdout.strip() == "False"


def test_parse_reads_driver_cuda_names_and_memory_of_each_gpu():
    two = it.read_nvidia_smi(str(SMI / "two_gpus_driver_535_cuda_12.2.txt"))
    assert (two.driver_version, two.cuda_version) == ("535.183.01", (12, 2))
    assert two.gpus == [it.Gpu("NVIDIA GeForce RTX 3090", 24576)] * 2
    windows = it.read_nvidia_smi(str(SMI / "driver_560_cuda_12.6.txt"))
    assert windows.gpus == [it.Gpu("NVIDIA GeForce RTX 4070 ...", 12282)]
    old = it.read_nvidia_smi(str(SMI / "driver_470_cuda_11.4.txt"))
    assert (old.driver_version, old.cuda_version, old.gpus) == ("470.256.02", (11, 4), [it.Gpu("Tesla T4", 15109)])
    none = it.read_nvidia_smi(str(SMI / "no_gpu_linux.txt"))
    assert none.gpus == [] and none.message == "bash: nvidia-smi: command not found"


def test_newest_fitting_cuda_and_minor_version_compatibility():
    linux = it.PUBLISHED_CUDA["2.13.0"]["linux"]
    assert it.fitting_cuda((12, 8), linux) == (12, 6)
    assert it.fitting_cuda((12, 9), linux) == (12, 9)
    assert it.fitting_cuda((13, 2), it.PUBLISHED_CUDA["2.13.0"]["win32"]) == (13, 0)
    assert it.fitting_cuda((12, 0), linux) == (12, 6)  # a 12.x driver (>= 525) runs any 12.x build
    assert it.fitting_cuda((11, 8), linux) is None


def test_an_installed_torch_of_another_build_is_replaced(monkeypatch):
    smi = it.read_nvidia_smi(str(SMI / "driver_580_cuda_13.0.txt"))
    pypi = it.choose_wheel(smi, "linux", "2.13.0")
    assert it.pip_command(pypi, "python", "2.13.0+cpu")[-1] == "--force-reinstall"
    assert "--force-reinstall" not in it.pip_command(pypi, "python", "2.13.0")
    cu130 = it.choose_wheel(smi, "win32", "2.13.0")  # the local label alone makes pip replace 2.13.0
    assert "--force-reinstall" not in it.pip_command(cu130, "python", "2.13.0")


def test_pinned_version_comes_from_the_requirements(tmp_path):
    assert it.pinned_torch_version() == "2.13.0"
    req = tmp_path / "r.txt"
    req.write_text("torch==2.99.1  # future\n")
    smi = it.read_nvidia_smi(str(SMI / "driver_560_cuda_12.6.txt"))
    with pytest.raises(UserError, match=r"torch 2.99.1: its CUDA builds are not in"):
        it.choose_wheel(smi, "win32", it.pinned_torch_version(req))
    req.write_text("transformers==5.23.0\n")
    with pytest.raises(UserError, match="no 'torch==VERSION' line"):
        it.pinned_torch_version(req)


def fake_torch(monkeypatch, cuda, available, version="2.13.0+cpu"):
    torch = types.ModuleType("torch")
    torch.__version__ = version
    torch.version = types.SimpleNamespace(cuda=cuda)
    torch.cuda = types.SimpleNamespace(is_available=lambda: available)
    monkeypatch.setitem(sys.modules, "torch", torch)


def test_check_refuses_a_cpu_torch_on_a_gpu_machine(monkeypatch):
    fake_torch(monkeypatch, None, False)
    monkeypatch.setattr(it, "installed_torch_version", lambda: "2.13.0+cpu")
    smi = it.read_nvidia_smi(str(SMI / "driver_560_cuda_12.6.txt"))
    with pytest.raises(UserError) as e:
        it.post_install_check(smi, "win32")
    msg = str(e.value)
    assert "CUDA Version: 12.6" in msg and "torch 2.13.0+cpu is a CPU-only build" in msg
    assert msg.endswith("fix: " + subprocess.list2cmdline(CU126.split(" ")))


def test_without_dry_run_pip_runs_with_this_interpreter_then_the_check(monkeypatch, capsys, no_installed_torch):
    ran = []
    monkeypatch.setattr(it.subprocess, "run", lambda cmd: ran.append(cmd) or types.SimpleNamespace(returncode=0))
    monkeypatch.setattr(it, "bitsandbytes_problem", lambda smi: None)
    fake_torch(monkeypatch, "12.6", True, "2.13.0+cu126")
    main(["--platform", "linux", "--nvidia_smi_output", str(SMI / "driver_560_cuda_12.6.txt")])
    assert ran == [CU126.split(" ")]
    assert capsys.readouterr().err.strip().endswith("torch uses the GPU: NVIDIA GeForce RTX 4070 ... (12282 MiB); "
                                                    "driver 560.94, CUDA Version: 12.6")
    fake_torch(monkeypatch, None, False)  # pip "installed" a CPU build: the check stops the installer
    with pytest.raises(SystemExit):
        main(["--platform", "linux", "--nvidia_smi_output", str(SMI / "driver_560_cuda_12.6.txt")])
    assert "cannot use the GPU" in capsys.readouterr().err
    monkeypatch.setattr(it.subprocess, "run", lambda cmd: types.SimpleNamespace(returncode=1))
    with pytest.raises(SystemExit):
        main(["--platform", "win32", "--nvidia_smi_output", str(SMI / "driver_560_cuda_12.6.txt")])
    assert capsys.readouterr().err.strip().endswith("error: pip failed: " + subprocess.list2cmdline(CU126.split(" ")))


def test_check_on_this_machine_without_a_gpu_passes():
    done = subprocess.run([PY, str(ROOT / "scripts" / "install_torch.py"), "--check"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    assert done.returncode == 0 and "no NVIDIA GPU seen" in done.stderr


def test_check_names_a_cuda_visible_devices_that_hides_the_gpu(monkeypatch):
    fake_torch(monkeypatch, "12.6", False, "2.13.0+cu126")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES='' hides it from torch 2.13.0.cu126; unset"):
        it.post_install_check(it.read_nvidia_smi(str(SMI / "driver_560_cuda_12.6.txt")), "linux")


def test_check_names_the_driver_update_when_no_build_fits(monkeypatch):
    fake_torch(monkeypatch, "12.6", False, "2.13.0+cu126")
    smi = it.read_nvidia_smi(str(SMI / "driver_470_cuda_11.4.txt"))
    with pytest.raises(UserError, match=r"CUDA 12.6 build .* fix: the NVIDIA driver 470.256.02 supports CUDA 11.4"):
        it.post_install_check(smi, "linux")


def test_check_passes_a_working_gpu_torch_and_any_torch_without_a_gpu(monkeypatch):
    monkeypatch.setattr(it, "bitsandbytes_problem", lambda smi: None)
    fake_torch(monkeypatch, "12.6", True, "2.13.0+cu126")
    assert it.post_install_check(it.read_nvidia_smi(str(SMI / "driver_560_cuda_12.6.txt")), "win32").startswith("torch uses")
    fake_torch(monkeypatch, None, False)
    assert "CPU torch is right" in it.post_install_check(it.read_nvidia_smi(str(SMI / "no_gpu_linux.txt")), "linux")


def test_check_reports_a_bitsandbytes_without_its_cuda_library():
    # the real bitsandbytes here runs on CPU torch: its CUDA library is not loaded
    smi = it.read_nvidia_smi(str(SMI / "driver_560_cuda_12.6.txt"))
    problem = it.bitsandbytes_problem(smi)
    assert problem.startswith("bitsandbytes 0.50") and "loaded no CUDA library for NVIDIA GeForce RTX 4070" in problem
    assert "pip install --force-reinstall --no-deps bitsandbytes" in problem


def test_auto_preset_refuses_a_gpu_torch_cannot_use(monkeypatch):
    from emotion_summary.training.config import resolve_config

    monkeypatch.setattr(it, "read_nvidia_smi", lambda path=None: it.parse_nvidia_smi(
        (SMI / "driver_560_cuda_12.6.txt").read_text()))
    fake_torch(monkeypatch, None, False)
    with pytest.raises(ConfigError, match=r"--preset auto: nvidia-smi shows NVIDIA GeForce RTX 4070 .* fix: "):
        resolve_config("auto", None)
    assert resolve_config("cpu-smoke", None).preset == "cpu-smoke"
    monkeypatch.setattr(it, "read_nvidia_smi", lambda path=None: it.NvidiaSmi(message="not found"))
    assert resolve_config("auto", None).preset == "cpu"  # no GPU: the real small model


# --- the launchers' argument flow, driven by a stub python that records its arguments ---------------

STUB_BAT = r"""@echo off
echo %*>> "%STUB_LOG%"
if "%~1"=="-c" exit /b 1
if "%STUB_FAIL%"=="%~nx1" exit /b 2
exit /b 0
"""
STUB_SH = """#!/bin/sh
echo "$*" >> "$STUB_LOG"
[ "$1" = "-c" ] && exit 1
[ -n "$STUB_FAIL" ] && [ "$(basename -- "$1")" = "$STUB_FAIL" ] && exit 2
exit 0
"""


def wine_cmd():
    return shutil.which("wine64") or shutil.which("wine") or (
        "/usr/lib/wine/wine64" if os.path.exists("/usr/lib/wine/wine64") else None)


def windows_path(path: Path) -> str:
    return "Z:" + str(path).replace("/", "\\")


@pytest.fixture(scope="module")
def wineprefix(tmp_path_factory):
    """One Wine prefix for the module: creating it takes most of a .bat run (~8 s here)."""
    if wine_cmd() is None:
        pytest.skip("no Windows command interpreter: install Debian's wine64 (apt-get install wine64) to run the .bat")
    return tmp_path_factory.mktemp("wineprefix")


def run_bat(tmp_path, wineprefix, fail="", args=("--train_data", "data\\train.jsonl")):
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "python.bat").write_text(STUB_BAT.replace("\n", "\r\n"))
    log = tmp_path / "log.txt"
    env = {**os.environ, "WINEPREFIX": str(wineprefix), "WINEDEBUG": "-all",
           "WINEPATH": windows_path(stubs), "STUB_LOG": windows_path(log), "STUB_FAIL": fail,
           "VENV": "none", "PRESET": "auto"}
    done = subprocess.run([wine_cmd(), "cmd", "/c", windows_path(ROOT / "start_training_qwen2.bat"), *args],
                          env=env, capture_output=True, timeout=300)
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()] if log.exists() else []
    return done.returncode, lines


def run_sh(tmp_path, fail="", args=("--train_data", "data/train.jsonl")):
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "python3").write_text(STUB_SH)
    (stubs / "python3").chmod(0o755)
    log = tmp_path / "log.txt"
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_LOG": str(log), "STUB_FAIL": fail,
           "VENV": "none", "PRESET": "auto"}
    done = subprocess.run(["bash", str(ROOT / "start_training_qwen2.sh"), *args],
                          env=env, capture_output=True, timeout=60)
    return done.returncode, log.read_text().splitlines()


def expected_flow(here: str, sep: str, quote: str, pip_flags: str, editable: str, train_data: str):
    """What each launcher hands python, step by step (the stub records its arguments, quotes as given)."""
    q = quote
    return [
        f"-c {q}import emotion_summary, torch, transformers, peft, bitsandbytes{q}",
        f"-m pip install -q {pip_flags}--no-deps -e {q}{editable}{q}",
        f"{q}{here}{sep}scripts{sep}install_torch.py{q}",
        f"-m pip install -q {pip_flags}-r {q}{here}{sep}requirements_qwen2.txt{q}",
        f"{q}{here}{sep}scripts{sep}install_torch.py{q} --check",
        f"{q}{here}{sep}scripts{sep}pipeline.py{q} --preset auto --train_data {train_data}",
    ]


def test_bat_installs_torch_then_requirements_then_checks_then_runs_the_pipeline(tmp_path, wineprefix):
    code, lines = run_bat(tmp_path, wineprefix)
    assert code == 0
    assert lines == expected_flow(windows_path(ROOT), "\\", '"', "", windows_path(ROOT) + "\\.",
                                 "data\\train.jsonl")


def test_bat_stops_when_the_torch_installer_fails(tmp_path, wineprefix):
    code, lines = run_bat(tmp_path, wineprefix, fail="install_torch.py")
    assert code == 1 and len(lines) == 3 and lines[-1].endswith('install_torch.py"')


def test_sh_has_the_same_flow_as_the_bat(tmp_path):
    code, lines = run_sh(tmp_path)
    assert code == 0
    assert lines == expected_flow(str(ROOT), "/", "", "--disable-pip-version-check ", str(ROOT),
                                 "data/train.jsonl")


def test_sh_stops_when_the_torch_installer_fails(tmp_path):
    code, lines = run_sh(tmp_path, fail="install_torch.py")
    assert code != 0 and len(lines) == 3 and lines[-1].endswith("install_torch.py")


def test_help_of_both_launchers_installs_nothing_and_shows_the_pipelines_options(tmp_path, wineprefix):
    (tmp_path / "sh").mkdir(), (tmp_path / "bat").mkdir()
    code, lines = run_sh(tmp_path / "sh", args=("--help",))
    assert code == 0 and lines == [f"{ROOT}/scripts/pipeline.py --help"]
    code, lines = run_bat(tmp_path / "bat", wineprefix, args=("--help",))
    assert code == 0 and lines == [f'"{windows_path(ROOT)}\\scripts\\pipeline.py" --help']


def test_an_index_url_beside_an_installed_torch_is_named_in_one_line(monkeypatch, capsys):
    """The launchers run the installer only when torch is missing; the check says the index was not read."""
    monkeypatch.setattr(it, "installed_torch_version", lambda: "2.13.0+cpu")
    monkeypatch.setenv("TORCH_INDEX_URL", MIRROR)
    no_gpu = ["--check", "--platform", "linux", "--nvidia_smi_output", str(SMI / "no_gpu_linux.txt")]
    main(no_gpu)
    script = ROOT / "scripts" / "install_torch.py"
    assert capsys.readouterr().err.splitlines()[0] == (
        f"TORCH_INDEX_URL={MIRROR} is read only when torch is missing, and torch 2.13.0+cpu is installed; to "
        f"reinstall it from that index run: {PY} {script} --index_url {MIRROR}")
    main([*no_gpu, "--index_url", "https://download.pytorch.org/whl/cpu"])  # the installed build's own index
    assert "is read only when torch is missing" not in capsys.readouterr().err
