"""``python -m deaot_vos``: see ``plugin/cli/``."""
import sys

from .cli import main

sys.exit(main())
