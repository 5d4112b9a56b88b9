"""The README's first command, after installation: the main job on the embedded default.

1. generate the tiny Llama model (random weights, locally trained tokenizer);
2. start a real vLLM CPU server on it, and the sidecar (`tuner run`) scraping it;
3. drive a load (the tuner's own async client) for a while;
4. show what the sidecar sees (`tuner status`), then stop both;
5. run a short `tuner tune` with examples/tune-cpu.yaml (canaries only).

Everything runs on loopback; every process it starts is stopped, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.common import free_port, stop_process, wait_http  # noqa: E402
from tests.support.tiny_model import ensure_tiny_model  # noqa: E402
from tests.support.vllm import start_vllm  # noqa: E402
from tuner.load import LengthDist, LoadSpec, run_load_sync, summarize  # noqa: E402


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-seconds", type=float, default=40.0)
    parser.add_argument("--tune-trials", type=int, default=4)
    parser.add_argument("--no-tune", action="store_true")
    args = parser.parse_args()
    work = REPO / ".cache" / "demo"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))

    banner("1/5 tiny model")
    model = ensure_tiny_model()
    print(model)

    banner("2/5 vLLM CPU server + sidecar")
    canary = start_vllm(model, log_path=work / "vllm.log", cores="1",
                        flags={"max-num-seqs": 32, "num-gpu-blocks-override": 48})
    handle = canary.handle
    print(f"vLLM at {handle.url} (log {handle.log_path})")
    port = free_port()
    cfg = work / "tuner.yaml"
    (work / "tuner.db").unlink(missing_ok=True)
    cfg.write_text(
        "targets:\n"
        f"  - {{name: vllm-0, url: '{handle.metrics_url}', kind: vllm}}\n"
        "scrape_interval: 2s\n"
        "store: {path: tuner.db, retention: 1d}\n"
        f"listen: 127.0.0.1:{port}\n"
    )
    log = (work / "tuner.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "tuner", "run", "--config", str(cfg)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, daemon, work / "tuner.log")
        print(f"sidecar at http://127.0.0.1:{port}/metrics, store {work / 'tuner.db'}")

        banner(f"3/5 load: 16 concurrent streams for {args.load_seconds:g}s")
        spec = LoadSpec(prompt_tokens=LengthDist("uniform", low=128, high=384),
                        output_tokens=LengthDist("uniform", low=64, high=256),
                        concurrency=16, duration=args.load_seconds, max_requests=2000, seed=1)
        summary = summarize(run_load_sync(handle.url, "tiny-llama", spec))
        print(f"{summary.requests} requests, {summary.errors} errors, "
              f"{summary.output_tok_per_s:,.0f} output tok/s, TTFT p99 {summary.ttft_p99:.3f}s, "
              f"ITL p99 {summary.itl_p99 * 1000:.0f} ms (client side)")
        time.sleep(3)  # one more scrape after the load

        banner("4/5 what the sidecar sees: tuner status")
        subprocess.run([sys.executable, "-m", "tuner", "status", "--config", str(cfg)],
                       check=True)
    finally:
        stop_process(daemon)
        log.close()
        canary.stop()

    if args.no_tune:
        return 0
    banner(f"5/5 tuner tune: {args.tune_trials} trials on canaries (examples/tune-cpu.yaml)")
    env = {**os.environ, "TUNER_TINY_MODEL_DIR": str(model)}
    tune_cfg = REPO / "examples" / "tune-cpu.yaml"
    shutil.rmtree(work / "tune", ignore_errors=True)  # the demo's own previous search
    return subprocess.run(
        [sys.executable, "-m", "tuner", "tune", "--config", str(tune_cfg),
         "--trials", str(args.tune_trials), "--out", str(work / "tune")],
        env=env, check=False,
    ).returncode


if __name__ == "__main__":
    raise SystemExit(main())
