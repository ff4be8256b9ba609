"""The background worker's protocol with real subprocesses: events, snapshots, cancel, crash, bad jobs.

Test-only methods come from a plugin file (``write_plugin``) that the job names; it registers
``slow_test``: an iterative method whose estimate at iteration t is y * (1 - 0.5**t), with options to
sleep, fail, hard-exit, print to stdout and spawn a child process. ``tv`` (the real method) runs once.
A method that raises is tested in test_scene.py (exit code 1, one error event, traceback in the log), a
worker killed or crashing in test_jobs.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SodiumDIPLib.data.volume import Volume, from_sitk, ijk_to_ras_matrix, to_sitk
from SodiumDIPLib.apps import worker
from SodiumDIPLib.apps.worker import EXIT_BAD_JOB, EXIT_CANCELLED, EXIT_OK, extract_slice

REPO = Path(__file__).resolve().parents[1]

PLUGIN = r'''
import os, subprocess, sys, time
import numpy as np
from SodiumDIPLib.methods.base import Method, MethodResult, register

def _run(problem, params, ctx):
    y = np.asarray(problem.initial, dtype=np.float32)
    if params["spawn_child"]:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(params["spawn_child"], "w") as fh:
            fh.write(str(child.pid))
    if params["chatter"]:
        print("library chatter on stdout")
        sys.stdout.flush()
        os.write(1, b"raw chatter on fd 1\n")
    history, best, it = [], None, 0
    for it in range(1, int(params["iterations"]) + 1):
        if it == params["fail_at"]:
            raise RuntimeError(f"boom at iteration {it}")
        if it == params["exit_at"]:
            os._exit(7)
        x = y * (1 - 0.5 ** it)
        best = x
        loss = float(((x - y) ** 2).mean())
        history.append({"iteration": it, "loss": loss})
        ctx.report(it, image=(lambda x=x: x), loss=loss)
        if ctx.cancelled():
            return MethodResult(image=best, iterations=it, stop_rule="cancelled", stop_iteration=it,
                                history=history)
        time.sleep(params["sleep"])
    return MethodResult(image=best, iterations=it, stop_rule="fixed", stop_iteration=it, history=history)

_P = dict(iterations=20, sleep=0.02, fail_at=-1, exit_at=-1, chatter=False, spawn_child="")
register(Method(name="slow_test", description="test-only iterative method", run=_run,
                presets={"fast": dict(_P), "balanced": dict(_P), "quality": dict(_P)}, supports_kspace=False))
'''


def write_plugin(folder) -> Path:
    path = Path(folder) / "sodiumdip_test_plugin.py"
    path.write_text(PLUGIN)
    return path


def small_case(folder, shape=(12, 14, 16)) -> dict:
    """A small oblique sodium volume with signal (NRRD) and a proton on a finer grid over the same space."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    truth = (k ** 2 + j ** 2 + i ** 2 < 0.7).astype(np.float32) * 40 + 5
    theta = np.deg2rad(10)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    sodium = Volume(truth + rng.normal(0, 3, shape).astype(np.float32), (3.0, 3.5, 4.0), (10.0, -20.0, 5.0), rot)
    proton = Volume(truth * 10, (3.0, 3.5, 4.0), (10.0, -20.0, 5.0), rot)
    paths = {}
    for name, vol in (("sodium", sodium), ("proton", proton), ("reference", sodium.with_array(truth))):
        paths[name] = folder / f"{name}.nrrd"
        sitk.WriteImage(to_sitk(vol), str(paths[name]))
    return {"paths": paths, "sodium": sodium}


def run_worker(job: dict, folder: Path, timeout: float = 60.0):
    """Run the worker to completion; returns (exit code, events, stderr)."""
    path = Path(folder) / "job.json"
    path.write_text(json.dumps(job))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "SodiumDIPLib.apps.worker", str(path)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=folder)
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every stdout line must be JSON
    return proc.returncode, events, proc.stderr


def kinds(events):
    return [e["event"] for e in events]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return small_case(tmp_path_factory.mktemp("case"))


