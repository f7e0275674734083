"""Process settings every recozoo program starts with: thread settings, warnings, logging.

Entry points (``train.py`` and every ``python -m recozoo.*``) call `configure_process` *before*
anything imports torch: the OpenMP runtime that torch loads reads ``OMP_WAIT_POLICY`` once, when
it is loaded. This module imports nothing heavy for that reason.

* `THREAD_SETTINGS`: on a small machine shared with other busy processes, torch's OpenMP
  threads spin while they wait for work and steal the cores the work needs (a bpr epoch on the
  shop took 5-9 s instead of about 1 s with one other busy process on 2 cores). Passive waiting
  costs little on a quiet machine, except to work made of many tiny parallel regions, such as
  a GRU's steps: torch's GNU OpenMP spins 1,000 rounds before it sleeps
  (``GOMP_SPINCOUNT``). OpenBLAS's threads, which spin ~0.1 s after each of its calls, sleep
  after ~0.4 ms (``OPENBLAS_THREAD_TIMEOUT``). A value the user set is kept.
* `MEMORY_SETTINGS`: Arrow's default allocator (mimalloc) served the first Parquet write of
  each evaluation stage slowly, doubling bpr's test stage on ml-100k; Arrow uses the system's.
* `reuse_freed_memory`: glibc's malloc returned every large freed block to the system, so the
  next batch's tensors came back as fresh pages that the kernel faulted in one at a time
  (~29,000 faults in each sasrec scoring of ml-100k's test batch). Blocks up to 32 MiB now stay
  with the process and are reused.
* `STARTUP_FULL_COLLECTION_EVERY` and `long_lived_heap`: Python's cyclic garbage collector
  walked the libraries' ~510,000 objects at every full collection, while they were imported
  (~0.6 s of every program's start) and during a job.
* `QUIET_WARNINGS` and `QUIET_LIGHTNING`: warnings raised inside libraries, and Lightning log
  messages, that a user of recozoo cannot act on (README "Troubleshooting" lists them).
* `quiet_lightning_logs`: Lightning adds its own console handler beside the root logger's
  (Hydra's), so every Lightning message was printed twice; and it advertises its cloud
  products at every run.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
import os
import sys
import warnings
from collections.abc import Iterator

#: environment variables set for the process unless the user set them. OpenBLAS (NumPy's and
#: SciPy's, which run EASE's and ItemKNN's co-occurrence and EASE's inverse) keeps its threads
#: spinning for 2^28 cycles (~0.1 s) after each call, where they take the cores from torch's
#: threads: a top-20 of ml-100k's scores took 5.3-6 ms right after SciPy's inverse against
#: 2.8-3.1 idle. With 2^20 cycles (~0.4 ms at 2.5 GHz), on ml-100k, 3 alternating runs each:
#: ItemKNN's fit 0.052-0.054 s against 0.069-0.081 and its validation 0.039-0.040 against
#: 0.053-0.055; EASE's validation 0.034-0.036 against 0.046-0.051, its fit (the inverse
#: included) as before (0.059-0.067 against 0.059-0.062); 2^4 made the inverse slower (53-65
#: ms against 36-42)
#: torch's huge pages for large tensors (``THP_MEM_ALLOC_ENABLE=1``) are not set: they cut the
#: page faults of an evaluation batch's fresh score matrix (46,601 -> 611 for 1,024 x 46,600), but
#: the 10^5 shop's bpr test stage took 0.38-0.55 s against 0.34-0.40 (3 alternating runs each)
#: and the 10^6 shop's was within noise (12.1-12.6 s against 12.4-13.1; 2026-12-06)
#: GNU OpenMP (the libgomp torch's Linux wheels load) spins ``GOMP_SPINCOUNT`` rounds before
#: its threads sleep, which overrides the wait policy's none (Intel's OpenMP ignores it and stays
#: passive). A GRU over 943 histories of 50 items (nn.GRU, 100 units, 2 threads): 99-107 ms
#: passive, 66-68 with 1,000 rounds, 58-59 with 10,000 or with the default policy (300,000);
#: beside one busy process 112, 116-124, 230 and 1,009 ms. gru4rec's ml-100k validation 113-117
#: -> 79-82 ms and test stage 121-124 -> 88-90 (2 alternating runs); sasrec's, bpr's, ease's
#: and multvae's evaluation and multvae's epoch within noise (2026-12-06)
THREAD_SETTINGS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000",
                                   "OPENBLAS_THREAD_TIMEOUT": "20"}

#: environment variables set for the process unless the user set them, read by the libraries
#: when they first allocate: Arrow's (pyarrow's) allocator, which builds every Parquet file a
#: run writes and reads. With its default on Linux, mimalloc, the first Parquet write of an
#: evaluation stage (ml-100k's top 100 lists, 94,300 rows) took 23-27 ms instead of 4-6 (in a
#: bare script, a process's first write 30 ms against 6), so bpr's test stage on ml-100k (train.py,
#: 3 epochs) took 38-41 ms in 19 runs of 21 (19-20 in two) against 17-21 ms in 5 of 5 with the
#: system allocator (jemalloc: 18 and 20 ms). On the 10^6 shop the test stage was level (4.74-
#: 4.91 s against 4.70-4.77) and preparing the data faster (2.28-2.38 s against 2.01-2.07;
#: Online Retail's 1.70-1.72 against 1.56-1.59); the 10^7 shop's data level (31.4-32.1 s against
#: 30.5-31.2, peak RSS 2.96-3.00 GB against 3.06); alternating runs, 2026-12-07
MEMORY_SETTINGS: dict[str, str] = {"ARROW_DEFAULT_MEMORY_POOL": "system"}

#: glibc's malloc serves blocks below this size from its heap, where freed memory is reused by the
#: next allocation, and larger ones from a mapping of their own, returned to the system when
#: freed and faulted in again page by page when the next one is written (32 MiB is the most glibc
#: accepts; its own threshold starts at 128 KiB and grows only as blocks are freed) ...
MALLOC_MMAP_THRESHOLD = 32 << 20
#: ... and it returns the free memory at the top of its heap to the system once that exceeds
#: this (glibc: twice the threshold above, which made the heap shrink and fault in again
#: between batches)
MALLOC_TRIM_THRESHOLD = 512 << 20
#: the user's own malloc settings, which `reuse_freed_memory` leaves alone
_MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)

#: the garbage collector's thresholds as Python sets them, before `configure_process`
PYTHON_GC_THRESHOLD: tuple[int, int, int] = gc.get_threshold()
#: how many young-generation collections a full one waits for once a program has started
#: (Python: 10). Importing torch, Lightning, transformers and pandas leaves ~510,000 objects,
#: and each full collection on the way walked all of them: importing recozoo.train took
#: 4.18-4.28 s against 3.60-3.66 with 1000 (3 alternating runs each; 3.47-3.49 with the
#: collector off). Cycles that become garbage while young still die in the young generations'
#: collections, which keep their thresholds; those that outlive them wait longer for a full one.
#: A training job runs with Python's thresholds over a frozen heap (`long_lived_heap`).
STARTUP_FULL_COLLECTION_EVERY = 1000

#: (message regex, why a user cannot act on it): warnings filtered out in every program
QUIET_WARNINGS: tuple[tuple[str, str], ...] = (
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated",
     "Lightning 2.6 calls a torch 2.13 API that torch deprecated; fixed by a Lightning release"),
    (r"(?s).*is validated against ConfigStore schema",
     "conf/hydra/launcher/*.yaml replace the launcher plugins' defaults on purpose"),
    (r".*does not have many workers which may be a bottleneck",
     "the in-memory datasets need no loader workers (data.num_workers sets them)"),
    (r".*`LightningModule.configure_optimizers` returned `None`",
     "closed-form models (pop, itemknn, ease) fit in one step without an optimiser"),
    (r".*The number of training batches \(\d+\) is smaller than the logging interval",
     "tiny datasets log once per epoch, which is what is wanted"),
)

#: (message start, why a user cannot act on it): Lightning log messages dropped in every program
QUIET_LIGHTNING: tuple[tuple[str, str], ...] = (
    ("💡 Tip:", "Lightning's advertisements (\"try installing litlogger / litmodels\")"),
    ("The following callbacks returned in `LightningModule.configure_callbacks` will override",
     ("a model returns its own callbacks (weight average, training threads) for each fit, "
      "validate and test, and each replaces the previous stage's on purpose")),
)
_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero",
                      "lightning.fabric.utilities.rank_zero")


def openmp_waits_passively() -> bool:
    """Whether torch's OpenMP threads sleep between parallel regions (``OMP_WAIT_POLICY`` is
    PASSIVE, `THREAD_SETTINGS`' default): each region then pays for waking them, which a routine
    made of many short regions (a blocked matrix inverse, a small model's step) feels."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


#: a core's L2 cache where the system does not say (`l2_cache_bytes`): the smallest of today's
#: common server and laptop cores (AMD Zen 2-4, Intel Skylake-SP and later have 1-2 MiB)
DEFAULT_L2_CACHE_BYTES = 1 << 20


@functools.cache
def l2_cache_bytes() -> int:
    """Bytes of one core's level-2 data cache, as Linux describes CPU 0's caches in sysfs
    (`cache_size_from_sysfs`); `DEFAULT_L2_CACHE_BYTES` where it does not (another system, a
    container without sysfs)."""
    size = cache_size_from_sysfs("/sys/devices/system/cpu/cpu0/cache", level=2)
    return DEFAULT_L2_CACHE_BYTES if size is None else size


def cache_size_from_sysfs(folder: str, level: int) -> int | None:
    """Bytes of the data (or unified) cache of ``level`` among a CPU's ``index*/`` cache
    descriptions in sysfs (``level``, ``type`` and ``size`` files, the size such as "2048K");
    None where there is none or it cannot be read."""
    try:
        indexes = sorted(name for name in os.listdir(folder) if name.startswith("index"))
    except OSError:
        return None
    for index in indexes:  # the folder also holds other entries (a "uevent" file)
        path = os.path.join(folder, index)
        try:
            with open(os.path.join(path, "level")) as found_level, \
                    open(os.path.join(path, "type")) as kind, \
                    open(os.path.join(path, "size")) as size:
                if (found_level.read().strip() == str(level)
                        and kind.read().strip() in ("Unified", "Data")):
                    text = size.read().strip().upper()
                    scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
                    return int(text.rstrip("KM")) * scale
        except (OSError, ValueError):
            continue  # an unreadable description: look at the others
    return None


def available_memory() -> int | None:
    """Bytes of memory this process can still take: the kernel's MemAvailable (free memory plus
    the page cache it can reclaim), lowered to what a cgroup v2 limit leaves (a container or a
    SLURM job); None where neither can be read (not Linux)."""
    available = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as limit, \
                open("/sys/fs/cgroup/memory.current") as used:
            text = limit.read().strip()
            if text != "max":
                left = int(text) - int(used.read().strip())
                available = left if available is None else min(available, left)
    except (OSError, ValueError):
        pass
    return available


def configure_process() -> None:
    """Thread settings, Arrow's allocator (`MEMORY_SETTINGS`), freed memory kept for reuse
    (`reuse_freed_memory`), the garbage collector's full-collection threshold
    (`STARTUP_FULL_COLLECTION_EVERY`) and warning filters of a recozoo program; call it first.

    Sets each of `THREAD_SETTINGS` and `MEMORY_SETTINGS` the user has not set (in
    ``os.environ``, so child processes such as DDP ranks, loader workers and the serving workers
    inherit them), and ignores `QUIET_WARNINGS`. Idempotent. Called after torch is imported, the
    OpenMP setting reaches child processes only; called after pyarrow first allocated, Arrow's.
    """
    for name, value in {**THREAD_SETTINGS, **MEMORY_SETTINGS}.items():
        os.environ.setdefault(name, value)
    reuse_freed_memory()
    young, middle, _full = PYTHON_GC_THRESHOLD
    gc.set_threshold(young, middle, STARTUP_FULL_COLLECTION_EVERY)
    for message, _why in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)  # Lightning gets the same object when it is imported
        if not any(isinstance(f, _DropQuiet) for f in logger.filters):
            logger.addFilter(_DropQuiet())


