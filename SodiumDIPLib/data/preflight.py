"""The pre-flight every command and the worker run before any computation.

A ``Plan`` collects every path a run reads and every path it will write (files, and folders with the names it
writes inside them), resolved (``~``, ``..`` and symbolic links; hard links are compared by inode).
``Plan.check()`` raises InputError (exit 2, one line) when an input is missing, a name is illegal (a path
component over the file system's limit, a NUL byte), a folder to write into is missing or not writable, an
output is a folder, or an output is an input or another output. ``run_parameters`` resolves and range-checks a
method's parameters (preset + overrides, converted and range-checked against their declarations in
SodiumDIPLib.params) and ``check_seed`` / ``finite_number``
check the scalar options, so that nothing found only later can fail after the run.
"""

from __future__ import annotations

import fnmatch
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from SodiumDIPLib.errors import InputError

#: Longest file-name component most file systems accept (bytes) and the longest path (Linux PATH_MAX - 1).
NAME_MAX = 255
PATH_MAX = 4095
#: Seeds are stored as 64-bit integers by torch / numpy.
SEED_RANGE = (-(2 ** 63), 2 ** 63 - 1)
#: While a result is committed, the file it replaces is put aside as ".previous-<name>" (safewrite.Staging),
#: so a name must leave room for that prefix.
_BACKUP_PREFIX = len(".previous-")


def resolve(path) -> Path:
    """Absolute path with ``~``, ``..`` and symbolic links resolved (the file need not exist)."""
    return Path(os.path.expanduser(str(path))).resolve()


def check_name(path, role: str) -> Path:
    """Refuse a path the file system cannot hold (NUL byte, a component over NAME_MAX bytes, too long)."""
    text = str(path)
    if "\x00" in text:
        raise InputError(f"{role} path {text!r} contains a NUL byte; expected an ordinary file name")
    try:
        raw = os.fsencode(text)
    except (UnicodeError, TypeError):
        raise InputError(f"{role} path {text!r} cannot be encoded for this file system") from None
    for part in raw.split(b"/"):
        if len(part) + _BACKUP_PREFIX > NAME_MAX:
            raise InputError(f"{role} path {text[:60]}...: a name of {len(part)} bytes is too long; expected at most "
                             f"{NAME_MAX - _BACKUP_PREFIX} bytes per file or folder name")
    if len(raw) > PATH_MAX:
        raise InputError(f"{role} path {text[:60]}... is {len(raw)} bytes long; expected at most {PATH_MAX}")
    return Path(text)


def can_create_in(folder: Path) -> bool:
    """Whether a file can really be created in ``folder`` (os.access says yes to root everywhere)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.remove(probe)
    return True


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(child: Path, folder: Path) -> bool:
    try:
        child.relative_to(folder)
        return True
    except ValueError:
        return False


@dataclass
class Plan:
    """What a run reads and writes. Add everything, then ``check()`` once before any work."""

    inputs: list = field(default_factory=list)    # (role, given path, resolved path)
    outputs: list = field(default_factory=list)   # (role, given path, resolved path)
    folders: list = field(default_factory=list)   # (role, given folder, resolved folder, names written inside)

    def add_input(self, role: str, path) -> None:
        """A file or folder the run reads (None is skipped); its companion files (.img of a .hdr, the data file
        of a .nhdr / .mhd) are inputs too."""
        if path is None:
            return
        from SodiumDIPLib.data.headers import companion_files

        check_name(path, role)
        given = Path(os.path.expanduser(str(path)))
        if not given.exists():
            raise InputError(f"{role} file not found: {path}")
        if not os.access(given, os.R_OK):
            raise InputError(f"{role} {path} is not readable (permission denied)")
        self.inputs.append((role, str(path), resolve(given)))
        for extra in companion_files(given):
            self.inputs.append((role, str(extra), resolve(extra)))

    def add_output(self, role: str, path, companions=()) -> None:
        """A file the run writes (None is skipped); ``companions``: other files written with it."""
        if path is None:
            return
        check_name(path, role)
        self.outputs.append((role, str(path), resolve(path)))
        for extra in companions:
            self.outputs.append((role, str(extra), resolve(extra)))

    def add_folder(self, role: str, folder, names=()) -> None:
        """A folder the run creates if needed and writes ``names`` into (glob patterns allowed)."""
        if folder is None:
            return
        check_name(folder, role)
        self.folders.append((role, str(folder), resolve(folder), tuple(names)))

    def check(self) -> None:
        """Raise InputError for the first problem found (see the module doc)."""
        for role, given, path in self.outputs:
            self._check_output_file(role, given, path)
        for role, given, folder, names in self.folders:
            self._check_folder(role, given, folder, names)
        seen = {}
        for role, given, path in self.outputs:
            for in_role, in_given, in_path in self.inputs:
                if _same(path, in_path) or (Path(in_path).is_dir() and _inside(path, in_path)):
                    raise InputError(f"{role} {given} would overwrite the {in_role} input {in_given}; expected a "
                                     "different output path (inputs are never modified)")
            key = str(path)
            if key in seen:
                raise InputError(f"{role} {given} is the same file as the {seen[key][0]} {seen[key][1]}; expected "
                                 "a different path for each output")
            seen[key] = (role, given)

    def _check_output_file(self, role, given, path: Path) -> None:
        if path.is_dir():
            raise InputError(f"{role} {given} is a folder; expected a file name")
        parent = path.parent
        if not parent.is_dir():
            if not any(_inside(parent, f) for _, _, f, _ in self.folders):
                raise InputError(f"{role} {given}: folder {parent} does not exist")
            return
        if not can_create_in(parent):
            raise InputError(f"{role} {given}: folder {parent} is not writable")

    def _check_folder(self, role, given, folder: Path, names) -> None:
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{role} {given} is an existing file; expected a folder")
        base = _nearest_existing(folder)
        if not base.is_dir():
            raise InputError(f"{role} {given}: {base} is a file, so the folder cannot be created")
        if not can_create_in(base):
            raise InputError(f"{role} {given}: folder {base} is not writable")
        for in_role, in_given, in_path in self.inputs:
            if in_path.is_dir() and (_same(folder, in_path) or _inside(folder, in_path)):
                raise InputError(f"{role} {given} lies inside the {in_role} input folder {in_given}; expected a "
                                 "folder outside the inputs")
            if in_path.parent == folder and any(fnmatch.fnmatch(in_path.name, n) for n in names):
                raise InputError(f"{role} {given} would overwrite the {in_role} input {in_given} "
                                 f"(the run writes {in_path.name} there); expected a different folder")


# ----------------------------------------------------------------------------------------------- scalars
def check_seed(seed, what: str = "--seed") -> int:
    """An integer seed that torch and numpy accept (64-bit)."""
    if isinstance(seed, bool):
        raise InputError(f"{what} {seed!r}: expected an integer")
    if isinstance(seed, float):
        if not math.isfinite(seed) or not seed.is_integer():
            raise InputError(f"{what} {seed!r}: expected an integer")
        seed = int(seed)
    try:
        value = int(seed)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{what} {seed!r}: expected an integer") from None
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise InputError(f"{what} {str(seed)[:30]}: expected an integer between {SEED_RANGE[0]} and {SEED_RANGE[1]}")
    return value


def finite_number(text) -> float:
    """argparse ``type=``: a finite float (1e400, inf and nan are refused)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(text) from None
    if not math.isfinite(value):
        raise ValueError(text)
    return value


