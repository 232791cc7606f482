"""`stargan-ray serve`: a checkpoint behind a Ray Serve app (web page and HTTP API).

Joins the cluster in RAY_ADDRESS or starts a local Ray instance, deploys the app on --host and
--port, and keeps serving until Ctrl+C. On a cluster each Translator replica reads the checkpoint
itself: give a path that every node can read (shared file system) or an s3:// / gs:// URI.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import time

from ..errors import ConfigError
from .common import add_model_source_args, nonnegative_float, positive_float, positive_int

APP_NAME = "stargan-ray"


def autoscale_range(text: str) -> tuple[int, int]:
    from ..serve.build import parse_autoscale

    try:
        return parse_autoscale(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("autoscale: ")) from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve a model over HTTP with Ray Serve: web page and /translate API",
        description="Serve a checkpoint with Ray Serve: a web page at /, POST /translate, "
                    "GET /domains and GET /healthz. Concurrent requests are batched on each "
                    "replica without changing any output.")
    add_model_source_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 for every interface (default: %(default)s)")
    p.add_argument("--port", type=positive_int, default=8000, help="(default: %(default)s)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=positive_int, default=1,
                       help="model replicas (default: %(default)s)")
    scale.add_argument("--autoscale", type=autoscale_range, metavar="MIN-MAX",
                       help="let Serve scale the model replicas between MIN and MAX with load")
    p.add_argument("--gpus-per-replica", type=nonnegative_float, default=0.0,
                   help="GPUs per model replica, fractions allowed; > 0 runs on cuda "
                        "(default: %(default)s)")
    p.add_argument("--cpus-per-replica", type=positive_float, default=1.0,
                   help="CPUs per model replica; torch uses that many threads "
                        "(default: %(default)s)")
    p.add_argument("--max-batch", type=positive_int, default=16,
                   help="requests batched into one generator call per replica; 1 turns "
                        "batching off (default: %(default)s)")
    p.set_defaults(func=run)


def serve_options(args: argparse.Namespace):
    """ServeOptions from the flags; the replicas read the checkpoint's own config when no
    --experiment or --set replaces it."""
    from ..dashboards import checkpoint_source
    from ..serve import ServeOptions
    from ..storage import is_uri
    from .common import model_config

    # wandb://: the artifact's s3:// / gs:// object when it references one, else the fetched file
    args.checkpoint = checkpoint_source(args.checkpoint, keep_references=True)
    path = args.checkpoint or args.official_checkpoint
    if not is_uri(path) and not os.path.exists(path):
        raise ConfigError(f"serve: checkpoint {path}: no such file")
    cfg = None
    if args.official_checkpoint or args.experiment or args.overrides:
        cfg, path = model_config(args, "serve")
    return ServeOptions(path, cfg, replicas=args.replicas, autoscale=args.autoscale,
                        gpus_per_replica=args.gpus_per_replica,
                        cpus_per_replica=args.cpus_per_replica, max_batch=args.max_batch)


def run(args: argparse.Namespace) -> int:
    import ray

    try:
        if importlib.util.find_spec("multipart") is None:  # python-multipart: the form parser
            raise ImportError(name="python-multipart")
        from ray import serve

        from ..serve import build_app
    except ImportError as err:
        raise ConfigError(f"serve: {err.name or err} is missing; install the serve extra: "
                          "pip install 'stargan-ray[serve]'") from None
    from ..train.cluster import start_local_ray

    opts = serve_options(args)
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(configure_logging=False)
        else:
            replicas = opts.autoscale[1] if opts.autoscale else opts.replicas
            needed = math.ceil(replicas * opts.cpus_per_replica + 1)
            start_local_ray(max(os.cpu_count() or 1, needed), configure_logging=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(opts), name=APP_NAME, route_prefix="/")
    print(f"stargan-ray serve: http://{args.host}:{args.port}/ (Ctrl+C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0
