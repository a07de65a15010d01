"""Starting a whole mesh (the launcher, as `stockmesh up`) for end-to-end tests."""
from __future__ import annotations

import pytest

from meshkit.launcher.harness import MeshFailed, MeshProcess


def start_or_fail(running: MeshProcess) -> MeshProcess:
    """Start the mesh; if it does not come up, stop what did and fail with the launcher's account."""
    try:
        running.start()
    except MeshFailed as exc:
        running.stop()
        pytest.fail(str(exc), pytrace=False)
    return running
