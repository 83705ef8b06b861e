#!/usr/bin/env python
"""``python train.py [flags]`` == ``strata train [flags]``."""

import sys

from strata.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
