"""``python -m reference_platform``."""

import sys

from reference_platform.cli import main

sys.exit(main())
