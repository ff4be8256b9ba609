"""Run the background worker and follow it: start, poll (non-blocking), cancel. No Qt, no Slicer.

A ``Job`` launches ``python -m SodiumDIPLib.apps.worker job.json`` in its own process group (session), reads
its stdout on a thread and turns each line into an ``Event``. ``poll()`` returns the events that arrived
since the last call and never blocks, so a GUI can call it from a timer. Whatever happens to the worker
becomes an event: a crash (non-zero exit without a result), a kill by a signal, or unreadable output all
end in one ``error`` event with a readable message, followed by an ``exit`` event; the job never hangs.

``cancel()`` sends SIGTERM to the whole process group (the worker keeps its best result so far and exits
with ``worker.EXIT_CANCELLED``), waits, then SIGKILLs the group, so no process outlives the job.
``request_cancel()`` does the same without waiting (for a GUI): ``poll()`` escalates to a kill once the
grace time has passed. ``kill()`` stops the worker's whole process tree at once (no result wanted).
On Windows a process group does not hold the worker's children (PythonSlicer is a launcher that runs
python-real as a child), so the tree is killed with ``taskkill /T /F``; on POSIX the group is signalled.
``cleanup()`` also removes the temporary job folder the Job created; ``keep_log()`` first copies the
worker's log (its stderr: tracebacks, warnings) somewhere that outlives the job.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from SodiumDIPLib.apps.worker import EXIT_CANCELLED, EXIT_CANCELLED_NO_RESULT, EXIT_OK

_WINDOWS = os.name == "nt"
#: Characters of the worker's stderr quoted in a crash message.
STDERR_TAIL = 1500


@dataclass
class Event:
    """One worker event: ``kind`` is started, progress, snapshot, result, error or exit; ``data`` the fields."""

    kind: str
    data: dict = field(default_factory=dict)

    def get(self, key, default=None):
        return self.data.get(key, default)

    def __getitem__(self, key):
        return self.data[key]

    @property
    def message(self) -> str:
        return str(self.data.get("message", ""))


def package_root() -> Path:
    """The folder that holds the SodiumDIPLib package (put on the worker's PYTHONPATH)."""
    return Path(__file__).resolve().parent.parent


class Job:
    """One worker process. ``state``: "new", "running", "finished", "failed", "cancelled"."""

    def __init__(self):
        self.proc: Optional[subprocess.Popen] = None
        self.events: "queue.Queue[Event]" = queue.Queue()
        self.history: list = []
        self.folder: Optional[Path] = None
        self.owns_folder = False
        self.job_path: Optional[Path] = None
        self.job: dict = {}
        self.state = "new"
        self.result: Optional[dict] = None
        self.error: Optional[str] = None
        self.returncode: Optional[int] = None
        self._cancel_requested = False
        self._reader: Optional[threading.Thread] = None
        self._log = None
        self._done = threading.Event()
        self._seen: set = set()
        self._kill_at: Optional[float] = None
        self._log_path: Optional[Path] = None

    # --- starting ---------------------------------------------------------------------------------------

    def start(self, job: Union[dict, str, Path], python_executable: Optional[str] = None,
              env: Optional[dict] = None) -> "Job":
        """Launch the worker for ``job`` (a dict, written to a temporary folder, or a job-file path).

        A dict without ``output_dir`` gets ``<temporary folder>/out``. ``python_executable`` defaults to this
        interpreter (in Slicer: PythonSlicer). Returns self.
        """
        if self.state != "new":
            raise RuntimeError("a Job runs once; create a new Job")
        if isinstance(job, dict):
            self.folder = Path(tempfile.mkdtemp(prefix="sodiumdip-job-"))
            self.owns_folder = True
            job = dict(job)
            job.setdefault("output_dir", str(self.folder / "out"))
            self.job_path = self.folder / "job.json"
            self.job_path.write_text(json.dumps(job, indent=2))
            self.job = job
        else:
            self.job_path = Path(job).resolve()
            self.folder = self.job_path.parent
            try:
                self.job = json.loads(self.job_path.read_text())
            except (OSError, ValueError):
                self.job = {}  # the worker reports what is wrong with it
        python = python_executable or sys.executable
        run_env = dict(os.environ if env is None else env)
        root = str(package_root())
        run_env["PYTHONPATH"] = root + (os.pathsep + run_env["PYTHONPATH"] if run_env.get("PYTHONPATH") else "")
        run_env["PYTHONUNBUFFERED"] = "1"
        self._log_path = self.folder / f"worker-{os.getpid()}-{id(self)}.log"
        self._log = open(self._log_path, "w+b")
        kwargs = {}
        if _WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True  # own session and process group: cancel reaches every child
        try:
            self.proc = subprocess.Popen(
                [python, "-m", "SodiumDIPLib.apps.worker", str(self.job_path)], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=self._log, env=run_env, cwd=str(self.folder), **kwargs)
        except OSError:
            self.cleanup()  # no process: nothing may stay behind (open log, temporary folder)
            self.state = "failed"
            raise
        self.state = "running"
        self._reader = threading.Thread(target=self._read, name="sodiumdip-job-reader", daemon=True)
        self._reader.start()
        return self

    # --- reading (reader thread) ------------------------------------------------------------------------

    def _push(self, _kind: str, **data) -> None:
        self.events.put(Event(_kind, data))

    def _read(self) -> None:
        garbage = None
        try:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
                        raise ValueError("not an event object")
                except ValueError:
                    garbage = line
                    break
                kind = record.pop("event")
                self._seen.add(kind)
                self._push(kind, **record)
        finally:
            if garbage is not None:
                # The protocol is broken: nothing the worker says can be trusted any more.
                self._kill_group(signal.SIGKILL if not _WINDOWS else None)
            rc = self.proc.wait()
            self.proc.stdout.close()
            self.returncode = rc
            if not _WINDOWS:
                # Whatever the worker left in its process group (a crash does not stop its children) goes
                # now, while the group id cannot have been reused yet.
                self._kill_group(signal.SIGKILL)
            try:
                self._finish(rc, garbage)
            finally:  # whatever happened above, the job must end (never hang a poller)
                if not self._done.is_set():
                    self._push("exit", returncode=rc)
                    self._done.set()

    def _stderr_tail(self) -> str:
        try:
            self._log.flush()
            text = Path(self._log_path).read_bytes()[-STDERR_TAIL:].decode("utf-8", errors="replace")
        except OSError:
            return ""
        return text.strip()

    def _finish(self, rc: int, garbage: Optional[str]) -> None:
        # Events queued by the reader so far decide what the exit means.
        seen = self._seen
        if garbage is not None:
            self._push("error", kind="protocol",
                       message=f"the worker wrote unreadable output and was stopped: {garbage[:200]!r}")
        elif "result" in seen:
            pass
        elif "error" in seen:
            pass
        elif self._cancel_requested:
            self._push("error", kind="cancelled", message="cancelled before a result existed")
        elif rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
            tail = self._stderr_tail()
            self._push("error", kind="killed",
                       message=f"the worker was killed by signal {name} (out of memory?) before it finished"
                               + (f"; last output: {tail[-300:]}" if tail else ""))
        elif rc != EXIT_OK:
            tail = self._stderr_tail()
            self._push("error", kind="crash",
                       message=f"the worker crashed (exit code {rc}) without a result"
                               + (f"; last output: {tail[-300:]}" if tail else ""))
        else:
            self._push("error", kind="protocol", message="the worker exited without reporting a result")
        self._push("exit", returncode=rc)
        self._done.set()

    # --- polling ----------------------------------------------------------------------------------------

    def poll(self) -> list:
        """Events that arrived since the last call (never blocks). Updates ``state``, ``result``, ``error``.

        After ``request_cancel`` it also kills the worker's process tree once the grace time has passed."""
        if self._kill_at is not None and time.monotonic() >= self._kill_at and not self._done.is_set():
            self._kill_at = None
            self._kill_group(signal.SIGKILL if not _WINDOWS else None)
        out = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            out.append(event)
            self.history.append(event)
            if event.kind == "result":
                self.result = event.data
            elif event.kind == "error" and self.error is None:
                self.error = event.message
            elif event.kind == "exit":
                rc = event.get("returncode")
                if self.result is not None and rc in (EXIT_OK, EXIT_CANCELLED):
                    self.state = "cancelled" if (rc == EXIT_CANCELLED or self.result.get("cancelled")) else "finished"
                elif self._cancel_requested or rc == EXIT_CANCELLED_NO_RESULT:
                    self.state = "cancelled"
                else:
                    self.state = "failed"
                    if self.result is not None and self.error is None:
                        self.error = f"the worker exited with code {rc} after its result"
        return out

    @property
    def running(self) -> bool:
        return self.proc is not None and not self._done.is_set()

    @property
    def pid(self) -> Optional[int]:
        return None if self.proc is None else self.proc.pid

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the worker has exited and its output is read (True), or ``timeout`` passed (False)."""
        return self._done.wait(timeout)

    # --- stopping ---------------------------------------------------------------------------------------

    def _kill_group(self, sig) -> None:
        """POSIX: signal the worker's process group. Windows: ``None`` kills the whole process tree (the
        PythonSlicer launcher and its python-real child), anything else sends CTRL_BREAK to the group."""
        if self.proc is None:
            return
        try:
            if _WINDOWS:
                if sig is None:
                    kill_process_tree(self.proc.pid)
                else:
                    self.proc.send_signal(signal.CTRL_BREAK_EVENT)
            else:
                if sig == signal.SIGKILL and self.proc.poll() is None:
                    kill_process_tree(self.proc.pid)  # children that left the group (a launcher's child)
                os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def request_cancel(self, grace: float = 10.0) -> None:
        """Ask the worker to stop and keep its best result, without waiting (for a GUI timer).

        ``poll()`` kills the process tree if the worker has not exited ``grace`` s later. A worker that has
        not reported "started" yet is killed at once (there is no result to keep)."""
        if self.proc is None or self._done.is_set():
            return
        self._cancel_requested = True
        if "started" not in self._seen:
            # Still starting (importing torch, reading inputs): nothing computed that could be kept, and the
            # imports would delay the answer by seconds. Stop it now.
            self._kill_group(signal.SIGKILL if not _WINDOWS else None)
            return
        self._kill_group(signal.SIGTERM if not _WINDOWS else signal.CTRL_BREAK_EVENT)
        self._kill_at = time.monotonic() + grace

    def kill(self, timeout: float = 5.0) -> bool:
        """Stop the worker's whole process tree now (its result is not wanted); True once it has exited."""
        if self.proc is None:
            return True
        if not self._done.is_set():
            self._cancel_requested = True
            self._kill_group(signal.SIGKILL if not _WINDOWS else None)
        return self._done.wait(timeout)

    def cancel(self, timeout: float = 5.0) -> None:
        """Ask the worker to stop (SIGTERM to its process group), wait up to ``timeout`` s, then SIGKILL.

        The worker answers SIGTERM by writing its best result so far; poll() then delivers that result.
        Returns once the process has exited and its output is read; anything left in the worker's process
        group is killed as soon as the worker exits (also after a crash).
        """
        if self.proc is None:
            return
        if not self._done.is_set():
            self._cancel_requested = True
            self._kill_group(signal.SIGTERM if not _WINDOWS else signal.CTRL_BREAK_EVENT)
            if not self._done.wait(timeout):
                self._kill_group(signal.SIGKILL if not _WINDOWS else None)
                self._done.wait(5.0)
        # The reader sweeps the process group once the worker has exited (see _read).

    def cleanup(self) -> None:
        """Stop the worker if needed, close files and remove the temporary job folder this Job created."""
        if self.proc is not None and not self._done.is_set():
            if self.result is not None:
                self.kill(timeout=2.0)  # its answer is in; it is only shutting down
            else:
                self.cancel(timeout=2.0)
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.owns_folder and self.folder is not None and self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)

    def keep_log(self, folder: Union[str, Path]) -> Optional[Path]:
        """Copy the worker's log into ``folder`` (created if needed) under a unique name; returns the copy
        (None when there is no log). Call before ``cleanup()``, which removes the job folder."""
        if self._log_path is None or not Path(self._log_path).is_file():
            return None
        if self._log is not None:
            self._log.flush()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        fd, name = tempfile.mkstemp(prefix=f"sodiumdip-worker-{stamp}-", suffix=".log", dir=folder)
        os.close(fd)
        shutil.copyfile(self._log_path, name)
        return Path(name)

    def log_text(self) -> str:
        """Everything the worker wrote to stderr (its log)."""
        try:
            return Path(self._log_path).read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False


