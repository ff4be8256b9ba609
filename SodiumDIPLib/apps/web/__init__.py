"""``sodiumdip app``: the SodiumDIP panel in a browser, on Slicer's own views (trame-slicer; ``pip install -e ".[app]"``).

Importing this package is cheap (no trame, no VTK): the server is imported when the command runs, so the
rest of the command line works without the [app] extra.
"""

from __future__ import annotations

import argparse

DEFAULT_PORT = 8080


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sodiumdip app``."""
    parser.add_argument("--data", default=".", metavar="FOLDER",
                        help="folder whose volume files the file picker offers; results are saved there (default .)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--phantom-shape", type=int, default=24, metavar="N",
                        help="grid of the built-in phantom the 'Load phantom' button loads (default 24^3)")


def main(args: argparse.Namespace) -> int:
    """Run the server until interrupted. Exit 2 (InputError) for a bad folder, port or missing extra."""
    from SodiumDIPLib.errors import InputError

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: expected 0..65535")
    if not 8 <= args.phantom_shape <= 128:
        raise InputError(f"--phantom-shape {args.phantom_shape}: expected 8..128")
    from pathlib import Path

    if not Path(args.data).is_dir():
        raise InputError(f"--data {args.data}: not a folder; expected a folder of volume files")
    import os

    if not os.environ.get("DISPLAY") and not os.environ.get("VTK_DEFAULT_OPENGL_WINDOW"):
        # no X server: render offscreen with Mesa's EGL (set VTK_DEFAULT_OPENGL_WINDOW=vtkOSOpenGLRenderWindow
        # for OSMesa, e.g. where EGL is missing)
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"
    import importlib.util

    for module in ("trame", "trame_slicer"):
        if importlib.util.find_spec(module) is None:
            raise InputError(f"the app needs the [app] extra ({module} is missing): pip install -e \".[app]\"")
    from SodiumDIPLib.apps.web.server import serve

    return serve(args.data, host=args.host, port=args.port, phantom_shape=args.phantom_shape)


def register_commands(subparsers) -> None:
    """Hook for ``cli.COMMAND_MODULES``: adds the ``app`` subcommand."""
    p = subparsers.add_parser("app", help="the SodiumDIP panel in a browser (trame-slicer; needs the [app] extra)")
    add_arguments(p)
    p.set_defaults(func=main)
