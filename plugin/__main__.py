"""``python -m deaot_vos``: see ``plugin/cli.py``."""
import sys

from .cli import main

sys.exit(main())
