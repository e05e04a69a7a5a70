"""``python -m sweeps.manifest verify|sign|key``: check, trust or key an experiment folder's signed state."""

from __future__ import annotations

import argparse
import sys

from fer_core.errors import FerError
from sweeps.state.signing import key_file, load_key, sign_experiment, verify_experiment
from sweeps.state.storage import storage_uri


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sweeps.manifest",
        description="Check or (after you have inspected it) re-sign an experiment folder's state; "
        "'key' creates your signing key (if missing) and prints its path, e.g. before `ray up` copies it.",
    )
    p.add_argument("action", choices=("verify", "sign", "key"))
    p.add_argument("experiment", nargs="?", help="STORAGE/NAME (a folder or a storage URI)")
    args = p.parse_args(argv)
    if args.action != "key" and not args.experiment:
        p.error(
            f"{args.action} needs the experiment folder: python -m sweeps.manifest {args.action} STORAGE/NAME"
        )
    try:
        if args.action == "key":
            load_key(create=True)
            print(key_file())
            return 0
        uri = storage_uri(args.experiment)  # a folder made absolute, a URI as it is
        if args.action == "sign":
            print(f"signed {sign_experiment(uri)} file(s) in {uri} with {key_file()}")
        else:
            verify_experiment(uri)
            print(f"{uri}: every file --resume would load is signed")
    except (FerError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
