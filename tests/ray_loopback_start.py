"""`ray start` for a worker node that stays on the loopback interface (used by tests/test_cluster.py).

Ray on Linux rewrites 127.0.0.1 into the machine's routed address; with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
it keeps loopback (as it does on single-machine platforms) but then `ray start --address` refuses to add a
worker node. This wrapper lets only that refusal pass, so a test cluster of several nodes on one machine
never listens on, or sends to, anything but 127.0.0.1. Not for real clusters, which have real addresses.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python tests/ray_loopback_start.py start --address=127.0.0.1:PORT ...
"""

import sys
import types

import ray._private.ray_constants as ray_constants
import ray.scripts.scripts as scripts

if __name__ == "__main__":
    assert not ray_constants.ENABLE_RAY_CLUSTER, "run with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
    # scripts.py alone sees "clusters enabled" (its worker-node check); address resolution, in
    # ray._private.services, still sees the loopback setting.
    scripts.ray_constants = types.SimpleNamespace(**{**vars(ray_constants), "ENABLE_RAY_CLUSTER": True})
    sys.argv[0] = "ray"
    sys.exit(scripts.main())
