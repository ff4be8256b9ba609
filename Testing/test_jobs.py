"""The job controller with real worker processes: events, cancel, crash, kill, garbage, no orphans, cleanup.

Controller-only behaviour (garbage on stdout, one job at a time) uses a fake "python" (a shell script) so it
costs no interpreter start-up; everything about the real worker uses the real worker.
"""

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from SodiumDIPLib.jobs import Event, Job, JobController, wait_for
from SodiumDIPLib.worker import EXIT_CANCELLED

from test_worker import small_case, write_plugin


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (read from /proc, no psutil)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def group_members(pgid: int) -> list:
    """Live processes whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return small_case(tmp_path_factory.mktemp("jobcase"))


def slow_job(case, plugin, **params) -> dict:
    return {"inputs": {"sodium": str(case["paths"]["sodium"])}, "method": "slow_test", "preset": "fast",
            "params": params, "plugins": [str(plugin)], "snapshot_interval_s": 0.05}


def fake_python(folder: Path, body: str) -> str:
    """An executable that stands in for the interpreter (ignores its arguments)."""
    path = folder / "fake-python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_cancel_keeps_best_result_and_leaves_no_process(case, tmp_path):
    plugin = write_plugin(tmp_path)
    child_file = tmp_path / "child.pid"
    job = Job().start(slow_job(case, plugin, iterations=100000, sleep=0.05, spawn_child=str(child_file)))
    try:
        folder = job.folder
        assert job.running and folder.is_dir()
        events = []
        deadline = time.monotonic() + 60
        while not any(e.kind == "progress" for e in events) and time.monotonic() < deadline:
            t0 = time.perf_counter()
            events += job.poll()
            assert time.perf_counter() - t0 < 0.05, "poll() must not block"
            time.sleep(0.02)
        assert all(isinstance(e, Event) for e in events) and events[0].kind == "started"
        assert child_file.exists()
        child = int(child_file.read_text())
        pid = job.pid
        assert alive(pid) and alive(child)
        t0 = time.monotonic()
        job.cancel(timeout=5)
        elapsed = time.monotonic() - t0
        events += job.poll()
        assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
        assert job.state == "cancelled" and job.returncode == EXIT_CANCELLED
        assert job.result is not None and job.result["cancelled"] and Path(job.result["output"]).is_file()
        assert [e.kind for e in events][-2:] == ["result", "exit"]
        time.sleep(0.1)
        assert not alive(pid) and not alive(child), "the worker's whole process group is gone"
        assert group_members(pid) == []
    finally:
        job.cleanup()
    assert not folder.exists(), "cleanup() removes the temporary job folder"


def test_worker_killed_by_sigkill_is_an_error_not_a_hang(case, tmp_path):
    plugin = write_plugin(tmp_path)
    job = Job().start(slow_job(case, plugin, iterations=100000, sleep=0.05))
    try:
        events = []
        deadline = time.monotonic() + 60
        while not any(e.kind == "progress" for e in events) and time.monotonic() < deadline:
            events += job.poll()
            time.sleep(0.02)
        os.kill(job.pid, signal.SIGKILL)
        events += wait_for(job, timeout=10)
        assert [e.kind for e in events][-2:] == ["error", "exit"]
        assert job.state == "failed" and "SIGKILL" in job.error and job.result is None
    finally:
        job.cleanup()


def test_crash_without_result_is_an_error_and_leaves_no_process(case, tmp_path):
    plugin = write_plugin(tmp_path)
    child_file = tmp_path / "child.pid"
    job = Job().start(slow_job(case, plugin, iterations=10, exit_at=3, spawn_child=str(child_file)))
    try:
        events = wait_for(job, timeout=60)
        assert [e.kind for e in events][-2:] == ["error", "exit"]
        assert job.state == "failed" and "exit code 7" in job.error
        assert events[-2]["kind"] == "crash"
        time.sleep(0.1)
        assert not alive(int(child_file.read_text())), "a crashed worker's children are stopped too"
    finally:
        job.cleanup()


def test_garbage_on_stdout_is_an_error_and_the_process_is_stopped(tmp_path):
    pidfile = tmp_path / "sleeper.pid"
    python = fake_python(tmp_path, f'sleep 60 &\necho $! > {pidfile}\necho \'{{"event": "started"}}\'\n'
                                   'echo "Segmentation fault (core dumped) <html>"\nwait')
    job = Job().start({"inputs": {"sodium": "unused.nrrd"}}, python_executable=python)
    try:
        events = wait_for(job, timeout=10)
        assert [e.kind for e in events] == ["started", "error", "exit"]
        assert events[1]["kind"] == "protocol" and "Segmentation fault" in events[1].message
        assert job.state == "failed"
        sleeper = int(pidfile.read_text())
        time.sleep(0.1)
        assert not alive(sleeper), "a worker that breaks the protocol is stopped with its children"
    finally:
        job.cleanup()


def test_exit_zero_without_result_and_unknown_interpreter(tmp_path):
    python = fake_python(tmp_path, 'echo \'{"event": "started"}\'')
    job = Job().start({"inputs": {}}, python_executable=python)
    events = wait_for(job, timeout=10)
    job.cleanup()
    assert [e.kind for e in events] == ["started", "error", "exit"]
    assert "without reporting a result" in job.error
    with pytest.raises(OSError):
        Job().start({"inputs": {}}, python_executable=str(tmp_path / "no-such-python"))


def test_controller_runs_one_job_at_a_time(tmp_path):
    python = fake_python(tmp_path, "echo '{\"event\": \"started\"}'\nexec sleep 60")
    controller = JobController(python_executable=python)
    first = controller.start({"inputs": {}})
    wait_until = time.monotonic() + 5
    while not first.history and time.monotonic() < wait_until:
        controller.poll()
        time.sleep(0.01)
    first_pid, first_folder = first.pid, first.folder
    second = controller.start({"inputs": {}})
    assert not alive(first_pid) and not first_folder.exists()
    assert controller.running and second is controller.job
    controller.cancel(timeout=1)
    events = controller.poll()
    assert events[-1].kind == "exit" and second.state == "cancelled"
    controller.cleanup()
    assert controller.job is None and not alive(second.pid)
