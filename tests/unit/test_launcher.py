"""coordinator/pools/launcher.py (without processes): the socket folder of a coordinator that is gone is removed by the next."""
from __future__ import annotations

import json
import socket

from dni.coordinator.pools.launcher import remove_abandoned_socket_folders
from dni.lifetime import OWNER, claim


def test_socket_folders_of_coordinators_that_are_gone_are_removed_and_the_rest_kept(tmp_path):
    gone, alive, unmarked, other = (tmp_path / name for name in ("dni-gone", "dni-alive", "dni-unmarked", "other-gone"))
    for folder in (gone, alive, unmarked, other):
        folder.mkdir()
        (folder / "stage0").write_text("a socket file")
    for folder in (gone, other):
        (folder / OWNER).write_text(json.dumps({"pid": 2 ** 22 + 1, "host": socket.gethostname()}))
    claim(alive)
    remove_abandoned_socket_folders(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dni-alive", "dni-unmarked", "other-gone"]
