"""The ``sidestep`` command line: one argparse parser for every subcommand, plain-text output, and the
headless commands. The top layer of the engine: it may import every other part; nothing imports it."""
