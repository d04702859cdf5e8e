"""How the ``gamesense`` process starts: the memory allocator must be chosen before anything is allocated, so
the command restarts itself once with jemalloc preloaded.

jemalloc is what PyTorch's CPU performance guide recommends in place of glibc's heap. Measured on a 2-core
CPU, 300 LoRA steps of the default recipe: glibc's heap grew from 4.2 to 6.3 GB peak while steps slowed from
782 to 633 tokens/s (fragmentation, even when trimmed every 10 steps); with jemalloc the peak stayed at
5.0 GB and steps at 790-850 tokens/s. ``make setup`` unpacks Debian's ``libjemalloc2`` into the virtual
environment (no root needed); a system-wide jemalloc is used too. ``GAMESENSE_ALLOCATOR=system`` turns this off.

jemalloc gives freed pages back to the system after 10 s by default, and a training step frees and allocates the
same few GB again: the kernel then zeroes and maps them anew (a ``make demo`` run: 312M minor page faults, 23%
of its CPU time in the kernel). Keeping freed pages for 60 s (:data:`JEMALLOC_CONF`, unless ``MALLOC_CONF`` is
set) measured side by side on the Intel Xeon AMX machine, 100 SFT steps of the default recipe, two runs each,
alternating: 672 -> 720 non-pad tokens/s (+7%), kernel time 103 -> 87 s, page faults 45M -> 39M, peak RSS
5.19 -> 5.31 GB. PyTorch's guide setting (``oversize_threshold:1,background_thread:true,...``, never
returning pages) gave 708 tokens/s.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

ALLOCATOR_ENV = "GAMESENSE_ALLOCATOR"
#: jemalloc settings when the environment gives none: keep freed pages 60 s before returning them (see above)
JEMALLOC_CONF = "dirty_decay_ms:60000,muzzy_decay_ms:60000"


def find_jemalloc() -> str | None:
    """Path of a jemalloc shared library: the one ``make setup`` unpacked into the virtual environment
    (``<venv>/jemalloc/usr/lib/<arch>/libjemalloc.so.2``), else a system-wide one; None if there is none."""
    patterns = [
        str(Path(sys.prefix) / "jemalloc" / "usr" / "lib" / "*" / "libjemalloc.so.2"),
        "/usr/lib/*/libjemalloc.so.2",
        "/usr/lib64/libjemalloc.so.2",
        "/usr/local/lib/libjemalloc.so.2",
    ]
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def prepare_process(argv: list[str] | None = None) -> None:
    """On Linux, when a jemalloc library is found and not yet loaded, restart this command with it in
    ``LD_PRELOAD`` (same process id, same arguments).

    The OpenMP wait policy is left as it is: ``OMP_WAIT_POLICY=PASSIVE`` made training alone ~25% slower
    (benchmarks/cpu_contention.py); contention is handled by the thread count instead (``runtime.threads``).
    Does nothing to a process that already has PyTorch loaded (an in-process test run of the CLI).
    """
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return
    if os.environ.get(ALLOCATOR_ENV, "jemalloc") == "system":
        return
    preload = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload:
        return
    library = find_jemalloc()
    if library is None:
        return
    env = {**os.environ, "LD_PRELOAD": f"{library}:{preload}" if preload else library, ALLOCATOR_ENV: "jemalloc",
           "MALLOC_CONF": os.environ.get("MALLOC_CONF", JEMALLOC_CONF)}  # fmt: skip
    args = sys.argv[1:] if argv is None else argv
    # Run again as it was started (the console script, or -m gamesense): ZenML finds the source root from it.
    script = ["-m", "gamesense"] if Path(sys.argv[0]).name == "__main__.py" else [sys.argv[0]]
    os.execve(sys.executable, [sys.executable, *script, *args], env)
