"""One routing decision over 10,000 candidate workers, as the handler holds them in memory:
mixed regions, verified (and merely claimed) capabilities, reputations, heartbeats, prices,
free GPUs, warm models. 200 decisions for varied jobs; p50/p99 of each in milliseconds."""
from __future__ import annotations

import random
import statistics
import time
from decimal import Decimal

from chalicelib.market.router import (
    Candidate,
    JobRequirements,
    RoutingPolicy,
    Standing,
    capability,
    rank,
)

WORKERS = 10_000
DECISIONS = 200
SEED = 20_240_601
NOW = 1_750_000_000.0
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1")
JOB_CLASSES = ("media_probe", "ffmpeg_hls", "embed_batch", "generate_small")
MODELS = {"embed_batch": "sentence-transformers/all-MiniLM-L6-v2",
          "generate_small": "proofline/tiny-gpt2"}
RUNTIMES = {"media_probe": "pyav", "ffmpeg_hls": "ffmpeg"}


def candidates(rng: random.Random) -> list[Candidate]:
    pools = [Candidate(worker=f"pool:{name}", region="us-east-1", trusted=True,
                       price_per_unit={jc: Decimal("0.0004") for jc in classes},
                       last_heartbeat=NOW,
                       verified=frozenset({capability("class", jc) for jc in classes}
                                          | {capability("model", m) for m in MODELS.values()}
                                          | {capability("runtime", r) for r in RUNTIMES.values()}),
                       warm_models=frozenset(MODELS.values()), gpus_free=8,
                       gpu_memory_free_mb=80_000, memory_free_mb=512_000)
             for name, classes in (("media", ("media_probe", "ffmpeg_hls")),
                                   ("inference", ("embed_batch", "generate_small")))]
    workers = []
    for n in range(WORKERS - len(pools)):
        classes = rng.sample(JOB_CLASSES, rng.randint(1, 3))
        base_price = rng.randint(100, 2000)
        tokens = {capability("class", jc) for jc in classes}
        tokens |= {capability("model", MODELS[jc]) for jc in classes if jc in MODELS}
        tokens |= {capability("runtime", RUNTIMES[jc]) for jc in classes if jc in RUNTIMES}
        verified = frozenset(t for t in tokens if rng.random() < 0.8)
        gpus = rng.choice((0, 0, 1, 1, 2, 4))
        workers.append(Candidate(
            worker=f"0x{rng.getrandbits(160):040x}",
            region=rng.choice(REGIONS),
            price_per_unit={jc: Decimal(base_price + rng.randint(0, 100)).scaleb(-6)
                            for jc in classes},
            last_heartbeat=NOW - rng.expovariate(1 / 30.0),
            verified=verified, claimed=frozenset(tokens),
            standing={jc: Standing(score=rng.betavariate(6, 2),
                                   recent_timeouts=rng.choice((0.0, 0.0, 0.0, 0.4, 1.7)))
                      for jc in classes if rng.random() < 0.9},
            warm_models=frozenset(MODELS[jc] for jc in classes
                                  if jc in MODELS and rng.random() < 0.3),
            gpus_free=gpus, gpu_memory_free_mb=gpus * rng.choice((16_000, 24_000, 80_000)),
            memory_free_mb=rng.choice((8_000, 32_000, 128_000))))
    return pools + workers


def jobs(rng: random.Random) -> list[JobRequirements]:
    made = []
    for _ in range(DECISIONS):
        jc = rng.choice(JOB_CLASSES)
        made.append(JobRequirements(
            job_class=jc, model=MODELS.get(jc), runtime=RUNTIMES.get(jc),
            requires_gpu=jc == "generate_small", gpu_memory_mb=12_000 if jc == "generate_small"
            else 0, memory_mb=rng.choice((0, 4_000, 16_000)),
            units=Decimal(rng.randint(1, 600)),
            max_price=rng.choice((None, Decimal("0.25"), Decimal("1.00"))),
            input_region=rng.choice((*REGIONS, None)),
            input_bytes=rng.choice((0, 10**6, 2 * 10**9, 50 * 10**9)),
            private=rng.random() < 0.1))
    return made


def run() -> dict[str, float]:
    rng = random.Random(SEED)
    pool = candidates(rng)
    policies = [RoutingPolicy(heartbeat_ttl_s=60, fallback="pool:media"),
                RoutingPolicy(heartbeat_ttl_s=60, redundancy=3, fallback="pool:inference")]
    timings = []
    for i, job in enumerate(jobs(rng)):
        policy = policies[i % len(policies)]
        start = time.perf_counter()
        ranking = rank(job, pool, policy, now=NOW)
        timings.append((time.perf_counter() - start) * 1000)
        assert ranking.chosen
    timings.sort()
    return {"route_10k_workers_p50_ms": statistics.median(timings),
            "route_10k_workers_p99_ms": timings[int(0.99 * (len(timings) - 1))]}


if __name__ == "__main__":
    print(run())
