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

from SodiumDIPLib.apps.jobs import Event, Job, JobController, wait_for
from SodiumDIPLib.apps.worker import EXIT_CANCELLED

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


# --- what the Slicer panel relies on: a cancel that does not block, a launcher's child, kept logs ----------

def test_tv_cancel_request_is_answered_within_two_seconds(case, tmp_path):
    """The GUI's Cancel (request_cancel) returns at once; the real tv worker exits with its best result
    within 2 s of the request (here: in its solver loop, with a budget it would not finish)."""
    job = Job().start({"inputs": {"sodium": str(case["paths"]["sodium"])}, "method": "tv", "preset": "fast",
                       "params": {"iterations": 100000, "tol": 0.0, "lambda_select": "fixed"},
                       "device": "cpu", "snapshot_interval_s": 0})
    try:
        events = []
        deadline = time.monotonic() + 90
        while not any(e.kind == "progress" for e in events) and job.running and time.monotonic() < deadline:
            events += job.poll()
            time.sleep(0.02)
        assert any(e.kind == "progress" for e in events), [e.kind for e in events]
        t0 = time.monotonic()
        job.request_cancel(grace=10.0)
        assert time.monotonic() - t0 < 0.1, "request_cancel must not wait"
        while job.result is None and job.running and time.monotonic() - t0 < 10:
            events += job.poll()
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        assert elapsed < 2.0, f"the tv worker answered the cancel after {elapsed:.2f} s"
        assert job.result is not None and job.result["cancelled"] and Path(job.result["output"]).is_file()
        events += wait_for(job, timeout=15)  # then the process exits (interpreter shutdown)
        assert job.state == "cancelled" and events[-1].kind == "exit"
    finally:
        job.cleanup()


LAUNCHER = r'''#!{python}
"""Like Slicer's PythonSlicer on Windows: runs the real interpreter as a child (here in a session of its
own, so that signalling the launcher's process group does not reach it) and waits for it."""
import os, subprocess, sys
child = subprocess.Popen([sys.executable] + sys.argv[1:], start_new_session=True)
with open(os.environ["LAUNCHER_CHILD_FILE"], "w") as fh:
    fh.write(str(child.pid))
sys.exit(child.wait())
'''


def test_kill_stops_a_launchers_child_process_tree(case, tmp_path, monkeypatch):
    """A launcher whose real interpreter is its child (PythonSlicer -> python-real): kill() stops both."""
    import sys

    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(LAUNCHER.format(python=sys.executable))
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    child_file = tmp_path / "child.pid"
    monkeypatch.setenv("LAUNCHER_CHILD_FILE", str(child_file))
    plugin = write_plugin(tmp_path)
    job = Job().start(slow_job(case, plugin, iterations=100000, sleep=0.05), python_executable=str(launcher))
    try:
        deadline = time.monotonic() + 60
        events = []
        while not any(e.kind == "progress" for e in events) and time.monotonic() < deadline:
            events += job.poll()
            time.sleep(0.02)
        child = int(child_file.read_text())
        assert alive(job.pid) and alive(child) and os.getpgid(child) != os.getpgid(job.pid)
        assert job.kill(timeout=5)
        time.sleep(0.1)
        assert not alive(job.pid) and not alive(child), "the launcher's child outlived the kill"
    finally:
        job.cleanup()


def test_kill_process_tree_kills_every_descendant(tmp_path):
    import subprocess
    import sys

    from SodiumDIPLib.apps.jobs import kill_process_tree

    pidfile = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
            f"open({str(pidfile)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        grandchild = int(pidfile.read_text())
        kill_process_tree(parent.pid)
        parent.wait(timeout=5)
        time.sleep(0.1)
        assert not alive(grandchild)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_failed_runs_worker_log_is_kept(case, tmp_path):
    """The log (with the traceback) is copied out before cleanup() removes the job folder."""
    plugin = write_plugin(tmp_path)
    job = Job().start(slow_job(case, plugin, iterations=10, fail_at=2))
    try:
        wait_for(job, timeout=60)
        assert job.state == "failed"
        kept = job.keep_log(tmp_path / "logs")
    finally:
        job.cleanup()
    assert not job.folder.exists() and kept.is_file()
    assert "boom at iteration 2" in kept.read_text() and "Traceback" in kept.read_text()


def test_describe_job_does_not_block(tmp_path):
    from SodiumDIPLib.apps.jobs import DescribeJob

    t0 = time.monotonic()
    query = DescribeJob()
    first = query.poll()
    assert time.monotonic() - t0 < 1.0 and first is None, "the query must answer later, not block"
    methods = query.wait(timeout=120)
    assert "tv" in methods and methods["tv"]["parameters"]


def test_cancel_while_the_worker_starts_ends_the_job_within_two_seconds(case):
    """Cancel while the worker is still starting (importing torch: killed at once, nothing to keep): the
    job has ended within 2 s. (tv's solver loop: test_tv_cancel_request_is_answered_within_two_seconds.
    tv's SURE weight search, methods/tv.py, answered in 3.6 s once and under 2 s once on the shared
    machine: not asserted here, see docs/slicer.md.)"""
    job = Job().start({"inputs": {"sodium": str(case["paths"]["sodium"])}, "method": "tv", "preset": "quality",
                       "params": {"iterations": 100000, "tol": 0.0}, "device": "cpu",
                       "snapshot_interval_s": 0})
    try:
        events = []
        t0 = time.monotonic()
        job.request_cancel(grace=10.0)
        while job.result is None and job.running and time.monotonic() - t0 < 10:
            events += job.poll()
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        assert elapsed < 2.0, f"cancel while starting answered after {elapsed:.2f} s"
        events += wait_for(job, timeout=15)
        assert job.state == "cancelled", (job.state, job.error)
    finally:
        job.cleanup()
