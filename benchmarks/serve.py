"""Throughput and latency of `stargan-ray serve` against in-process translation.

    .venv/bin/python benchmarks/serve.py --requests 64            # random toy-size model
    .venv/bin/python benchmarks/serve.py --checkpoint CKPT --concurrency 1,8,32

For batching on (--max-batch, with each --batch-fill wait under load: the app's 100 ms and the
10 ms of a replica at light load, i.e. no fill wait) and off (max batch 1) the app of `stargan-ray
serve` runs on a loopback port with one Translator replica and default flags otherwise; at each
concurrency C, C
client threads (each with its own keep-alive session, as a real client) send --requests POST
/translate requests in all (one 160 x 120 JPEG, one seeded output each). Reported: requests/s,
p50/p95 latency, requests per generator call (requests over the distinct X-Batch-Id values the
responses name), and the overhead ratio: the served time per C requests (C / requests/s) over one
in-process translation of the same C jobs (batching on: one run_jobs call over them, as the
replica batches; off: each job alone), timed with the replica's thread count. From the replica
(TranslatorDeployment.batch_stats): the fraction of the time its generator ran, and how long a
request waited there for its call and how long a call took, against the mean latency the client
saw; then GET /healthz at the top concurrency, the HTTP path without the model.

Then the lone-request bar (--lone-experiment, default afhq at 256 px, random weights): one request
for one output through a fresh app with default flags, against the generator call for that image
in this process (same thread count), medians of --lone-reps; bar: at most 1.5x. Bars at the end:
requests per call at concurrency 32 >= max_batch / 2, and requests/s at 32 >= 2x at 1.
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
from stargan_ray.serve.translator import BATCH_FILL_S, BATCH_WAIT_S


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
    """n requests from `concurrency` threads: requests/s, p50/p95 latency, requests per call."""
    import threading

    import requests

    local = threading.local()

    def one(i: int) -> tuple[float, int]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        t = time.perf_counter()
        r = local.session.post(f"{url}/translate", files={"image": ("p.jpg", images[i % len(
            images)])}, data={"domain": "0", "seeds": str(i)}, timeout=600)
        assert r.status_code == 200, r.text
        return time.perf_counter() - t, int(r.headers["x-batch-id"])

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    lat = sorted(r[0] for r in results)
    return {"rps": n / wall, "p50": lat[len(lat) // 2], "p95": lat[int(0.95 * (len(lat) - 1))],
            "mean": statistics.mean(lat), "batch": n / len({r[1] for r in results})}


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


def ema_only_checkpoint(folder: Path, experiment: str, overrides: list[str]) -> Path:
    """A random model as serving reads it (config and EMA networks only: a 256 px TrainState with
    optimisers would be a 1 GB file)."""
    from stargan_ray.checkpoint import FORMAT
    from stargan_ray.config import load_experiment
    from stargan_ray.models import build_networks

    cfg = load_experiment(experiment, overrides)
    torch.manual_seed(0)
    nets = build_networks(cfg.model)
    path = folder / f"{experiment}.pt"
    torch.save({"format": FORMAT, "config": cfg.to_dict(), "nets_ema": {
        name: getattr(nets, name).state_dict()
        for name in ("generator", "mapping_network", "style_encoder")}}, path)
    return path


def lone_request(url: str, ckpt: Path, reps: int) -> tuple[float, float]:
    """(served seconds, in-process generator seconds) for one output of one request, medians."""
    import requests

    from stargan_ray.serve import ServeOptions, build_app
    from ray import serve

    serve.run(build_app(ServeOptions(str(ckpt))), name="lone", route_prefix="/")
    jpeg = photo(0)
    session = requests.Session()
    served = []
    for i in range(reps + 1):  # the first is a warm-up
        t = time.perf_counter()
        r = session.post(f"{url}/translate", files={"image": ("p.jpg", jpeg)},
                         data={"domain": "0", "seeds": str(i)}, timeout=600)
        assert r.status_code == 200 and r.headers["x-batch-requests"] == "1", r.text
        served.append(time.perf_counter() - t)
    serve.delete("lone")
    tr = Translator.from_checkpoint(ckpt)
    x = image_to_tensor(Image.open(io.BytesIO(jpeg)).convert("RGB"), tr.img_size)[None]
    s = tr.latent_styles(0, [0])
    local = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        tr.generate(x, s)
        local.append(time.perf_counter() - t)
    return statistics.median(served[1:]), statistics.median(local[1:])


def stats(app: str, reset: bool = True) -> dict:
    """The replica's batching.BatchStats summary since the last reset."""
    from ray import serve

    handle = serve.get_deployment_handle("Translator", app_name=app)
    return handle.batch_stats.remote(reset).result()


def http_path(url: str, concurrency: int, n: int) -> float:
    """GET /healthz per second at `concurrency`: the HTTP path (client, proxy, ingress) alone."""
    import threading

    import requests

    local = threading.local()

    def one(_: int) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        assert local.session.get(f"{url}/healthz", timeout=600).status_code == 200

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - start)


