"""The test harness itself (tests/conftest.py), on the CPU."""
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def run_pytest(tmp_path, body: str, timeout: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_hang.py").write_text(body)
    env = dict(os.environ, FIG_TEST_TIMEOUT=timeout, PYTHONPATH=str(TESTS))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                           str(tmp_path / "test_hang.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_hung_test_ends_the_run_with_its_stack(tmp_path):
    """A test whose call outlasts FIG_TEST_TIMEOUT ends the process (exit status not 0) with the
    stacks printed, where a hung kernel would otherwise hold the run (and a device session) until
    an outer limit; tests within it pass as usual, and the timer stops with each test's call (a
    fixture's teardown that outlasts the timeout does not end the run)."""
    hung = run_pytest(tmp_path, "import time\n\ndef test_sleeps():\n    time.sleep(30)\n", "1")
    assert hung.returncode != 0
    assert "Timeout" in hung.stderr and "test_sleeps" in hung.stderr, hung.stderr[-2000:]
    within = run_pytest(tmp_path, (
        "import time\nimport pytest\n\n"
        "@pytest.fixture(scope='module')\ndef slow_teardown():\n    yield\n    time.sleep(2)\n\n"
        "def test_quick(slow_teardown):\n    pass\n\n"
        "def test_within(slow_teardown):\n    time.sleep(0.5)\n"), "1.5")
    assert within.returncode == 0 and "2 passed" in within.stdout, within.stdout[-2000:] + within.stderr[-2000:]
