"""Test set-up: 8 simulated CPU devices, so sharding runs on a 2x2x2 mesh.

The flag must be set before jax is first imported, which is why it lives here.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
