"""All-or-nothing writes: stage every file of a result, then move them all into place at once.

``Staging`` renders each output into a hidden folder beside its destination (same file system, so the final
move is a rename), under the output's **final** file name -- a detached header (.nhdr / .mhd) therefore names
its real data file, never a temporary one. ``commit()`` moves the staged files into place; an existing file at
a destination is first put aside and, if any move fails, every destination is restored to what it was before
(nothing deleted, nothing altered). Nothing touches a destination before ``commit()``; ``discard()`` (also
called when the ``with`` block fails) removes the staging folders.

Files are created with the permissions the process's umask gives ordinary files (not the 0600 of
``tempfile.mkstemp``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

STAGING_PREFIX = ".sodiumdip-staging-"


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


class Staging:
    """A set of files to be written together. Use as a context manager (commit explicitly)."""

    def __init__(self):
        self._folders: list[Path] = []
        self._files: list[tuple[Path, Path]] = []  # (staged folder for this destination, final path)
        self._adopted: list[tuple[Path, Path]] = []  # (file written elsewhere on the same file system, final)
        self._after: list = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.discard()
        return False

    def path_for(self, final) -> Path:
        """Where to write the file that will become ``final`` (a fresh folder holding only this output, so a
        writer that adds companion files -- a detached header's data file -- has them moved along)."""
        final = Path(final)
        folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=_parent(final)))
        self._folders.append(folder)
        self._files.append((folder, final))
        return folder / final.name

    def adopt(self, written: Path, final, cleanup: Path = None) -> None:
        """Take a file already written elsewhere (same file system as ``final``) as one to move into place;
        ``cleanup``: a folder to remove with the staging folders. ``final``'s folder is created on commit."""
        self._adopted.append((Path(written), Path(final)))
        if cleanup is not None and Path(cleanup) not in self._folders:
            self._folders.append(Path(cleanup))

    def after_commit(self, action) -> None:
        """Run ``action()`` once every file is in place (e.g. removing a previous report's stale files)."""
        self._after.append(action)

    def commit(self) -> list:
        """Move every staged file into place; all-or-nothing. Returns the final paths (companions included)."""
        moves = []  # (staged file, final path)
        for folder, final in self._files:
            for item in sorted(folder.iterdir(), key=lambda p: p.name == final.name):  # the named file last
                moves.append((item, _parent(final) / item.name))
        moves += self._adopted
        done, created = [], []  # (final, backup or None); folders made here
        try:
            for staged, final in moves:
                if not _parent(final).exists():
                    missing = [p for p in [_parent(final), *_parent(final).parents] if not p.exists()]
                    _parent(final).mkdir(parents=True)
                    created += missing
                backup = None
                if os.path.lexists(final):
                    backup = staged.with_name(".previous-" + staged.name)
                    os.replace(final, backup)
                done.append((final, backup))
                os.replace(staged, final)
        except BaseException:
            for final, backup in reversed(done):
                if os.path.lexists(final) and (backup is None or os.path.lexists(backup)):
                    try:
                        os.remove(final)
                    except OSError:
                        pass
                if backup is not None and os.path.lexists(backup):
                    os.replace(backup, final)
            for folder in created:  # deepest first
                try:
                    folder.rmdir()
                except OSError:
                    pass
            self.discard()
            raise
        after, self._after = self._after, []
        self.discard()
        for action in after:
            action()
        return [final for _, final in moves]

    def discard(self) -> None:
        """Remove the staging folders (what was not committed, and the put-aside previous files)."""
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)
        self._folders = []
        self._files = []
        self._adopted = []


def write_text_file(path: Path, text: str) -> None:
    """Write text (UTF-8) to a new file at ``path`` with umask permissions."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
