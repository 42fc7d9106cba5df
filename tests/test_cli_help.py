"""The ``deaot-vos`` help: fast (the top level imports neither torch nor FiftyOne), named as the
command a user types, and complete (every option of every subcommand says what it does; no
"(default: None)")."""
from __future__ import annotations

import argparse
import subprocess
import sys


def test_top_level_help_imports_neither_torch_nor_fiftyone():
    code = ("import sys, io, contextlib; from deaot_vos.cli import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    try: main(['--help'])\n"
            "    except SystemExit: pass\n"
            "heavy = sorted(m for m in ('torch', 'fiftyone', 'numpy', 'cv2', 'decord') if m in sys.modules)\n"
            "print(repr(heavy)); print(out.getvalue())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    heavy, _, text = done.stdout.partition("\n")
    assert heavy == "[]", heavy
    assert text.startswith("usage: deaot-vos ") and "python -m deaot_vos" not in text
    for command in ("propagate", "suggest", "evaluate", "compare", "export-vos", "import-vos", "demo", "train"):
        assert f"    {command}" in text


def test_every_option_of_every_subcommand_has_help():
    from deaot_vos.cli import build_parser

    parser = build_parser("*")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert command.prog == f"deaot-vos {name}"
        missing = [a.option_strings[0] for a in command._actions if a.option_strings and a.dest != "help" and not a.help]
        assert not missing, f"deaot-vos {name}: no help for {missing}"
        text = command.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, f"deaot-vos {name}"
    suggest = sub.choices["suggest"].format_help()
    assert "(default: 5)" in suggest and "(default: 3)" in suggest
