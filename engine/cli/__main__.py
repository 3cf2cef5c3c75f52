"""``python -m engine.cli``: the headless command line, as ``sidestep`` without the TUI."""

import sys

from engine.cli.main import main

sys.exit(main())
