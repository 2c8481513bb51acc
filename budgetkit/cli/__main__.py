"""``python -m budgetkit.cli ARGS`` is ``budgetkit ARGS``."""

import sys

from budgetkit.cli import main

sys.exit(main())
