"""The command that turns a sweep config into the TrainConfig YAML of one of its trials, at the middle of its
search space (the point the probe trains at), for the library's tools (``fer_core.tools.bench --config``):

    python -m sweeps.trial_config SWEEP.yaml [key=value ...] > trial.yaml

key=value sets any TrainConfig key last (a searched one included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from fer_core.config import config_to_dict, make_config, parse_overrides
from fer_core.errors import FerError
from sweeps.config.settings import load_settings
from sweeps.plan.probe import probe_params
from sweeps.tune.trainable import trial_config


def middle_trial_config(path: str | Path, overrides: dict | None = None) -> dict:
    """The TrainConfig mapping of a trial of the sweep ``path`` at ``probe_params``' middle of its space, with
    ``overrides`` on top. Raises ConfigError (one line naming the file or key) for a bad sweep or key."""
    settings = load_settings(path)
    values = {**trial_config(settings, data=settings.data), **probe_params(settings.search_space)}
    return config_to_dict(make_config({**values, **(overrides or {})}, source=str(path)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sweeps.trial_config", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", help="a sweep YAML, e.g. sweeps/configs/fer2013.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="TrainConfig keys set last")
    args = p.parse_args(argv)
    try:
        cfg = middle_trial_config(args.sweep, parse_overrides(args.overrides))
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(cfg, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