class JobController:
    """One job at a time, as a GUI panel wants it: starting a new job cancels and cleans the previous one."""

    def __init__(self, python_executable: Optional[str] = None):
        self.python_executable = python_executable
        self.job: Optional[Job] = None

    def start(self, job: Union[dict, str, Path], python_executable: Optional[str] = None) -> Job:
        self.cleanup()
        self.job = Job().start(job, python_executable or self.python_executable)
        return self.job

    def poll(self) -> list:
        return [] if self.job is None else self.job.poll()

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def cancel(self, timeout: float = 5.0) -> None:
        if self.job is not None:
            self.job.cancel(timeout)

    def cleanup(self) -> None:
        if self.job is not None:
            self.job.cleanup()
            self.job = None


def kill_process_tree(pid: int) -> None:
    """Kill process ``pid`` and every process it started (Windows: ``taskkill /T /F``; POSIX: the children
    found in /proc, deepest first, then ``pid``). For a launcher whose real interpreter is its child."""
    if _WINDOWS:
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return
    for child in reversed(_descendants(pid)):
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _descendants(pid: int) -> list:
    """Every descendant of ``pid`` (breadth first), from /proc (Linux)."""
    children: dict = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        out += kids
        todo += kids
    return out


def _describe_command(python_executable: Optional[str]):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(package_root()) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return [python_executable or sys.executable, "-m", "SodiumDIPLib.apps.worker", "--describe"], env


