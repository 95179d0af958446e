"""Keeps a long-lived test process under the kernel's limit on memory maps.

Every executable XLA's CPU backend compiles lives in its own few memory
mappings (about 9 for a small jitted function, measured with jax 0.10.2),
and JAX keeps every compiled executable in its caches for as long as the
process lives.  One pytest-xdist worker runs some 700 tests here and
compiles thousands of programs: two test files alone leave 11,000 mappings.
Linux refuses new mappings past ``vm.max_map_count`` (65,530 by default), and
XLA's compiler does not report that refusal: it crashes with SIGSEGV.  That
is how CI lost a worker late in the run, three times in three sessions, each
time in a different test that passes alone.

Before each test, when the process holds more than a third of the allowed
mappings, JAX's caches are cleared (the functions recompile on their next
call; nothing else changes).
"""

import gc
import os

import jax
import pytest

def _map_limit():
  try:
    with open("/proc/sys/vm/max_map_count") as f:
      return int(f.read())
  except (OSError, ValueError):
    return None


_LIMIT = _map_limit()


def _maps_in_use():
  with open(f"/proc/{os.getpid()}/maps") as f:
    return sum(1 for _ in f)


@pytest.fixture(autouse=True)
def _stay_under_the_map_limit():
  if _LIMIT is not None and _maps_in_use() > _LIMIT // 3:
    jax.clear_caches()
    gc.collect()
  yield
