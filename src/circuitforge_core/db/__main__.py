"""``python -m circuitforge_core.db`` runs the cf-db command line."""

import sys

from .cli import main

sys.exit(main())
