"""dni/lifetime.py: children and descendants are found, a child dies with its parent, exit_now flushes and exits."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from dni.lifetime import alive, children, descendants

# A middle process that starts a grandchild which asks to die with it, prints the grandchild's pid, then waits.
MIDDLE = textwrap.dedent("""
    import subprocess, sys, time
    from dni.lifetime import die_with_parent
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=die_with_parent)
    print(child.pid, flush=True)
    time.sleep(60)
""")


def _wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_children_and_descendants_find_a_grandchild_which_dies_with_its_parent():
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(middle.stdout.readline())
        assert middle.pid in children(os.getpid())
        assert "-c" in children(os.getpid())[middle.pid]
        assert {middle.pid, grandchild} <= descendants({os.getpid()})
        assert grandchild not in children(os.getpid())
        assert alive(grandchild)
        middle.kill()
        middle.wait()
        assert _wait_until(lambda: not alive(grandchild)), "the grandchild outlived its SIGKILLed parent"
    finally:
        middle.kill()
        middle.wait()
    assert not alive(middle.pid)


def test_exit_now_flushes_what_was_printed_and_exits_with_the_code():
    code = "import sys; from dni.lifetime import exit_now; sys.stdout.write('unflushed'); exit_now(7)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (7, "unflushed")


def test_die_with_parent_exits_at_once_when_the_named_parent_is_already_gone():
    code = "from dni.lifetime import die_with_parent; die_with_parent(parent=1); print('survived')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (1, "")
