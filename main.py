#!/usr/bin/env python
"""``python main.py [flags]`` == ``python train.py [flags]``: the name the older pipeline's torchrun lines use."""

import sys

from strata.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
