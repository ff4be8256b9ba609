"""Console helpers shared by the commands: optional volumes from the command line and a progress bar."""

from __future__ import annotations

import sys


def read_optional(path, role, **kw):
    """The volume at ``path`` read for ``role`` (None when the option was not given)."""
    from SodiumDIPLib.data.io import read_volume

    return None if path is None else read_volume(path, role, **kw)


def read_run_volumes(args) -> dict:
    """The volumes of a denoising command (sodium required; proton, reference, mask, lesion, proton-only when
    given), read after the pre-flight."""
    from SodiumDIPLib.data.io import read_volume

    return {"sodium": read_volume(args.sodium, "sodium"), "proton": read_optional(args.proton, "proton"),
            "reference": read_optional(args.reference, "reference"), "mask": read_optional(args.mask, "mask"),
            "lesion": read_optional(args.lesion, "lesion"), "proton_only": read_optional(args.proton_only, "proton-only")}


def progress_printer(args, total_hint=None):
    """A tqdm progress bar fed by pipeline progress events, created at the first event (so that input errors
    found before the run starts print one clean line). Returns (callback or None, close)."""
    if getattr(args, "quiet", False):
        return None, (lambda: None)
    from tqdm import tqdm

    state = {}

    def on_progress(event, _image_fn):
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total_hint, unit="it", file=sys.stderr, dynamic_ncols=True, leave=False)
        bar.n = event.get("iteration", bar.n)
        post = {k: f"{event[k]:.4g}" for k in ("loss", "psnr") if isinstance(event.get(k), float)}
        bar.set_postfix(post, refresh=False)
        bar.refresh()

    def close():
        if "bar" in state:
            state.pop("bar").close()

    return on_progress, close
