"""Run one real sweep trial under a local Ray and record what it starts (used by tests/test_runtime.py).

    python tests/trial_share_probe.py DATA OUT_JSON [ray_cpus] [trial_cpus]

The trial is ``sweeps.tune.trainable.fer_trainable`` itself, wrapped so that a sampler thread can count, while it
trains, the trial process's threads and child processes (DataLoader workers); at the end it records the
sizes of the thread pools (torch intra-op and inter-op, OpenCV). Ray is started with more logical CPUs
than the machine has, as on a big node where a trial gets a small share.
"""

import dataclasses
import json
import os
import sys
import threading
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1


def probed_trainable(params, base, out_json):
    import cv2
    import psutil
    import torch

    from sweeps.tune.trainable import fer_trainable

    me, peak, done = psutil.Process(), {"threads": 0, "children": 0}, threading.Event()
    baseline = me.num_threads()

    def sample():
        while not done.wait(0.05):
            peak["threads"] = max(peak["threads"], me.num_threads())
            peak["children"] = max(peak["children"], len(me.children(recursive=True)))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fer_trainable(params, base)
    finally:
        done.set()
        t.join()
        import ray

        Path(out_json).write_text(
            json.dumps(
                {
                    "assigned_cpus": ray.get_runtime_context().get_assigned_resources().get("CPU"),
                    "baseline_threads": baseline,
                    "peak_threads": peak["threads"] - 1,  # minus the sampler itself
                    "peak_children": peak["children"],
                    "torch_threads": torch.get_num_threads(),
                    "torch_interop_threads": torch.get_num_interop_threads(),
                    "cv2_threads": cv2.getNumThreads(),
                }
            )
        )


def main(data, out_json, ray_cpus=16, trial_cpus=1):
    import ray
    from ray import tune

    from sweeps.config.settings import SweepSettings
    from sweeps.tune.trainable import trial_config

    train = dataclasses.replace(
        SweepSettings().train,
        img_size=32,
        batch_size=8,
        steps_per_epoch=3,
        eval_batch_size=64,
        aug_strength=0.5,
    )
    # threads 0: the share must come from the trial's Ray allocation itself, not from the driver
    base = {**trial_config(SweepSettings(train=train), data=data), "epochs": 1, "threads": 0}
    # address="local": a Ray of its own, never a cluster another test (or user) recorded as current
    ray.init(address="local", num_cpus=int(ray_cpus), include_dashboard=False, configure_logging=False)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(probed_trainable, base=base, out_json=out_json), {"cpu": int(trial_cpus)}
        )
        storage = str(Path(out_json).resolve().parent / "ray_results")
        grid = tune.Tuner(
            trainable,
            param_space={"lr": 1e-3},
            run_config=tune.RunConfig(storage_path=storage, name="probe", verbose=0),
        ).fit()
        if grid.errors:
            raise SystemExit(f"trial failed: {grid.errors[0]}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
