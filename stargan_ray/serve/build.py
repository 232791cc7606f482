"""The Serve application: options, the deployment graph, and the builder for Serve config files.

`stargan-ray serve` calls build_app; `serve run` / `serve deploy` with a config file call
app_builder through its import_path (deploy/serve_config.yaml) with the file's `args`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from ray.serve import Application

from ..config import ExperimentConfig, load_experiment, with_overrides
from ..errors import ConfigError
from .inputs import Limits, token_sha256
from .translator import BATCH_FILL_S, BATCH_WAIT_S, DEFAULT_MAX_BATCH

INGRESS_CPUS = 0.5  # decoding uploads and encoding PNGs; the model is in the Translator
INGRESS_MAX_ONGOING = 256  # it only awaits the Translator, so it can hold many requests
TOKEN_ENV = "STARGAN_RAY_SERVE_TOKEN"
MIN_ONGOING = 32  # requests a Translator replica accepts at least (they queue in its Batcher)


@dataclass(frozen=True)
class ServeOptions:
    """How to serve a checkpoint. cfg None: the replicas read the config stored in it."""

    checkpoint: str
    cfg: ExperimentConfig | None = None
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas instead of a fixed count
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_batch: int = DEFAULT_MAX_BATCH
    batch_wait_s: float = BATCH_WAIT_S  # a batch's wait for more at light load (Batcher)
    batch_fill_s: float = BATCH_FILL_S  # ... and under load
    limits: Limits = field(default_factory=Limits)
    exact_batching: bool = False  # fixed-shape generator calls: outputs independent of batches
    token_sha256: str | None = None  # SHA-256 of the bearer token the API requires; None: open

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_replica > 0 else "cpu"


def scaling(opts: ServeOptions) -> dict[str, Any]:
    """Replica count or autoscaling for the Translator.

    A replica takes up to 2 x max_batch requests (one batch running, the next one filling), and at
    least MIN_ONGOING: with fewer, the rest wait in Serve's router, which retries with a backoff
    (max batch 1 at 32 concurrent requests: 9.3 req/s against 32 at one). Autoscaling aims at one
    full batch queued per replica.
    """
    out: dict[str, Any] = {"max_ongoing_requests": max(2 * opts.max_batch, MIN_ONGOING),
                           "ray_actor_options": {"num_cpus": opts.cpus_per_replica,
                                                 "num_gpus": opts.gpus_per_replica}}
    if opts.autoscale is None:
        out["num_replicas"] = opts.replicas
    else:
        low, high = opts.autoscale
        out["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                     "initial_replicas": max(low, 1),
                                     "target_ongoing_requests": opts.max_batch}
    return out


def build_app(opts: ServeOptions) -> Application:
    from .app import Ingress
    from .translator import TranslatorDeployment

    translator = TranslatorDeployment.options(**scaling(opts)).bind(
        opts.checkpoint, opts.cfg, opts.device, opts.max_batch, opts.batch_wait_s,
        opts.exact_batching, opts.batch_fill_s)
    return Ingress.options(max_ongoing_requests=INGRESS_MAX_ONGOING,
                           ray_actor_options={"num_cpus": INGRESS_CPUS}).bind(
        translator, opts.limits, opts.token_sha256)


def parse_autoscale(text: str) -> tuple[int, int]:
    """--autoscale MIN-MAX: 0 <= MIN <= MAX, MAX >= 1."""
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(text))
    if not match or int(match[2]) < max(int(match[1]), 1):
        raise ConfigError(f"autoscale: expected MIN-MAX replicas such as 1-4 (MAX >= MIN and "
                          f"MAX >= 1), got {text!r}")
    return int(match[1]), int(match[2])


def read_token(token_file: str | None, flag: str = "--token-file") -> str | None:
    """The bearer token from token_file, else from $STARGAN_RAY_SERVE_TOKEN; None when neither."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{flag} {token_file}: cannot read it ({type(err).__name__}: "
                              f"{getattr(err, 'strerror', None) or err})") from None
        where = f"{flag} {token_file}"
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        where = TOKEN_ENV
        if TOKEN_ENV not in os.environ:
            return None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ConfigError(f"{where}: the token must be at least 16 characters without spaces "
                          "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)")
    return token


