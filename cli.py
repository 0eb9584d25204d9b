"""Run resdsl from a checkout without installing it: ``python cli.py flops specs/resnet152.yaml``."""

import sys

from resdsl.cli import main

if __name__ == "__main__":
    sys.exit(main())
