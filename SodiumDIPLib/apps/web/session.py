"""What the browser app does to the MRML scene, without any UI: load inputs, run, keep a history, save.

One ``Session`` per server. It drives the same code Slicer's panel drives: volumes enter the scene through
``scene.update_volume_node``, a run is a ``scene.SceneRun`` (inputs exported to NRRD, the worker subprocess
through ``jobs.Job``, snapshots in a live-preview node, results applied to the scene only after success,
cancel keeps the best result so far), parameters are the engine's declarations (``app.parameters``).

Files: inputs are read from the server's data folder only (a path that leaves it is refused); results are
written there, atomically (``io.write_volume``), under a new name that is never an input's or an earlier
result's, so a user's files are never overwritten.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from SodiumDIPLib.apps import scene as sc
from SodiumDIPLib.errors import InputError
from SodiumDIPLib.apps.web import parameters

#: Suffixes offered by the file picker (what ``io.read_volume`` reads as single files).
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Names the built-in phantom's volumes get in the scene.
PHANTOM_ROLES = ("sodium", "proton", "reference", "mask", "lesion")


@dataclass
class RunEntry:
    """One run of this session: its settings, its SceneRun while it lives, the nodes it left in the scene."""

    number: int
    method: str
    preset: str
    params: dict
    run: sc.SceneRun
    nodes: dict = field(default_factory=dict)
    record: Optional[dict] = None
    saved: list = field(default_factory=list)

    @property
    def label(self) -> str:
        changed = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        state = self.run.state if self.run.state != "finished" else "done"
        return f"#{self.number} {self.method} ({self.preset}{'; ' + changed if changed else ''}) - {state}"

    def summary(self) -> dict:
        """JSON-ready description for the browser's history list."""
        metrics = (self.record or {}).get("metrics") or {}
        return {"number": self.number, "label": self.label, "state": self.run.state, "method": self.method,
                "error": self.run.error or "", "has_output": "output" in self.nodes,
                "psnr": metrics.get("psnr_global"), "saved": list(self.saved)}


