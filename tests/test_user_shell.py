"""The PATH trick that runs the docs' `python scripts/...` commands keeps this test run's virtualenv."""

import subprocess
import sys

from emotion_summary.predicting.submission import check_submission
from tests.user_shell import ROOT, python_wrapper_dir, user_env


def run_as_user(command: str, tmp_path) -> subprocess.CompletedProcess:
    env = user_env(python_wrapper_dir(tmp_path / "bin"))
    return subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_python_on_path_is_this_interpreter_with_its_site_packages(tmp_path):
    done = run_as_user('python -c "import sys, tqdm, transformers; print(sys.prefix); print(tqdm.__file__)"',
                       tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    prefix, tqdm_file = done.stdout.splitlines()
    assert prefix == sys.prefix  # the venv, not the system Python the link would have fallen back to
    import tqdm
    assert tqdm_file == tqdm.__file__


def test_a_documented_script_imports_its_third_party_dependencies(tmp_path, fixtures):
    out = tmp_path / "sub" / "Emotion_Summary_Result.jsonl"
    done = run_as_user(f"python scripts/inference_qwen2.py --backend extractive --input {fixtures / 'es_tiny.jsonl'} "
                       f"--output {out}", tmp_path)  # predict imports tqdm: the import a clean machine lacked
    assert done.returncode == 0, done.stderr[-2000:]
    assert check_submission(out).ok
