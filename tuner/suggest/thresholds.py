"""The thresholds of ``tuner suggest``, each documented where it is defined.

One place for every number a finding or a recommendation compares against, so the README's
rule table and the code cannot drift apart quietly. A condition *counts* (is significant) when
it held for at least three evaluation steps and at least 10 minutes or 5% of the covered
window, whichever is shorter (``WindowView.significant``).
"""

from __future__ import annotations

KV_SATURATED = 0.95  # KV usage at or above this is "full"
KV_HEADROOM = 0.80  # below this the cache has room for more sequences
PREEMPT_PER_1000 = 10.0  # preemptions per 1000 requests that count as a problem
GPU_LOW_UTIL = 30.0  # % median GPU utilization that, with no queue, is over-provisioning
GPU_BUSY_UTIL = 85.0  # % above which the GPU has no headroom for a larger batch
FB_FREE_FOR_UP = 0.03  # free device memory (fraction) needed to raise gpu-memory-utilization
FB_FREE_CRITICAL = 0.01  # less free device memory than this is an OOM risk
SPEC_MIN_LENGTH = 1.5  # mean acceptance length below which drafting costs more than it saves
SPEC_LOW_RATE = 0.5  # acceptance rate below which fewer speculative tokens pay better
SPEC_LARGE_BATCH = 64  # median running batch at which speculation stops paying
MODEL_LEN_SHARE = 0.5  # observed prompt+output below this share of max-model-len is "never near"
SIGNIFICANT_STEPS = 3  # a condition must hold for at least this many evaluation steps...
SIGNIFICANT_SECONDS = 600.0  # ...and this long, or
SIGNIFICANT_SHARE = 0.05  # ...this share of the covered window, whichever is shorter
QUEUE_DEEP_MIN = 2.0  # a queue this long or longer (and at least the running batch) is "deep"
SPEC_BATCH_SPREAD = 0.15  # acceptance differing this much between batch sizes "depends" on them
SPEC_OFF_RATE = 0.2  # acceptance below this at a batch size: no speculation there (K = 0)
#: Running-batch-size ranges a num_speculative_tokens schedule is measured over.
SPEC_BATCH_BINS = ((1, 4), (5, 16), (17, 64), (65, 256), (257, 1024), (1025, 4096))
