"""Drive a vLLM server with a load spec and measure client-side TTFT, ITL and throughput.

A small async HTTP load generator (httpx, ``driver``): streaming ``/v1/completions`` requests
whose prompts are lists of random token ids and whose ``max_tokens`` is the sampled output
length with ``ignore_eos`` (so prompt and output lengths are exact). Arrivals are either
closed loop (``concurrency`` workers, each sends its next request when the previous one ends)
or open loop (Poisson arrivals at ``request_rate`` per second, optionally capped at
``concurrency`` requests in flight).

TTFT is the time from sending a request to the first streamed token. Later tokens are grouped
into chunks (the tokens that reached the client together); per request the record keeps the
chunk gaps with the tokens in each chunk, the per-chunk ITL (gap / tokens), TPOT
((e2e - TTFT) / (tokens - 1)) and the longest stall (``results``). What to send
is a ``LoadSpec`` (``spec``; from a workload fingerprint with ``load_spec_from_workload``);
what came back is a ``LoadResult`` of ``RequestRecord``s and its ``LoadSummary``
(``results``; ``summarize`` is pure).
"""

from tuner.errors import LoadError
from tuner.load.driver import (
    StreamEvent,
    _Plan,
    count_token_ids,
    make_client,
    parse_sse_line,
    run_load,
    run_load_sync,
)
from tuner.load.results import (
    COALESCE_SECONDS,
    LoadResult,
    LoadSummary,
    RequestRecord,
    chunk_itls,
    group_chunks,
    records_csv,
    summarize,
)
from tuner.load.spec import (
    HARD_MAX_REQUESTS,
    LENGTH_KINDS,
    MAX_DURATION,
    LengthDist,
    LoadSpec,
    load_spec_from_workload,
)

__all__ = [
    "COALESCE_SECONDS",
    "HARD_MAX_REQUESTS",
    "LENGTH_KINDS",
    "MAX_DURATION",
    "LengthDist",
    "LoadError",
    "LoadResult",
    "LoadSpec",
    "LoadSummary",
    "RequestRecord",
    "StreamEvent",
    "_Plan",
    "chunk_itls",
    "count_token_ids",
    "group_chunks",
    "load_spec_from_workload",
    "make_client",
    "parse_sse_line",
    "records_csv",
    "run_load",
    "run_load_sync",
    "summarize",
]
