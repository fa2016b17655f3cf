"""Train an algorithm: `python train.py ALGO [--field value ...]`.

    python train.py --help                          # the algorithms
    python train.py cqlsac --help                   # every config field: type, default, meaning
    python train.py cqlsac --env walker-walk --online

Flags are parsed into the algorithm's frozen Config and checked (unknown names, wrong types,
invalid choices) before anything is built or trained.
"""

from __future__ import annotations

import importlib
import sys

import envs  # noqa: F401  first: process setup (headless GL, CPU dispatch) before JAX starts
from algorithms import ALGORITHMS
from algorithms.common import CheckpointError, ConfigError, config_help, parse_config
from datasets import DatasetError

USAGE = "usage: python train.py ALGO [--field value ...]   (python train.py ALGO --help for the fields)"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\nalgorithms:")
        for name, summary in ALGORITHMS.items():
            print(f"  {name:8s} {summary}")
        return 0
    algo, flags = argv[0], argv[1:]
    if algo not in ALGORITHMS:
        print(f"error: unknown algorithm {algo!r}; choose one of: {', '.join(ALGORITHMS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"algorithms.{algo}")
    if "-h" in flags or "--help" in flags:
        print(f"usage: python train.py {algo} [--field value ...]\n\n{ALGORITHMS[algo]}\n\nfields:")
        print(config_help(module.Config))
        return 0
    try:
        config = parse_config(module.Config, flags)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        finals = module.train(config)
    except (ConfigError, DatasetError, CheckpointError) as exc:  # e.g. a corrupt --prior-from or resume checkpoint
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for final in finals:
        print(f"final evaluation: return {final['mean']:.1f} +- {final['std']:.1f}, "
              f"normalized {final['normalized_score']:.1f} over {final['episodes']} episodes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
