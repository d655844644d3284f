"""``python -m fitnets_fast ...``: the ``fitnets-fast`` command line."""
import sys

from .cli import main

sys.exit(main())