def reuse_freed_memory() -> bool:
    """Keep freed blocks of up to `MALLOC_MMAP_THRESHOLD` bytes in the process for reuse (glibc's
    ``mallopt``), so the tensors of one batch after another are written into memory that is
    already there instead of pages the kernel faults in one by one. True where set: not where
    the C library is not glibc, nor where the user set glibc's malloc through its environment
    (``MALLOC_*_`` or ``GLIBC_TUNABLES``), which glibc read when the process started.

    The process keeps what it freed, up to its peak, and the peak moved little: sasrec's
    train.py on ml-100k 0.90-0.95 GB before and after; generating the 10^6 shop 0.81 -> 0.91
    GB; bpr at 10^7 3.40-3.42 GB both (its epoch 3-7% slower in four of five alternating pairs
    and 6% faster in one: docs/benchmarks.md). Blocks above the threshold, such as a batch's
    scores over the 10^6 shop's 46,600 items, are still mapped and returned one by one.

    In one process on ml-100k (2 threads, 2 alternating runs each): sasrec's test batch scored
    with ~29,000 page faults in 71-83 ms, and with none in 48-52; its validation 82-88 -> 69-70
    ms, its test stage 92-102 -> 80-82 and its epoch 2.1-2.3 -> 1.9-2.0 s; gru4rec's validation
    84 -> 74-76 ms, its test stage 96-98 -> 85 and its epoch 2.0-2.2 -> 1.8-1.9 s; bpr's, ease's
    and multvae's, whose tensors were already reused, within noise."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in tunables or any(name in os.environ for name in _MALLOC_ENVIRONMENT):
        return False
    if not sys.platform.startswith("linux"):  # glibc's; ctypes.CDLL(None) fails on Windows
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- present in glibc only (musl, macOS: absent)
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Within: torch's CPU operations run on one thread; the process's count is restored on
    exit. For work made of many small operations, each of which would otherwise wake a second
    thread (``OMP_WAIT_POLICY=PASSIVE``) and, beside another busy thread, wait for it: an
    evaluation batch's metrics, after the scores' product and top-K (which two threads do
    faster). ml-100k's bpr in one process, 7 alternating runs of 15 stages each (medians of
    the runs' medians): validation 11.8 ms against 13.4 (every run faster), test stage (its
    lists written on a thread beside the metrics) 22.8 ms against 24.7 (6 of 7 faster); ease's
    and multvae's within noise; the 10^6 shop's bpr test stage 4.93-5.19 s against 4.91-5.03."""
    import torch  # here: this module is imported before torch (see the module docstring)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def long_lived_heap() -> Iterator[None]:
    """Within: every object alive on entry (the ~500,000 that importing torch, Lightning,
    transformers and pandas leaves) is out of reach of Python's cyclic garbage collector
    (``gc.freeze``), so a full collection walks only what the job allocated since.

    Full collections walked the whole heap each time: 8 of them in a bpr run on ml-100k took
    0.82 s together, one 0.2 s, and one inside an evaluation made EASE's in-fit validation 0.26 s
    instead of 0.05. Garbage is collected first, so none is frozen with the rest; within, the
    collector runs with Python's own thresholds (`PYTHON_GC_THRESHOLD`) over what the job
    allocates. On exit the objects are handed back (``gc.unfreeze``) and the thresholds are
    what they were, so in a multirun that runs its jobs in one process the next job can free
    this one's cycles (a trainer and its module refer to each other).
    """
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*PYTHON_GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