class Session:
    """The scene-side state of one app server (not thread-safe: call from the server's event loop)."""

    def __init__(self, scene, data_folder, methods: dict, python_executable: Optional[str] = None,
                 device: str = "cpu", snapshot_interval_s: float = 0.5):
        self.scene = scene
        self.data_folder = Path(data_folder).resolve()
        self.methods = methods
        self.python_executable = python_executable
        self.device = device
        self.snapshot_interval_s = snapshot_interval_s
        self.inputs: dict = {}          # role -> volume node
        self.input_paths: set = set()   # files read as inputs (never written)
        self.history: list = []
        self.table_node = None

    # --- inputs ----------------------------------------------------------------------------------------

    def data_files(self) -> list:
        """Volume files under the data folder, relative paths, sorted (what the file picker offers)."""
        if not self.data_folder.is_dir():
            return []
        files = [p for p in self.data_folder.rglob("*") if p.is_file() and _is_volume(p.name)
                 and not p.name.startswith(".")]
        return sorted(str(p.relative_to(self.data_folder)) for p in files)

    def resolve(self, relative: str) -> Path:
        """A picker entry as a path inside the data folder; InputError if it leaves the folder or is missing."""
        if not relative:
            raise InputError("choose a file from the data folder")
        path = (self.data_folder / relative).resolve()
        if self.data_folder not in path.parents:
            raise InputError(f"{relative!r} is outside the data folder {self.data_folder}; "
                             "expected a file the picker lists")
        if not path.is_file():
            raise InputError(f"{relative!r} does not exist in the data folder {self.data_folder}")
        return path

    def load_file(self, role: str, relative: str):
        """Read a volume file of the data folder into the scene as the ``role`` input (sodium or proton)."""
        from SodiumDIPLib.data.io import read_volume

        path = self.resolve(relative)
        volume = read_volume(path, role, allow_2d=False)
        node = self._set_input(role, volume, f"{role}: {path.name}")
        self.input_paths.add(path)
        if role == "sodium":  # the phantom's truth and masks do not describe a user's file
            for extra in ("reference", "mask", "lesion"):
                if extra in self.inputs:
                    sc.remove_node(self.scene, self.inputs.pop(extra))
        return node

    def load_phantom(self, shape: int = 24, seed: int = 0):
        """The built-in head phantom (sodium, proton, truth as reference, brain mask, lesion) into the scene."""
        from SodiumDIPLib.data.phantom import make_phantom

        case = make_phantom(kind="head", seed=seed, shape=(shape, shape, shape))
        sources = {"sodium": case.sodium, "proton": case.proton, "reference": case.sodium_truth,
                   "mask": case.brain, "lesion": case.lesion}
        for role in PHANTOM_ROLES:
            self._set_input(role, sources[role], f"phantom {role}")
        return self.inputs["sodium"]

    def _set_input(self, role: str, volume, name: str):
        old = self.inputs.get(role)
        if old is not None and self.scene.GetNodeByID(old.GetID()) is not None:
            sc.remove_node(self.scene, old)
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(name))
        sc.update_volume_node(node, volume)
        self.inputs[role] = node
        return node

    # --- runs ------------------------------------------------------------------------------------------

    @property
    def current(self) -> Optional[RunEntry]:
        return self.history[-1] if self.history else None

    @property
    def running(self) -> bool:
        return self.current is not None and self.current.run.running

    def start(self, method: str, preset: str, form: Optional[dict] = None) -> RunEntry:
        """Check the choices and start a run in the background (InputError names what is wrong)."""
        if self.running:
            raise InputError("a run is in progress; cancel it or wait for it to finish")
        if "sodium" not in self.inputs:
            raise InputError("no sodium volume loaded; load a file from the data folder or the phantom")
        described = self.methods.get(method)
        if described is None:
            raise InputError(f"unknown method {method!r}; expected one of {', '.join(self.methods)}")
        if not described.get("available", True):
            raise InputError(f"method {method!r} is not available here: {described.get('reason')}")
        if described.get("needs_proton") and "proton" not in self.inputs:
            raise InputError(f"method {method!r} needs a proton volume; load one first")
        overrides = parameters.overrides(described, preset, form or {})
        if self.table_node is None or self.scene.GetNodeByID(self.table_node.GetID()) is None:
            self.table_node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", "SodiumDIP metrics")
        number = len(self.history) + 1
        inputs = {role: self.inputs.get(role) for role in PHANTOM_ROLES}
        run = sc.SceneRun(
            self.scene, inputs["sodium"], inputs["proton"] if described.get("needs_proton") else None,
            inputs["reference"], inputs["mask"], inputs["lesion"], method=method, preset=preset,
            params=overrides, device=self.device, table_node=self.table_node,
            snapshot_interval_s=self.snapshot_interval_s, python_executable=self.python_executable,
            output_name=f"SodiumDIP {method} #{number}")
        entry = RunEntry(number, method, preset, overrides, run)
        run.start()
        self.history.append(entry)
        return entry

    def poll(self) -> list:
        """Handle the current run's new events; on its end keep its nodes and record. Returns the events."""
        entry = self.current
        if entry is None or not entry.run.running:
            return []
        events = entry.run.poll()
        if not entry.run.running:
            entry.nodes, entry.record = dict(entry.run.nodes), entry.run.record
            entry.run.cleanup()  # temporary files only; the nodes stay in the scene
        return events

    def cancel(self) -> None:
        """Stop the current run; its best result so far arrives with the next ``poll``."""
        if self.running:
            self.current.run.cancel(timeout=10.0)

    def entry(self, number: int) -> RunEntry:
        for entry in self.history:
            if entry.number == number:
                return entry
        raise InputError(f"there is no run #{number} in this session")

    def shutdown(self) -> None:
        for entry in self.history:
            if entry.run.running:
                entry.run.cancel(timeout=5.0)
                entry.run.poll()
            entry.run.cleanup()

    # --- results ---------------------------------------------------------------------------------------

    def save(self, number: int, stem: str = "") -> list:
        """Write run ``number``'s output (and bias field, metrics JSON) into the data folder; returns the paths.

        Names are ``<stem>.nii.gz`` etc., made unique (``<stem>_1`` ...) so that no input and no existing file
        is ever overwritten, nor a second file given a volume's name in another format; written atomically."""
        from SodiumDIPLib.data.io import json_default, write_text_atomic, write_volume

        entry = self.entry(number)
        if "output" not in entry.nodes:
            raise InputError(f"run #{number} has no result to save ({entry.run.state})")
        stem = _safe_stem(stem or f"sodiumdip_{entry.method}_run{number}")
        outputs = [("output", entry.nodes["output"], ".nii.gz")]
        if "bias_field" in entry.nodes:
            outputs.append(("bias_field", entry.nodes["bias_field"], ".nii.gz"))
        paths = []
        base = self._free_stem(stem, [suffix_of(kind) + ext for kind, _, ext in outputs] + [".json"])
        for kind, node, ext in outputs:
            path = self.data_folder / f"{base}{suffix_of(kind)}{ext}"
            paths.append(str(write_volume(sc.volume_node_to_volume(node, kind), path)))
        record = dict(entry.record or {}, saved=[Path(p).name for p in paths])
        paths.append(str(write_text_atomic(json.dumps(record, default=json_default, indent=2, sort_keys=True),
                                           self.data_folder / f"{base}.json")))
        entry.saved.extend(paths)
        return paths

    def _free_stem(self, stem: str, suffixes: list) -> str:
        # never a name an input or any volume of the folder already has, whatever its format
        input_stems = {_strip_suffix(p.name) for p in self.input_paths}
        input_stems |= {_strip_suffix(p.name) for p in self.data_folder.iterdir() if _is_volume(p.name)}
        for n in range(0, 10000):
            candidate = stem if n == 0 else f"{stem}_{n}"
            targets = [(self.data_folder / f"{candidate}{s}") for s in suffixes]
            if candidate not in input_stems and not any(t.exists() for t in targets):
                return candidate
        raise InputError(f"no free file name for {stem!r} in {self.data_folder}")


def suffix_of(kind: str) -> str:
    return "" if kind == "output" else f"_{kind}"


def _is_volume(name: str) -> bool:
    return name.lower().endswith(VOLUME_SUFFIXES)


def _strip_suffix(name: str) -> str:
    for ext in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _safe_stem(stem: str) -> str:
    """A file stem without folders or odd characters (the name stays inside the data folder)."""
    stem = _strip_suffix(stem)
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(stem).name).strip("._")
    if not cleaned:
        raise InputError(f"file name {stem!r} has no usable characters; expected letters, digits, _ or -")
    return cleaned