def _parse_describe(stdout: str, stderr: str, returncode) -> dict:
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "methods":
            return {m["name"]: m for m in record["methods"]}
        if record.get("event") == "error":
            raise RuntimeError(record.get("message", "unknown error"))
    raise RuntimeError(f"the SodiumDIP worker did not list its methods (exit code {returncode}): "
                       f"{stderr.strip()[-500:]}")


class DescribeJob:
    """``describe_methods`` without blocking: started at once, ``poll()`` returns the methods dict once the
    worker answered (None before), or raises RuntimeError with the worker's message. For a GUI timer."""

    def __init__(self, python_executable: Optional[str] = None, timeout: float = 120.0):
        command, env = _describe_command(python_executable)
        self._deadline = time.monotonic() + timeout
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                         env=env)
        except OSError as exc:
            self.close()
            raise RuntimeError(f"cannot start the SodiumDIP worker to list methods: {exc}") from None

    def poll(self) -> Optional[dict]:
        rc = self.proc.poll()
        if rc is None:
            if time.monotonic() < self._deadline:
                return None
            self.proc.kill()
            rc = self.proc.wait()
        try:
            self._out.seek(0)
            self._err.seek(0)
            return _parse_describe(self._out.read().decode("utf-8", "replace"),
                                   self._err.read().decode("utf-8", "replace"), rc)
        finally:
            self.close()

    def wait(self, timeout: float = 120.0) -> dict:
        """Block until the answer (scripts, or a GUI that cannot go on without it)."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.poll()
            if answer is not None:
                return answer
            if time.monotonic() >= deadline:
                self.proc.kill()
                raise RuntimeError("the SodiumDIP worker did not list its methods in time")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self._out, self._err):
            if not f.closed:
                f.close()

    proc = None


def describe_methods(python_executable: Optional[str] = None, timeout: float = 120.0) -> dict:
    """Ask a worker interpreter for the registered methods: name -> {description, presets, available, ...}.

    Runs ``python -m SodiumDIPLib.apps.worker --describe`` so that the caller (Slicer's GUI process) never imports
    torch itself. Raises RuntimeError with the worker's message when it cannot answer.
    """
    command, env = _describe_command(python_executable)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot start the SodiumDIP worker to list methods: {exc}") from None
    return _parse_describe(proc.stdout, proc.stderr, proc.returncode)


def wait_for(job: Job, timeout: float = 60.0, interval: float = 0.05) -> list:
    """Poll ``job`` until it has exited (or ``timeout`` s); returns every event. For scripts and tests."""
    events = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += job.poll()
        if events and events[-1].kind == "exit":
            return events
        time.sleep(interval)
    events += job.poll()
    return events
