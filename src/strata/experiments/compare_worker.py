"""One comparison run in its own interpreter: `strata train`, then `strata eval` on the held-out source.

``python -m strata.experiments.compare_worker RUN.json`` is what ``strata compare --jobs N`` starts per run (see
compare_protocol.run_all); ``train_in_process`` is the same two steps for ``--jobs 1``. One interpreter for both
steps, because importing transformers and TRL costs ~10 s per process on these CPUs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["main", "train_in_process"]


def train_in_process(argv: list[str], transfer: list[str], folder: Path) -> None:
    from strata.config import parse_run_config
    from strata.evaluation.cli import run_eval
    from strata.training.run import train

    train(parse_run_config(argv))
    if transfer:
        run_eval([str(folder), *transfer, "--output", str(folder / "transfer.json")])


def main(args: list[str] | None = None) -> int:
    """Read {"argv", "transfer", "folder"} from the JSON file named on the command line and run it."""
    import os

    from strata.errors import StrataError

    spec = json.loads(Path((args or sys.argv[1:])[0]).read_text())
    # As `strata` sets it (strata.cli imports this layer, so its setup is not imported here); the worker's
    # console is its log file, so the console log filter does not matter.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        train_in_process(spec["argv"], spec["transfer"], Path(spec["folder"]))
    except StrataError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
