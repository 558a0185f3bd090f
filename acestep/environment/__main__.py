"""`python -m acestep.environment`: print the environment table; exit 1 when not ready."""

import sys

from acestep.environment.report import main

sys.exit(main())