def levels_table(url: str, ckpt: str, args, images: list[bytes]) -> list[tuple]:
    """Each (max_batch, wait, fill, concurrency) level: served figures, where a request waited
    and the in-process comparison."""
    from ray import serve

    from stargan_ray.serve import ServeOptions, build_app

    rows = []
    setups = [(args.max_batch, args.batch_wait, f) for f in args.fills] + [(1, 0.0, 0.0)]
    for max_batch, wait, fill in setups:
        opts = ServeOptions(ckpt, max_batch=max_batch, cpus_per_replica=args.cpus_per_replica,
                            batch_wait_s=wait, batch_fill_s=fill)
        serve.run(build_app(opts), name="bench", route_prefix="/")
        load(url, images, 4, 16)  # warm-up: first calls, mean styles, connections
        tr = Translator.from_checkpoint(ckpt, batch_size=max_batch)
        for c in args.levels:
            stats("bench")
            served = load(url, images, c, max(args.requests, c))
            served.update(replica=stats("bench"))
            jobs = [Job(image_to_tensor(Image.open(io.BytesIO(images[i % 8])).convert("RGB"),
                                        tr.img_size).numpy(), 0, [i]) for i in range(c)]
            local = in_process(tr, jobs, batched=max_batch > 1)
            rows.append((max_batch, wait, fill, c, served))
            print_level(max_batch, wait, fill, c, served, local)
        if max_batch == 1 and args.levels:
            c = max(args.levels)
            print(f"HTTP path alone, GET /healthz at concurrency {c}: "
                  f"{http_path(url, c, max(args.requests, c)):6.1f} req/s", flush=True)
        serve.delete("bench")
    return rows


def print_level(max_batch: int, wait: float, fill: float, c: int, served: dict,
                local: float) -> None:
    rep = served["replica"]
    setup = f"max_batch {max_batch:2d} wait {wait * 1000:3.0f} fill {fill * 1000:3.0f} ms" \
        if max_batch > 1 else f"max_batch {max_batch:2d}{'':21s}"
    print(f"{setup}  c {c:2d}: {served['rps']:6.1f} req/s  "
          f"p50 {served['p50'] * 1000:5.0f} p95 {served['p95'] * 1000:5.0f} ms  "
          f"{served['batch']:4.1f} req/call | replica: generator busy {rep['busy']:4.0%}, "
          f"queued {rep['queued_s'] * 1000:4.0f} + call {rep['call_s'] * 1000:4.0f} ms of "
          f"{served['mean'] * 1000:5.0f} | in-process {c} jobs {c / local:6.1f} req/s  "
          f"overhead x{(c / served['rps']) / local:.2f}", flush=True)


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
    p.add_argument("--batch-wait", type=float, default=BATCH_WAIT_S,
                   help="a batch's wait for more after a request that found the replica idle "
                        "(the default is the app's)")
    p.add_argument("--batch-fill", default=f"{BATCH_FILL_S},{BATCH_WAIT_S}",
                   help="a batch's wait for more under load, values to compare (the default: the "
                        "app's, and the wait at light load as before, i.e. no longer wait)")
    p.add_argument("--lone-experiment", default="afhq",
                   help="the lone-request bar's random model ('' skips it)")
    p.add_argument("--lone-reps", type=int, default=3)
    args = p.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    args.fills = [float(f) for f in args.batch_fill.split(",")]

    import ray
    from ray import serve

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
    rows = levels_table(url, ckpt, args, images) if args.levels else []
    lone = None
    if args.lone_experiment:
        lone = lone_request(url, ema_only_checkpoint(Path(tmp.name), args.lone_experiment, []),
                            args.lone_reps)
    serve.shutdown()
    ray.shutdown()
    model = args.checkpoint or " ".join(["random", args.experiment, *args.overrides])
    print(f"model: {model}, {args.cpus_per_replica:g} CPU per replica, "
          f"{args.requests} requests per level")
    report_bars(rows, lone, args)


def report_bars(rows: list[tuple], lone: tuple[float, float] | None, args) -> None:
    on = {c: served for mb, wait, fill, c, served in rows
          if mb == args.max_batch and wait == BATCH_WAIT_S and fill == BATCH_FILL_S}
    if 32 in on:
        fill = on[32]["batch"]
        print(f"bar: requests per call at concurrency 32 {fill:.1f} >= max_batch / 2 = "
              f"{args.max_batch / 2:g}: {'PASS' if fill >= args.max_batch / 2 else 'FAIL'}")
    if 32 in on and 1 in on:
        gain = on[32]["rps"] / on[1]["rps"]
        print(f"bar: req/s at concurrency 32 / at 1 = {gain:.2f} >= 2: "
              f"{'PASS' if gain >= 2 else 'FAIL'}")
    if lone:
        ratio = lone[0] / lone[1]
        print(f"bar: one request, one {args.lone_experiment} output (random weights): served "
              f"{lone[0]:.3f} s / in-process generator {lone[1]:.3f} s = {ratio:.2f} <= 1.5: "
              f"{'PASS' if ratio <= 1.5 else 'FAIL'}")


if __name__ == "__main__":
    main()