class _DropQuiet(logging.Filter):
    """Drops the Lightning messages of `QUIET_LIGHTNING`."""

    starts = tuple(start for start, _why in QUIET_LIGHTNING)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


class _Once(logging.Filter):
    """Drops a record whose message this filter has already let through (Lightning restores the
    same checkpoint for validation and test and says so each time)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def quiet_lightning_logs() -> None:
    """Each Lightning message once, through the root logger's handlers (Hydra's console and
    ``train.log``); call after Lightning is imported and logging is configured, once per run.

    Removes the console handler Lightning adds to its ``lightning`` logger when the root
    logger has a handler of its own (without one, Lightning's handler is the only output and
    stays), and starts a fresh repeat filter on Lightning's message loggers, so that a message
    repeated within one run (a checkpoint restored for validation, then for test) is shown once,
    while the next job of a sweep in the same process shows its own messages again.
    """
    configure_process()
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:  # Lightning's own console handler
                    logger.removeHandler(handler)
            logger.propagate = True
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _Once)]:
            logger.removeFilter(old)
        logger.addFilter(_Once())


def setup_command_logging(level: int = logging.INFO) -> None:
    """Logging of a ``python -m recozoo.*`` command: plain messages on stderr, each once."""
    logging.basicConfig(level=level, format="%(message)s")
    quiet_lightning_logs()