def test_real_method_events_in_order_and_snapshots_readable(case, tmp_path):
    job = {"inputs": {k: str(v) for k, v in case["paths"].items()}, "method": "tv", "preset": "fast",
           "output_dir": str(tmp_path / "out"), "snapshot_interval_s": 1e-6, "seed": 3}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    proc = subprocess.Popen([sys.executable, "-m", "SodiumDIPLib.apps.worker", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    events, read_snapshots = [], 0
    for line in proc.stdout:  # read snapshots while the worker runs, as the GUI does
        ev = json.loads(line)  # every stdout line is one JSON event
        events.append(ev)
        if ev["event"] == "snapshot" and Path(ev["path"]).exists():
            snap = from_sitk(sitk.ReadImage(ev["path"]))
            assert snap.shape == case["sodium"].shape
            np.testing.assert_allclose(ijk_to_ras_matrix(snap), ijk_to_ras_matrix(case["sodium"]), atol=1e-5)
            read_snapshots += 1
    err = proc.stderr.read()
    assert proc.wait() == EXIT_OK, err
    k = kinds(events)
    assert k[0] == "started" and k[-1] == "result" and "error" not in k
    assert k.count("progress") >= 2 and read_snapshots >= 1
    assert k.index("snapshot") > k.index("progress")
    its = [e["iteration"] for e in events if e["event"] == "progress"]
    assert its == sorted(its) and its[-1] > its[0]
    prog = [e for e in events if e["event"] == "progress"][-1]
    assert "psnr" in prog["metrics"], "a reference was given: progress must carry metrics"
    assert prog["eta"] is not None and prog["eta"] >= 0 and prog["elapsed"] > 0
    res = events[-1]
    out = from_sitk(sitk.ReadImage(res["output"]))
    assert out.shape == case["sodium"].shape
    np.testing.assert_allclose(ijk_to_ras_matrix(out), ijk_to_ras_matrix(case["sodium"]), atol=1e-5)
    summary = json.loads(Path(res["metrics_json"]).read_text())
    assert summary["method"] == "tv" and summary["metrics"]["psnr_global"] == pytest.approx(res["metrics"]["psnr_global"])
    assert json.loads(Path(res["params"]).read_text())["params"]["iterations"] > 0
    assert res["cancelled"] is False
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith((".tmp", "snapshot"))]
    assert leftovers == [], "snapshots and temporary files are removed once the result exists"


def test_sigterm_keeps_best_result_within_two_seconds(case, tmp_path):
    plugin = write_plugin(tmp_path)
    job = {"inputs": {"sodium": str(case["paths"]["sodium"])}, "method": "slow_test", "preset": "fast",
           "params": {"iterations": 100000, "sleep": 0.05, "chatter": True}, "plugins": [str(plugin)],
           "output_dir": str(tmp_path / "out"), "snapshot_interval_s": 0}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    proc = subprocess.Popen([sys.executable, "-m", "SodiumDIPLib.apps.worker", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "progress" and events[-1]["iteration"] >= 3:
            break
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=10)
    elapsed = time.monotonic() - t0
    events += [json.loads(line) for line in rest.splitlines()]
    assert proc.returncode == EXIT_CANCELLED, err
    assert "chatter" in err, "what a library prints goes to stderr, never into the protocol"
    assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
    res = events[-1]
    assert res["event"] == "result" and res["cancelled"] is True and res["stop_rule"] == "cancelled"
    out = sitk.GetArrayFromImage(sitk.ReadImage(res["output"]))
    y = case["sodium"].array
    ratio = out[y > 1] / y[y > 1]
    # the best estimate so far is y * (1 - 0.5**t) for the last iteration t reached (t >= 3)
    assert np.allclose(ratio, ratio.mean(), atol=1e-4) and 1 - 0.5 ** 3 - 1e-4 <= ratio.mean() < 1


@pytest.mark.parametrize("job, needle", [
    ("not json {", "not valid JSON"),
    ({"method": "tv", "output_dir": "out"}, "sodium"),
    ({"inputs": {"sodium": "x.nrrd"}, "output_dir": "out", "colour": 1}, "unknown job field"),
    ({"inputs": {"sodium": "x.nrrd"}, "output_dir": "out", "mode": "slice"}, "slice"),
])
def test_bad_job_file_exits_2_with_one_error(tmp_path, job, needle):
    path = tmp_path / "job.json"
    path.write_text(job if isinstance(job, str) else json.dumps(job))
    proc = subprocess.run([sys.executable, "-m", "SodiumDIPLib.apps.worker", str(path)], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == EXIT_BAD_JOB
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert kinds(events) == ["error"] and needle in events[0]["message"]


def test_missing_input_file_is_an_input_error(tmp_path):
    job = {"inputs": {"sodium": str(tmp_path / "missing.nrrd")}, "method": "tv", "preset": "fast",
           "output_dir": str(tmp_path / "out")}
    rc, events, _ = run_worker(job, tmp_path, timeout=10)
    assert rc == EXIT_BAD_JOB
    assert kinds(events) == ["error"] and "missing.nrrd" in events[0]["message"]


@pytest.mark.parametrize("axis", ["i", "j", "k"])
def test_extract_slice_keeps_physical_positions(oblique_volume, axis):
    a = worker.AXES[axis]
    index = 2
    sl = extract_slice(oblique_volume, axis, index)
    assert sl.shape[0] == 1
    rows, cols = sl.shape[1], sl.shape[2]
    rng = np.random.default_rng(0)
    for _ in range(5):
        r, c = int(rng.integers(rows)), int(rng.integers(cols))
        new_pos = sl.index_to_physical([c, r, 0])
        ijk = [0, 0, 0]
        others = [x for x in (0, 1, 2) if x != a]
        ijk[others[0]], ijk[others[1]], ijk[a] = c, r, index
        np.testing.assert_allclose(new_pos, oblique_volume.index_to_physical(ijk), atol=1e-9)
        assert sl.array[0, r, c] == oblique_volume.array[ijk[2], ijk[1], ijk[0]]


def test_slice_preview_runs_2d_and_lands_on_the_slice(case, tmp_path):
    """In-process (same code path as the subprocess, without paying the start-up again)."""
    import io

    job = worker.validate_job({
        "inputs": {"sodium": str(case["paths"]["sodium"]), "proton": str(case["paths"]["proton"])},
        "method": "tv", "preset": "fast", "output_dir": str(tmp_path / "out"), "mode": "slice",
        "slice": {"axis": "k", "index": 6}, "snapshot_interval_s": 1e-6})
    stream = io.StringIO()
    emitter = worker.Emitter(stream)
    rc = worker.execute(job, emitter, worker.Run(job, emitter))
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert rc == EXIT_OK
    started = events[0]
    assert started["mode"] == "slice" and started["shape"] == [1, 14, 16]
    expected = extract_slice(case["sodium"], "k", 6)
    out = from_sitk(sitk.ReadImage(events[-1]["output"]))
    assert out.shape == (1, 14, 16)
    np.testing.assert_allclose(ijk_to_ras_matrix(out), ijk_to_ras_matrix(expected), atol=1e-5)
    assert "snapshot" in kinds(events)
    assert not np.allclose(out.array, expected.array), "the preview is denoised, not the input slice"


def test_progress_eta_and_throttle():
    import io

    job = {"progress_interval_s": 0.0, "snapshot_interval_s": 0.0}
    stream = io.StringIO()
    run = worker.Run(job, worker.Emitter(stream))
    run.max_iterations = 100
    run.on_progress({"iteration": 25, "elapsed": 5.0, "loss": 1.0, "psnr": 30.0, "flag": True}, None)
    ev = json.loads(stream.getvalue())
    assert ev["eta"] == pytest.approx(15.0) and ev["metrics"] == {"psnr": 30.0}
    run.job["progress_interval_s"] = 60.0
    run.on_progress({"iteration": 26, "elapsed": 5.2, "loss": float("nan")}, None)
    assert len(stream.getvalue().splitlines()) == 1, "progress events are throttled"
