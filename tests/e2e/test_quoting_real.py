"""The ExecStart quoting function, checked by the real systemd: it must hand the program
exactly the argv we rendered, for every awkward character."""

from __future__ import annotations

import json
import shutil
import sys
import uuid

from nativellm.serve.units import Section, UnitFile, exec_line, quote_env, render
from tests.e2e.sandbox import Sandbox
from tests.helpers import CACHE

NASTY = [
    "plain",
    "with space",
    "",
    'double"quote',
    "single'quote",
    "back\\slash",
    "trailing\\",
    "100%",
    "%i %n %%",
    "$HOME",
    "${HOME}",
    "$$",
    ";",
    "a;b",
    "tab\there",
    "new\nline",
    "ünïcödé ✓",
    "-leading-dash",
    "@at",
    "'",
    '"',
    "{}[]()<>|&*?~#!",
]


def test_systemd_receives_exact_argv(sandbox: Sandbox) -> None:
    out_dir = CACHE / "quoting" / uuid.uuid4().hex[:8]
    out_dir.mkdir(parents=True)
    out_file = out_dir / "argv.json"
    dump = "import json,os,sys; open(sys.argv[1],'w').write(json.dumps({'argv': sys.argv[2:], 'env': os.environ['NASTY']}))"
    argv = [sys.executable, "-I", "-c", dump, str(out_file), *NASTY]
    env_value = "a b \"c\" 'd' $X %n \\ ;"
    unit = UnitFile(
        (
            Section("Unit", (("Description", "quoting check"),)),
            Section(
                "Service",
                (
                    ("Type", "oneshot"),
                    ("ExecStart", exec_line(argv)),
                    ("Environment", quote_env("NASTY", env_value)),
                ),
            ),
        )
    )
    sandbox.host_path("/etc/systemd/system/nativellm-quoting.service").write_text(render(unit))
    sandbox.systemctl("daemon-reload")
    res = sandbox.systemctl("start", "nativellm-quoting.service", check=False)
    assert res.returncode == 0, sandbox.journal("-u", "nativellm-quoting.service") + res.stderr
    got = json.loads(out_file.read_text())
    shutil.rmtree(out_dir)
    assert got["argv"] == NASTY
    assert got["env"] == env_value
