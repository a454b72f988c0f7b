"""A fingerprint of a directory tree, to prove that a refused command changed nothing."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def tree_state(root: Path) -> dict[str, str]:
    """{relative path: what it is} for everything under `root` but directories: a file's sha256, a link's
    target, a special file's type. Lock files and directories are left out: taking a lock (an empty file
    in a directory made for it) is not a change of state."""
    state: dict[str, str] = {}
    if not root.exists():
        return state
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                state[rel] = "link:" + os.readlink(p)
            elif stat.S_ISDIR(mode) or name.endswith(".lock"):
                continue
            elif stat.S_ISREG(mode):
                state[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                state[rel] = f"special:{stat.S_IFMT(mode)}"
    return state
