"""``python -m plugin``: see ``plugin/cli.py``."""
import sys

from .cli import main

sys.exit(main())
