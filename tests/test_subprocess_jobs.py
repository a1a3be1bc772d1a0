"""The one worker-process protocol (simulator and benchmarks): results per job, errors per job, a
dead process named with what it answered before it died."""

import pytest

from emotion_summary.core.subprocess_jobs import WorkerDied, run_in_worker

JOBS = '''
import os
import sys

READY = []


def prepare():
    READY.append("torch" not in sys.modules)  # runs first in the child


def double(job):
    print("{a job's own output on stdout is not a result}")
    return {"x": 2 * job["x"], "prepared_first": READY == [True]}


def fail_on_two(job):
    if job["x"] == 2:
        raise ValueError("two is bad")
    return {"x": job["x"]}


def die_on_two(job):
    if job["x"] == 2:
        os._exit(3)
    return {"x": job["x"]}
'''


@pytest.fixture
def jobs_dir(tmp_path):
    (tmp_path / "jobs_for_test.py").write_text(JOBS)
    return tmp_path


def test_results_in_order_after_prepare(jobs_dir):
    out = run_in_worker("jobs_for_test:double", [{"x": 1}, {"x": 5}], 60, paths=[jobs_dir],
                        prepare="jobs_for_test:prepare")
    assert out == [{"x": 2, "prepared_first": True}, {"x": 10, "prepared_first": True}]


def test_a_failing_job_is_its_own_error_and_the_rest_run(jobs_dir):
    out = run_in_worker("jobs_for_test:fail_on_two", [{"x": 1}, {"x": 2}, {"x": 3}], 60, paths=[jobs_dir])
    assert out[0] == {"x": 1} and out[2] == {"x": 3}
    assert out[1]["error"] == "ValueError: two is bad" and "fail_on_two" in out[1]["traceback"]


def test_a_dead_worker_names_what_it_answered(jobs_dir):
    with pytest.raises(WorkerDied, match=r"stopped after 1 of 3 jobs \(exit 3\)") as info:
        run_in_worker("jobs_for_test:die_on_two", [{"x": 1}, {"x": 2}, {"x": 3}], 60, paths=[jobs_dir])
    assert info.value.results == [{"x": 1}]
