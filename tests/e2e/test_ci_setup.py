"""docker/ci-setup.sh's choice of a Compose package, against a fake `apt-cache`.

`apt-cache policy PKG | grep -q 'Candidate: [0-9]'` under `set -o pipefail`
missed docker-compose most of the time: grep -q exits at the match, apt-cache
dies of SIGPIPE writing the rest, and the pipeline fails with 141.  The fake
prints the Candidate line followed by ~300 KB, more than a pipe holds, so that
pipeline would fail every time here.  No Docker, no network.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "ci-setup.sh"
TRIES = 20


def policy(package: str, candidate: str) -> str:
    table = "".join(f"     1.{n}-1 500\n        500 http://mirror.invalid/debian bookworm/main amd64 Packages\n"
                    for n in range(3000))
    return f"{package}:\n  Installed: (none)\n  Candidate: {candidate}\n  Version table:\n{table}"


@pytest.fixture
def fake_apt(tmp_path: Path) -> Path:
    """A folder for `apt-cache`: `apt-cache policy PKG` prints PKG.policy from it (nothing if absent)."""
    (tmp_path / "apt-cache").write_text('#!/bin/sh\n[ -f "$(dirname "$0")/$2.policy" ] || exit 0\n'
                                        'exec cat "$(dirname "$0")/$2.policy"\n')
    (tmp_path / "apt-cache").chmod(0o755)
    return tmp_path


def bash(fake_apt: Path, commands: str) -> subprocess.CompletedProcess:
    """Run `commands` in bash under `set -euo pipefail` with ci-setup.sh's functions."""
    env = dict(os.environ, PATH=f"{fake_apt}{os.pathsep}{os.environ['PATH']}")
    script = f'set -euo pipefail\nsource "{SCRIPT}"\n{commands}\n'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)


def test_the_fake_apt_cache_is_killed_by_an_early_grep(fake_apt: Path) -> None:
    """The precondition: the old pipeline fails (141) against this fake."""
    (fake_apt / "docker-compose.policy").write_text(policy("docker-compose", "1.29.2-3"))
    old = bash(fake_apt, "apt-cache policy docker-compose | grep -q 'Candidate: [0-9]' || exit $?")
    assert old.returncode == 141, (old.returncode, old.stderr)


def test_a_package_with_a_candidate_is_found_every_time(fake_apt: Path) -> None:
    (fake_apt / "docker-compose.policy").write_text(policy("docker-compose", "1.29.2-3"))
    result = bash(fake_apt, f"for i in $(seq {TRIES}); do candidate_available docker-compose || echo missed; done")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("missed") == 0, f"missed {result.stdout.count('missed')} of {TRIES} times"


def test_no_candidate_or_no_package_is_not_available(fake_apt: Path) -> None:
    (fake_apt / "docker-compose-v2.policy").write_text(policy("docker-compose-v2", "(none)"))
    result = bash(fake_apt, "for p in docker-compose-v2 no-such-package; do\n"
                            "    if candidate_available $p; then echo \"$p: available\"; else echo \"$p: none\"; fi\n"
                            "done")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["docker-compose-v2: none", "no-such-package: none"]


def test_compose_package_takes_the_first_installable_one(fake_apt: Path) -> None:
    # bookworm: no v2 plugin (one listed without a candidate, one unknown), docker-compose 1.29
    (fake_apt / "docker-compose-v2.policy").write_text(policy("docker-compose-v2", "(none)"))
    (fake_apt / "docker-compose.policy").write_text(policy("docker-compose", "1.29.2-3"))
    picks = bash(fake_apt, f"for i in $(seq {TRIES}); do compose_package; done")
    assert picks.returncode == 0, picks.stderr
    assert picks.stdout.split() == ["docker-compose"] * TRIES

    # a release with the plugin: it wins
    (fake_apt / "docker-compose-plugin.policy").write_text(policy("docker-compose-plugin", "2.20.2+ds1-1"))
    assert bash(fake_apt, "compose_package").stdout.split() == ["docker-compose-plugin"]


def test_compose_package_fails_when_apt_has_none(fake_apt: Path) -> None:
    result = bash(fake_apt, "compose_package")
    assert result.returncode == 1 and result.stdout == "", (result.returncode, result.stdout)


def test_sourcing_defines_the_functions_and_runs_nothing(fake_apt: Path) -> None:
    """Sourcing must stop before the setup steps (no apt-get, no dockerd, no builds)."""
    result = bash(fake_apt, "declare -F candidate_available compose_package")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["candidate_available", "compose_package"]
    assert "[ci-setup]" not in result.stderr, result.stderr