_ARGS = {"checkpoint", "experiment", "set", "replicas", "autoscale", "gpus_per_replica",
         "cpus_per_replica", "max_batch", "max_bytes", "max_pixels", "max_outputs",
         "max_video_frames", "max_video_seconds", "max_frame_pixels", "exact_batching",
         "token_file", "no_auth"}


def _config_token(args: dict[str, Any]) -> str | None:
    """A config file cannot see the HTTP host (often 0.0.0.0): a token or `no_auth: true`."""
    token = read_token(args.get("token_file"), "serve config args: token_file")
    if token is None and not args.get("no_auth"):
        raise ConfigError(f"serve config args: token_file missing (or ${TOKEN_ENV}); the API "
                          "answers anyone who reaches it without one: give no_auth: true to "
                          "serve it open")
    return None if token is None or args.get("no_auth") else token_sha256(token)


def options_from_args(args: dict[str, Any]) -> ServeOptions:
    """ServeOptions from a config file's `args` (the keys are the command's flags, with _)."""
    unknown = sorted(set(args) - _ARGS)
    if unknown or "checkpoint" not in args:
        problem = f"unknown {', '.join(unknown)}" if unknown else "checkpoint missing"
        raise ConfigError(f"serve config args: {problem}; the keys are {', '.join(sorted(_ARGS))}")
    checkpoint, overrides = str(args["checkpoint"]), list(args.get("set", []))
    cfg = None
    if args.get("experiment"):
        cfg = load_experiment(args["experiment"], overrides)
    elif overrides:
        from ..checkpoint import read_config

        cfg = with_overrides(read_config(checkpoint), overrides)
    token = _config_token(args)
    try:
        limits = Limits(**{k: float(args[k]) if k == "max_video_seconds" else int(args[k])
                           for k in ("max_bytes", "max_pixels", "max_outputs", "max_video_frames",
                                     "max_video_seconds", "max_frame_pixels") if k in args})
        return ServeOptions(
            checkpoint, cfg, replicas=int(args.get("replicas", 1)),
            autoscale=parse_autoscale(args["autoscale"]) if args.get("autoscale") else None,
            gpus_per_replica=float(args.get("gpus_per_replica", 0)),
            cpus_per_replica=float(args.get("cpus_per_replica", 1)),
            max_batch=int(args.get("max_batch", DEFAULT_MAX_BATCH)), limits=limits,
            exact_batching=bool(args.get("exact_batching", False)),
            token_sha256=token)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"serve config args: {err}") from None


def app_builder(args: dict[str, Any]) -> Application:
    """For `serve run stargan_ray.serve.build:app_builder checkpoint=...` and config files."""
    return build_app(options_from_args(args))


def deploy(opts: ServeOptions, name: str, route_prefix: str = "/") -> None:
    """serve.run the app; a deployment that fails (a replica that cannot start) is one UserError
    line naming the failed deployment and the last error its replica raised."""
    from ray import serve

    try:
        serve.run(build_app(opts), name=name, route_prefix=route_prefix)
    except RuntimeError as err:
        if "failed" not in str(err):
            raise
        app = serve.status().applications.get(name)
        failed = [(d, s.message) for d, s in (app.deployments if app else {}).items()
                  if s.message and str(s.status) != "HEALTHY"]
        where, message = failed[0] if failed else ("", str(err))
        where = f"{where} " if where else ""
        raise DeployError(f"serve: deploying {name} failed: {where}{failure_cause(message)}") \
            from None


class DeployError(ConfigError):
    """A replica that does not start: its cause in one line."""


def failure_cause(message: str) -> str:
    """The last `SomeError: text` line of Serve's failure message (it holds the replica's
    traceback), or the message's first line when there is none."""
    causes = re.findall(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$", message, re.M)
    if not causes:
        return message.strip().splitlines()[0] if message.strip() else "no reason given"
    kind, text = causes[-1]
    return f"{text.strip()} ({kind})"