finite_number.__name__ = "finite number"


def bounded_int(text) -> int:
    """argparse ``type=``: an integer that fits 64 bits."""
    value = int(text)
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise ValueError(text)
    return value


bounded_int.__name__ = "64-bit integer"


def check_text(value, what: str) -> str:
    """A string that is valid Unicode (an undecodable command-line byte arrives as a lone surrogate)."""
    try:
        str(value).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what}: {str(value).encode('utf-8', 'backslashreplace').decode()[:60]!r} is not valid "
                         "UTF-8 text; expected a readable value") from None
    return value


# ----------------------------------------------------------------------------------------------- parameters
def _check_value(key: str, value, default, depth: int = 0):
    if depth > 20:
        raise InputError(f"parameter {key!r} is nested too deeply; expected a number, a word or a short list")
    if value is None and default is not None:
        raise InputError(f"parameter {key!r} is null; expected a {type(default).__name__} like {default!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"parameter {key!r} = {value!r}: expected a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise InputError(f"parameter {key!r} = {str(value)[:30]}: expected a number that fits 64 bits")
    if isinstance(value, str):
        check_text(value, f"parameter {key!r}")
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_value(key, v, None, depth + 1)
    if isinstance(value, dict):
        for k, v in value.items():
            check_text(k, f"parameter {key!r}")
            _check_value(key, v, None, depth + 1)


def run_parameters(spec, preset: str, overrides: Optional[dict]) -> dict:
    """The full parameters of a run (preset + overrides), every value checked: known name, right type, finite,
    not null, in range for the method. Raises InputError naming the parameter and what is expected."""
    check_text(preset, "--preset")
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        check_text(key, "parameter name")
        _check_value(str(key), value, None)
    try:
        params = spec.parameters(preset, overrides)
    except InputError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InputError(f"parameters for method {spec.name!r}: {type(exc).__name__}: {str(exc)[:120]}; "
                         "expected values of the preset's types") from None
    defaults = spec.presets.get(preset, {})
    for key, value in params.items():  # undeclared parameters of plug-in methods: still finite, typed, not null
        _check_value(key, value, defaults.get(key))
    return params


def plan_parameter_files(plan: "Plan", spec, params: dict) -> None:
    """Add the files a method's parameters name (a model to load, a cohort folder, a model to save) to ``plan``,
    so that no parameter can make the run overwrite an input or another output."""
    from SodiumDIPLib.params import file_parameters

    for name, role, path in file_parameters(spec.name, params):
        if role == "in":
            plan.add_input(f"parameter {name}", path)
        else:
            plan.add_output(f"parameter {name}", path)


def bias_field_expected(spec, params: dict) -> Optional[bool]:
    """Whether a run of this method with these parameters returns a bias field (None: cannot tell before)."""
    if "bias_correction" in params:  # "auto": a field only where the data show one, known after the run
        return {"n4": True, "none": False}.get(params["bias_correction"])
    if "bias_degree" in params:
        try:
            return float(params["bias_degree"]) > 0
        except (TypeError, ValueError):
            return None
    if spec.name in ("zero-filled", "gridding"):
        return False
    return None


def check_bias_option(spec, params: dict, bias_path) -> None:
    """Refuse --bias-field for a method (and parameters) that produce no bias field."""
    if bias_path and bias_field_expected(spec, params) is False:
        raise InputError(f"--bias-field {bias_path}: method {spec.name!r} with these parameters does not estimate a "
                         "bias field; drop --bias-field (or choose a method / parameters with bias correction)")
