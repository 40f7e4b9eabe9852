"""``python -m diffinfer.cli COMMAND ...``."""
import sys

from . import main

sys.exit(main())
