"""`stargan-ray serve`: a checkpoint behind a Ray Serve app (web page and HTTP API).

Joins the cluster in RAY_ADDRESS or starts a local Ray instance, deploys the app on --host and
--port, and keeps serving until Ctrl+C (exit 130). Before Ray starts it opens and checks the
checkpoint, resolves the token and tries the bind, so that those mistakes are one line. On a
cluster each Translator replica reads the checkpoint itself: give a path that every node can read
(shared file system) or an s3:// / gs:// URI.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import ipaddress
import math
import os
import socket
import sys
import time

from ..errors import ConfigError
from .common import (add_model_source_args, add_wait_arg, nonnegative_float, positive_float,
                     positive_int)

APP_NAME = "stargan-ray"


def autoscale_range(text: str) -> tuple[int, int]:
    from ..serve.build import parse_autoscale

    try:
        return parse_autoscale(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("autoscale: ")) from None


def port_number(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 1 to 65535, got {text!r}")
    return int(text)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve a model over HTTP with Ray Serve: web page and /translate API",
        description="Serve a checkpoint with Ray Serve: a web page at /, POST /translate, "
                    "GET /domains and GET /healthz. Concurrent requests are batched on each "
                    "replica (a request's pixels may differ by rounding with its batch; "
                    "--exact-batching keeps them identical).")
    add_model_source_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 for every interface, which needs a token "
                        "or --no-auth (default: %(default)s)")
    p.add_argument("--port", type=port_number, default=8000, help="(default: %(default)s)")
    p.add_argument("--token-file", help="a file holding the bearer token the API requires "
                                        "(default: $STARGAN_RAY_SERVE_TOKEN when set)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve a non-loopback address without a token: anyone who reaches it "
                        "may use it")
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
    add_wait_arg(p, "replica")
    p.add_argument("--max-batch", type=positive_int, default=16,
                   help="requests batched into one generator call per replica; 1 turns "
                        "batching off (default: %(default)s)")
    p.add_argument("--exact-batching", action="store_true",
                   help="pad every generator call to --max-batch rows, so that no output "
                        "depends on its batch (a lone request then costs a full batch)")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    """Every address the host name resolves to is a loopback one."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_bind(host: str, port: int) -> None:
    """Try the bind Serve's proxy will do, so that a bad host or a busy port is one line now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"--host {host}: not an address of this machine ({err})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(address)
        except OSError as err:
            why = ("the port is in use (another server, or an earlier serve still running)"
                   if err.errno == errno.EADDRINUSE else err.strerror or str(err))
            raise ConfigError(f"--host {host} --port {port}: cannot listen there: {why}") \
                from None


def token_hash(args: argparse.Namespace) -> str | None:
    """SHA-256 of the token the API will require; a non-loopback host needs one or --no-auth."""
    from ..serve.build import TOKEN_ENV, read_token
    from ..serve.inputs import token_sha256

    token = read_token(args.token_file)
    if token is None and not args.no_auth and not is_loopback(args.host):
        raise ConfigError(f"--host {args.host}: answers anyone who can reach it; give a token "
                          f"(--token-file FILE or ${TOKEN_ENV}) or --no-auth to serve it open")
    return None if token is None else token_sha256(token)


def serve_options(args: argparse.Namespace):
    """ServeOptions from the flags, the checkpoint opened and checked on this machine; the
    replicas read the checkpoint's own config when no --experiment or --set replaces it."""
    from ..checkpoint import load_ema_networks
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
    if not is_uri(path):  # a URI is read by each replica; its errors come from the deployment
        load_ema_networks(path, cfg, "cpu")
    return ServeOptions(path, cfg, replicas=args.replicas, autoscale=args.autoscale,
                        gpus_per_replica=args.gpus_per_replica,
                        cpus_per_replica=args.cpus_per_replica, max_batch=args.max_batch,
                        exact_batching=args.exact_batching, token_sha256=token_hash(args))


def run(args: argparse.Namespace) -> int:
    try:
        if importlib.util.find_spec("multipart") is None:  # python-multipart: the form parser
            raise ImportError(name="python-multipart")
        import ray  # noqa: F401
        from ray import serve  # noqa: F401

        from ..serve import build_app  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"serve: {err.name or err} is missing; install the serve extra: "
                          "pip install 'stargan-ray[serve]'") from None
    opts = serve_options(args)
    check_bind(args.host, args.port)
    started = not os.environ.get("RAY_ADDRESS")
    run_processes: dict[int, str] = {}  # pid -> start time of every process below this one
    try:
        start_and_wait(args, opts, run_processes)
    except KeyboardInterrupt:
        print("stargan-ray serve: stopped (Ctrl+C); shutting down", file=sys.stderr, flush=True)
        stop(started, run_processes)
        return 130
    except BaseException:
        stop(started, run_processes)
        raise
    return 0


def start_and_wait(args: argparse.Namespace, opts, run_processes: dict[int, str]) -> None:
    import ray

    from ..serve.build import deploy
    from ..train.capacity import serve_request, wait_for_capacity
    from ..train.cluster import start_local_ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(configure_logging=False)
        else:
            replicas = opts.autoscale[1] if opts.autoscale else opts.replicas
            needed = math.ceil(replicas * opts.cpus_per_replica + 1)
            start_local_ray(max(os.cpu_count() or 1, needed), configure_logging=False)
    # replicas no node can ever hold: one line at once; ones for an autoscaler: up to --wait
    wait_for_capacity(serve_request(opts), args.wait, note=lambda line: print(line, flush=True))
    from ray import serve

    serve.start(http_options={"host": args.host, "port": args.port})
    deploy(opts, APP_NAME)
    auth = "" if opts.token_sha256 is None else "; the API needs the bearer token"
    print(f"stargan-ray serve: http://{args.host}:{args.port}/ (Ctrl+C stops){auth}", flush=True)
    while True:
        # Ctrl+C in a terminal reaches Ray's processes too, and a worker whose raylet ends first
        # leaves this tree: remember the run's processes while they are still below this one.
        run_processes.update(descendants(os.getpid()))
        time.sleep(30)


def stop(started_ray: bool, run_processes: dict[int, str]) -> None:
    """Shut Serve down, and with it a local Ray instance this command started; then end every
    process the run left behind (Ray's agents outlive their raylet by up to minutes)."""
    import ray
    from ray import serve

    if started_ray:
        run_processes.update(descendants(os.getpid()))
    try:
        if ray.is_initialized():
            serve.shutdown()
    finally:
        if started_ray:
            ray.shutdown()
            end_processes(run_processes)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ..., start time)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every process below pid (Linux /proc; elsewhere none are known)."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        fields = _stat(int(entry)) if entry.isdigit() else None
        if fields:
            parents.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    out, todo = {}, [pid]
    while todo:
        for child, start in parents.get(todo.pop(), []):
            out[child] = start
            todo.append(child)
    return out


def end_processes(processes: dict[int, str], grace_s: float = 10.0) -> None:
    """SIGTERM what is still alive of these processes (all started by this run; a pid counts
    only with its recorded start time, never a reused one), SIGKILL after grace_s."""
    import signal

    def alive(pid: int) -> bool:
        fields = _stat(pid)
        return bool(fields) and fields[0] != "Z" and fields[19] == processes[pid]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in filter(alive, list(processes)):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while any(map(alive, processes)) and time.monotonic() < deadline:
            time.sleep(0.1)


__all__ = ["add_parser", "run"]
