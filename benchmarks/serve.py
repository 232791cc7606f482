"""Throughput and latency of `stargan-ray serve` against in-process translation.

    .venv/bin/python benchmarks/serve.py --requests 64            # random toy-size model
    .venv/bin/python benchmarks/serve.py --checkpoint CKPT --concurrency 1,8,32

For batching on (--max-batch) and off (max batch 1) the app of `stargan-ray serve` runs on a
loopback port with one Translator replica; at each concurrency C, C client threads send --requests
POST /translate requests in all (one 160 x 120 JPEG, one seeded output each). Reported: requests/s,
p50/p95 latency, the mean requests per generator call, and the overhead ratio: the served time per
C requests (C / requests/s) over one in-process translation of the same C jobs (batching on: one
run_jobs call over them, as the replica batches; off: each job alone), timed with the replica's
thread count. The ratio covers HTTP, multipart parsing, decoding, PNG encoding and Serve's hops.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import free_port
from stargan_ray.inference import Translator, image_to_tensor
from stargan_ray.serve.batching import Job, run_jobs


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")
    return buf.getvalue()


def random_checkpoint(folder: Path, experiment: str, overrides: list[str]) -> Path:
    from stargan_ray.checkpoint import save_checkpoint
    from stargan_ray.config import load_experiment
    from stargan_ray.engine import TrainState

    torch.manual_seed(0)
    return save_checkpoint(TrainState.create(load_experiment(experiment, overrides), "cpu"),
                           folder / "model.pt")


def load(url: str, images: list[bytes], concurrency: int, n: int) -> dict:
    """n requests from `concurrency` threads: requests/s, p50/p95 latency, requests per batch."""
    import requests

    def one(i: int) -> tuple[float, int]:
        t = time.perf_counter()
        r = requests.post(f"{url}/translate", files={"image": ("p.jpg", images[i % len(images)])},
                          data={"domain": "0", "seeds": str(i)}, timeout=600)
        assert r.status_code == 200, r.text
        return time.perf_counter() - t, int(r.headers["x-batch-requests"])

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    lat = sorted(r[0] for r in results)
    return {"rps": n / wall, "p50": lat[len(lat) // 2], "p95": lat[int(0.95 * (len(lat) - 1))],
            "batch": statistics.mean(r[1] for r in results)}


def in_process(tr: Translator, jobs: list[Job], batched: bool, reps: int = 3) -> float:
    """Seconds to translate the jobs in this process, the way the replica would."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        if batched:
            run_jobs(tr, jobs)
        else:
            for job in jobs:
                run_jobs(tr, [job])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="default: a random model of --experiment")
    p.add_argument("--experiment", default="toy")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="for the random model, e.g. model.img_size=128")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    import ray
    from ray import serve

    from stargan_ray.serve import ServeOptions, build_app
    from stargan_ray.train.cluster import start_local_ray

    tmp = tempfile.TemporaryDirectory()
    ckpt = args.checkpoint or str(random_checkpoint(Path(tmp.name), args.experiment,
                                                         args.overrides))
    images = [photo(i) for i in range(8)]
    start_local_ray(4, configure_logging=False, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={
        "log_level": "WARNING"})
    url = f"http://127.0.0.1:{port}"
    torch.set_num_threads(max(1, int(args.cpus_per_replica)))  # as the replica's OMP threads
    rows = []
    for max_batch in (args.max_batch, 1):
        opts = ServeOptions(ckpt, max_batch=max_batch, cpus_per_replica=args.cpus_per_replica)
        serve.run(build_app(opts), name="bench", route_prefix="/")
        load(url, images, 4, 16)  # warm-up: first calls, mean styles, connections
        tr = Translator.from_checkpoint(ckpt, batch_size=max_batch)
        size = tr.img_size
        for c in levels:
            served = load(url, images, c, max(args.requests, c))
            jobs = [Job(image_to_tensor(Image.open(io.BytesIO(images[i % 8])).convert("RGB"),
                                        size).numpy(), 0, [i]) for i in range(c)]
            local = in_process(tr, jobs, batched=max_batch > 1)
            ratio = (c / served["rps"]) / local
            rows.append((max_batch, c, served, local, ratio))
            print(f"max_batch {max_batch:2d}  concurrency {c:2d}: {served['rps']:6.1f} req/s  "
                  f"p50 {served['p50'] * 1000:6.0f} ms  p95 {served['p95'] * 1000:6.0f} ms  "
                  f"{served['batch']:4.1f} req/batch | in-process {c} jobs "
                  f"{local * 1000:6.0f} ms ({c / local:6.1f} req/s)  overhead x{ratio:.2f}",
                  flush=True)
        serve.delete("bench")
    serve.shutdown()
    ray.shutdown()
    model = args.checkpoint or " ".join(["random", args.experiment, *args.overrides])
    print(f"model: {model} ({size} px), "
          f"{args.cpus_per_replica:g} CPU per replica, {args.requests} requests per level")


if __name__ == "__main__":
    main()
