"""Shared helpers of the test_safety_* batteries: small generated files, a snapshot of a folder (every file's
hash, so "nothing written, inputs byte-identical" is one comparison), and the CLI run in-process with the
process's own stderr file descriptor captured (ITK / NIfTI library warnings print there directly)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from SodiumDIPLib.data.volume import Volume


def snapshot(*folders) -> dict:
    """{path: sha256} of every file under the folders (hidden staging files included)."""
    out = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                p = Path(root) / name
                if p.is_symlink():
                    out[str(p)] = "link->" + os.readlink(p)
                else:
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def phantom_arrays(shape=(12, 16, 16), seed=0):
    """A smooth positive 'sodium' and 'proton' pair (ball + noise), float32."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    ball = (k ** 2 + j ** 2 + i ** 2 < 0.6).astype(np.float32)
    sodium = 1 + 10 * ball + rng.normal(0, 0.5, shape).astype(np.float32)
    proton = 1 + 20 * ball
    return np.abs(sodium).astype(np.float32), proton.astype(np.float32)


def write_pair(folder: Path, fmt="nii.gz", shape=(12, 16, 16)):
    """sodium.<fmt> and proton.<fmt> on the same 2 mm grid in ``folder``; returns their paths."""
    from SodiumDIPLib.data.io import write_volume

    folder.mkdir(parents=True, exist_ok=True)
    sodium, proton = phantom_arrays(shape)
    s = write_volume(Volume(sodium, (2.0, 2.0, 2.0)), folder / f"sodium.{fmt}")
    p = write_volume(Volume(proton, (2.0, 2.0, 2.0)), folder / f"proton.{fmt}")
    return s, p


def run_cli(argv, capfd):
    """(exit code, stdout, stderr) of ``sodiumdip ARGV`` run in this process."""
    from SodiumDIPLib.apps.cli import main

    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def assert_refused(code, err, *words):
    """Exit 2, exactly one non-empty line on stderr, naming each of ``words`` (case-insensitive)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"expected exit 2, got {code}: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in {lines[0]!r}"
    return lines[0]
