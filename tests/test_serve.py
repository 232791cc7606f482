"""`stargan-ray serve`: request checks and batching in plain torch, then a real Serve app on
loopback answering real HTTP (a photo-like image, every bad input, the bearer token, 32
concurrent requests batched and within rounding of the same requests one at a time)."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from stargan_ray.inference import MAX_SEED, Translator, image_to_tensor, latent_codes, to_pixels
from stargan_ray.serve.batching import Job, run_jobs
from stargan_ray.serve.inputs import BadRequest, Limits, parse_seed, parse_seeds

from .helpers import free_port

S = 32
DOMAINS = ["circle", "square", "triangle"]  # the synthetic set's names for 3 domains
MAX_BATCH = 8
FILL_S = 5.0
LIMITS = {"max_bytes": 300_000, "max_pixels": 1_000_000, "max_outputs": 6,
          "max_video_frames": 12, "max_video_seconds": 2.0, "max_frame_pixels": 64 * 64}
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def photo_bytes(size=(160, 120), seed=0, fmt="JPEG") -> bytes:
    """A photo-like picture: smooth colour gradients, a bright disc and sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.stack([0.6 * xx + 0.2, 0.5 * yy + 0.3 * xx, 0.8 - 0.5 * yy], -1)
    disc = (xx - 0.5 - 0.1 * rng.random()) ** 2 + (yy - 0.35) ** 2 < 0.04
    img[disc] = [0.95, 0.85, 0.7]
    img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------- plain torch, no Ray


def test_seeds_parse_like_translate_and_refuse_bad_values():
    limits = Limits(max_outputs=6)
    assert parse_seeds("3,0-2, 1", limits) == [3, 0, 1, 2]
    assert parse_seeds(None, limits) == [0]
    for bad, why in [("x", "non-negative integers"), ("-1", "non-negative integers"),
                     ("3-1", "runs downwards"), ("0-99", "7 is"), (str(2**64), "largest seed"),
                     ("0-4000000000", "more than the limit")]:
        with pytest.raises(BadRequest, match=why if why != "7 is" else "100 outputs"):
            parse_seeds(bad, limits)


def test_the_largest_seed_is_the_last_with_a_code_of_its_own():
    """inference.MAX_SEED bounds translate's --seeds and the API's seeds and seed alike: torch's
    generator keeps 32 bits of a seed, so a larger one would repeat a smaller one's style."""
    limits = Limits(max_outputs=6)
    assert parse_seeds(f"{MAX_SEED - 1}-{MAX_SEED}", limits) == [MAX_SEED - 1, MAX_SEED]
    assert parse_seed(str(MAX_SEED)) == MAX_SEED
    with pytest.raises(BadRequest, match=f"{MAX_SEED + 1} is above the largest seed {MAX_SEED}"):
        parse_seeds(str(MAX_SEED + 1), limits)
    with pytest.raises(BadRequest, match=f"seed: expected one non-negative integer up to "
                                         f"{MAX_SEED}"):
        parse_seed(str(MAX_SEED + 1))
    codes = latent_codes([5, 5 + MAX_SEED + 1, MAX_SEED, 0], 16)
    assert torch.equal(codes[0], codes[1])  # what a seed past MAX_SEED would give
    assert not torch.equal(codes[2], codes[3])


def test_config_files_need_a_token_or_no_auth(tmp_path, monkeypatch):
    """A Serve config file cannot see its HTTP host (deploy/serve_config.yaml binds 0.0.0.0)."""
    from stargan_ray.errors import ConfigError
    from stargan_ray.serve.build import options_from_args
    from stargan_ray.serve.inputs import token_sha256

    monkeypatch.delenv("STARGAN_RAY_SERVE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="token_file missing.*no_auth: true"):
        options_from_args({"checkpoint": "c.pt"})
    assert options_from_args({"checkpoint": "c.pt", "no_auth": True}).token_sha256 is None
    (tmp_path / "token").write_text(TOKEN + "\n")
    opts = options_from_args({"checkpoint": "c.pt", "token_file": str(tmp_path / "token"),
                              "exact_batching": True})
    assert opts.token_sha256 == token_sha256(TOKEN) and opts.exact_batching
    monkeypatch.setenv("STARGAN_RAY_SERVE_TOKEN", TOKEN)
    assert options_from_args({"checkpoint": "c.pt"}).token_sha256 == token_sha256(TOKEN)
    clips = options_from_args({"checkpoint": "c.pt", "max_video_frames": 50,
                               "max_video_seconds": "2.5"}).limits
    assert (clips.max_video_frames, clips.max_video_seconds) == (50, 2.5)


def test_batched_jobs_equal_each_job_alone_with_exact_batching(checkpoint):
    """--exact-batching: fixed-shape generator calls, per-job styles."""
    tr = Translator.from_checkpoint(checkpoint, batch_size=4)
    src = [image_to_tensor(Image.open(io.BytesIO(photo_bytes(seed=i))).convert("RGB"), S).numpy()
           for i in range(5)]
    ref = np.stack([src[4], src[0]])
    jobs = [Job(src[0], 0, [0, 1]), Job(src[1], 2, [5], psi=0.5), Job(src[2], 1, references=ref),
            Job(src[3], 1, [2, 9], steps=3), Job(src[4], 0, [7, 8, 9])]
    together = run_jobs(tr, jobs, exact=True)  # 2 + 1 + 2 + 3 + 3 rows: 3 calls of 4 rows
    for job, out in zip(jobs, together):
        alone = run_jobs(tr, [job], exact=True)
        assert out.shape == alone[0].shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, alone[0])
    # interpolation ends exactly at the two seeds' own styles
    ends = run_jobs(tr, [Job(src[3], 1, [2]), Job(src[3], 1, [9])], exact=True)
    np.testing.assert_array_equal(together[3][[0, 2]], np.concatenate(ends))


def assert_within_rounding(got: np.ndarray, want: np.ndarray) -> None:
    """Outputs of different batch shapes: at most one uint8 level apart, on few pixels."""
    diff = np.abs(got.astype(int) - want.astype(int))
    assert got.shape == want.shape and diff.max() <= 1 and (diff > 0).mean() < 0.01, \
        (diff.max(), (diff > 0).mean())


def test_default_batching_takes_the_rows_it_has(checkpoint):
    """A lone job runs the generator on its own rows (not padded), so it equals generate() on
    exactly those rows; in a batch it stays within rounding of that."""
    tr = Translator.from_checkpoint(checkpoint, batch_size=4)
    calls = []
    hook = tr.nets.generator.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    src = [image_to_tensor(Image.open(io.BytesIO(photo_bytes(seed=i))).convert("RGB"), S).numpy()
           for i in range(3)]
    jobs = [Job(src[0], 0, [0]), Job(src[1], 2, [5, 6], psi=0.5), Job(src[2], 1, [3, 4, 7])]
    alone = [run_jobs(tr, [job])[0] for job in jobs]
    assert calls == [1, 2, 3]
    calls.clear()
    together = run_jobs(tr, jobs)  # 6 rows: chunks of 4 and 2
    assert calls == [4, 2]
    hook.remove()
    s = tr.latent_styles(0, [0])
    np.testing.assert_array_equal(alone[0], to_pixels(tr.generate(torch.tensor(src[0])[None], s)))
    for got, want in zip(together, alone):
        assert_within_rounding(got, want)


# ---------------------------------------------------------------- a real Serve app


@pytest.fixture(scope="module")
def server(ray_session, checkpoint):
    """The app of `stargan-ray serve` on a loopback port: its base URL."""
    from ray import serve

    from stargan_ray.serve import ServeOptions, build_app
    from stargan_ray.serve.inputs import Limits

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    from stargan_ray.serve.inputs import token_sha256

    # under load a batch waits up to FILL_S to fill: long, so that whether 32 concurrent requests
    # fill their calls does not depend on how fast this machine is (the last call waits it out)
    opts = ServeOptions(str(checkpoint), max_batch=MAX_BATCH, cpus_per_replica=1,
                        batch_wait_s=0.05, batch_fill_s=FILL_S, limits=Limits(**LIMITS),
                        token_sha256=token_sha256(TOKEN))
    serve.run(build_app(opts), name="stargan-ray-test", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def post(url, files=None, data=None, timeout=60, headers=AUTH, route="/translate"):
    import requests

    return requests.post(f"{url}{route}", files=files, data=data, timeout=timeout,
                         headers=headers)


def get(url, headers=AUTH):
    import requests

    return requests.get(url, timeout=30, headers=headers)


def outputs_of(response) -> list[np.ndarray]:
    if response.headers["content-type"].startswith("image/png"):
        return [decoded(response.content)]
    return [decoded(base64.b64decode(o["png"])) for o in response.json()["outputs"]]


@pytest.mark.ray
def test_page_domains_and_health(server):
    import requests

    page = requests.get(server + "/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/page/app.js" in page.text and "http" not in page.text.replace("http-equiv", "")
    for name in ("app.js", "style.css"):
        asset = requests.get(f"{server}/page/{name}", timeout=30)
        assert asset.status_code == 200 and "https://" not in asset.text
    # nothing but the page's own files: no path reaches the file system
    for probe in ("/page/..%2Fapp.py", "/page/../app.py", "/page/__init__.py", "/etc/passwd",
                  "/page/%2Fetc%2Fpasswd"):
        r = requests.get(server + probe, timeout=30)
        assert r.status_code == 404 and "error" in r.json(), probe
    assert get(server + "/domains").json()["domains"] == DOMAINS
    health = get(server + "/healthz").json()
    assert health["status"] == "ok" and health["domains"] == 3


@pytest.mark.ray
def test_a_photo_translates_as_in_process(server, checkpoint):
    jpeg = photo_bytes(size=(160, 120))
    one = post(server, files={"image": ("photo.jpg", jpeg, "image/jpeg")},
               data={"domain": "square", "seeds": "4"})
    assert one.status_code == 200, one.text
    assert one.headers["content-type"] == "image/png" and one.headers["x-output-label"] == "seed4"
    several = post(server, files={"image": ("photo.jpg", jpeg)},
                   data={"domain": "1", "seeds": "4,0-1", "psi": "0.7"})
    assert several.status_code == 200, several.text
    body = several.json()
    assert body["domain"] == "square" and [o["label"] for o in body["outputs"]] == \
        ["seed4", "seed0", "seed1"]
    # the same pixels as the inference core in this process, with the replica's batch shape
    tr = Translator.from_checkpoint(checkpoint, batch_size=MAX_BATCH)
    x = image_to_tensor(Image.open(io.BytesIO(jpeg)).convert("RGB"), S).numpy()
    local = run_jobs(tr, [Job(x, 1, [4]), Job(x, 1, [4, 0, 1], psi=0.7)])
    np.testing.assert_array_equal(outputs_of(one)[0], local[0][0])
    np.testing.assert_array_equal(np.stack(outputs_of(several)), local[1])
    ref = post(server, files=[("image", ("p.jpg", jpeg)), ("reference", ("r.png", photo_bytes(
        seed=3, fmt="PNG"))), ("reference", ("r2.jpg", photo_bytes(seed=4)))],
        data={"domain": "triangle", "steps": "4"})
    assert ref.status_code == 200, ref.text
    assert [o["label"] for o in ref.json()["outputs"]][::3] == ["ref0-ref1@0.000",
                                                                "ref0-ref1@1.000"]
    assert all(o.shape == (S, S, 3) for o in outputs_of(ref))


def bad_requests():
    """(what the request is, how it is sent, the status, words the error must contain)."""
    png = photo_bytes(fmt="PNG")
    big = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")  # ~480 kB of noise: over max_bytes
    huge = io.BytesIO()
    Image.new("RGB", (1200, 1000)).save(huge, format="PNG")  # small file, 1.2 MP: over max_pixels
    img = {"image": ("p.png", png)}
    return [
        ("not an image", {"files": {"image": ("p.png", b"<html>hello</html>")},
                          "data": {"domain": "circle"}}, 400, "image: not an image"),
        ("truncated", {"files": {"image": ("p.png", png[:200])}, "data": {"domain": "circle"}},
         400, "image: cannot decode"),
        ("empty file", {"files": {"image": ("p.png", b"")}, "data": {"domain": "circle"}}, 400,
         "image: empty file"),
        ("no image", {"files": None, "data": {"domain": "circle"}}, 400, "image: missing"),
        ("empty body", {"files": None, "data": None}, 400, "body: empty request"),
        ("too many bytes", {"files": {"image": ("p.png", buf.getvalue())},
                            "data": {"domain": "circle"}}, 413, "300000"),
        ("too many pixels", {"files": {"image": ("p.png", huge.getvalue())},
                             "data": {"domain": "circle"}}, 413, "1200 x 1000 pixels"),
        ("unknown domain", {"files": img, "data": {"domain": "cat"}}, 400,
         "unknown domain 'cat'; the model's domains are circle, square, triangle"),
        ("domain index", {"files": img, "data": {"domain": "3"}}, 400, "unknown domain '3'"),
        ("bad seed", {"files": img, "data": {"domain": "circle", "seeds": "1,two"}}, 400,
         "seeds: expected non-negative integers"),
        ("negative seed", {"files": img, "data": {"domain": "circle", "seeds": "-5"}}, 400,
         "seeds: expected non-negative"),
        ("seed past the largest", {"files": img, "data": {"domain": "circle",
                                                          "seeds": str(MAX_SEED + 1)}}, 400,
         f"seeds: {MAX_SEED + 1} is above the largest seed {MAX_SEED}"),
        ("too many outputs", {"files": img, "data": {"domain": "circle", "seeds": "0-6"}}, 400,
         "7 outputs asked for, more than the limit of 6"),
        ("too many steps", {"files": img, "data": {"domain": "circle", "seeds": "0,1",
                                                   "steps": "50"}}, 400, "50 outputs"),
        ("steps need two styles", {"files": img, "data": {"domain": "circle", "seeds": "0-2",
                                                          "steps": "5"}}, 400, "exactly two"),
        ("bad psi", {"files": img, "data": {"domain": "circle", "psi": "2"}}, 400,
         "psi: must be between 0 and 1"),
        ("seeds and reference", {"files": {**img, "reference": ("r.png", png)},
                                 "data": {"domain": "circle", "seeds": "1"}}, 400, "not both"),
        ("psi and reference", {"files": {**img, "reference": ("r.png", png)},
                               "data": {"domain": "circle", "psi": "0.5"}}, 400,
         "psi: truncates seeded styles only; reference styles are used as they are"),
        ("bad reference", {"files": {**img, "reference": ("r.png", b"GIF89a...")},
                           "data": {"domain": "circle"}}, 400, "reference: not an image"),
        ("unknown field", {"files": img, "data": {"domain": "circle", "path": "/etc/passwd"}},
         400, "path: unknown field"),
        ("image as text", {"files": None, "data": {"domain": "circle", "image": "/etc/passwd"}},
         400, "image: expected a file upload"),
    ]


@pytest.mark.ray
def test_bad_inputs_get_4xx_json_naming_the_problem_and_the_server_keeps_serving(server):
    import requests

    for what, request, status, words in bad_requests():
        r = post(server, **request)
        assert r.status_code == status, (what, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json", what
        assert words in r.json()["error"], (what, r.json())
    not_multipart = requests.post(server + "/translate", data=b"\x89PNG...",
                                  headers={"content-type": "image/png", **AUTH}, timeout=30)
    assert not_multipart.status_code == 400 and "multipart/form-data" in not_multipart.text
    assert get(server + "/healthz").json()["status"] == "ok"
    ok = post(server, files={"image": ("p.png", photo_bytes(fmt="PNG"))},
              data={"domain": "0", "seeds": str(MAX_SEED)})  # the largest seed, to the generator
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    assert ok.headers["x-output-label"] == f"seed{MAX_SEED}"


@pytest.mark.ray
def test_32_concurrent_requests_are_batched_and_match_the_same_requests_one_at_a_time(server):
    requests_ = [({"image": (f"p{i}.jpg", photo_bytes(seed=i))},
                  {"domain": DOMAINS[i % 3], "seeds": f"{i},{i + 100}" if i % 4 == 0 else str(i),
                   "psi": "0.8" if i % 5 == 0 else "1"}) for i in range(32)]

    def send(request):
        r = post(server, files=request[0], data=request[1], timeout=300)
        assert r.status_code == 200, r.text
        return outputs_of(r), int(r.headers["x-batch-requests"]), int(r.headers["x-batch-id"])

    with ThreadPoolExecutor(32) as pool:
        concurrent = list(pool.map(send, requests_))
    alone = [send(request) for request in requests_]
    # the generator calls the 32 requests took: each call's size as its requests report it
    calls = {call: size for _, size, call in concurrent}
    assert sum(calls.values()) == 32, calls
    # batched into full calls: the first request found the replica idle and waited 50 ms for
    # company; the others arrived under load and wait up to FILL_S for MAX_BATCH requests (the
    # rules themselves: test_under_load_a_batch_waits_to_fill_and_a_lone_request_does_not)
    assert len(calls) <= 32 // MAX_BATCH + 2, \
        f"{len(calls)} calls for 32 requests, fewer than {MAX_BATCH / 2:g} requests per call " \
        f"on average: {sorted(calls.values())}"
    assert all(size == 1 for _, size, _ in alone)
    for i, ((got, _, _), (want, _, _)) in enumerate(zip(concurrent, alone)):
        assert len(got) == len(want) == (2 if i % 4 == 0 else 1)
        for g, w in zip(got, want):
            assert_within_rounding(g, w)


def ray_logs_dir():
    import ray

    return ray._private.worker.global_worker.node.get_logs_dir_path()


@pytest.mark.ray
def test_the_api_needs_the_bearer_token_and_logs_no_request_data(server):
    import pathlib

    marker_token, marker_domain = "wrong-token-7f3a9c1e5b", "cat-d41d8cd98f00b204"
    for route in ("/domains", "/healthz"):
        for headers in ({}, {"Authorization": f"Bearer {marker_token}"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
            r = get(server + route, headers=headers)
            assert r.status_code == 401, (route, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["field"] == "token" and "bearer token" in r.json()["error"]
            assert marker_token not in r.text
        assert get(server + route).status_code == 200
    png = photo_bytes(fmt="PNG")
    files, data = {"image": ("p.png", png)}, {"domain": "circle"}
    for headers in ({}, {"Authorization": f"Bearer {marker_token}"}):
        r = post(server, files=files, data=data, headers=headers)
        assert r.status_code == 401 and r.json()["field"] == "token", r.text
    # the page itself holds no data and loads without the token; its script sends the token
    page = get(server + "/", headers={})
    assert page.status_code == 200 and 'id="token"' in page.text
    assert "Authorization" in get(server + "/page/app.js", headers={}).text
    ok = post(server, files=files, data=data)
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    bad = post(server, files=files, data={"domain": marker_domain})
    assert bad.status_code == 400 and marker_domain in bad.json()["error"]
    # nothing a request sent reaches Ray's logs (Serve's access lines: method, route, status)
    logs = [p for p in pathlib.Path(ray_logs_dir()).rglob("*") if p.is_file()]
    assert any("serve" in str(p) for p in logs)
    for path in logs:
        text = path.read_bytes()
        for marker in (marker_token, marker_domain, TOKEN):
            assert marker.encode() not in text, (marker, path)


@pytest.mark.ray
def test_a_replica_that_cannot_start_is_one_line_with_its_cause(server, tmp_path):
    """What `stargan-ray serve` prints when a Translator fails to deploy (here a checkpoint that
    is corrupt where the replica reads it; the command checks its own copy before Ray starts)."""
    from ray import serve

    from stargan_ray.errors import UserError
    from stargan_ray.serve import ServeOptions
    from stargan_ray.serve.build import deploy

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04" + bytes(3000))
    try:
        with pytest.raises(UserError) as err:
            deploy(ServeOptions(str(corrupt), max_batch=2), "broken", route_prefix="/broken")
        message = str(err.value)
        assert len(message.splitlines()) == 1, message
        assert message.startswith("serve: deploying broken failed: Translator checkpoint ") and \
            "corrupt.pt" in message and "(CheckpointError)" in message, message
    finally:
        serve.delete("broken")
    assert get(server + "/healthz").json()["status"] == "ok"  # the other app kept serving


def test_batches_form_only_when_the_generator_is_free():
    """Requests that arrive while a call runs all go into the next call (no timing: the first
    call is held until the others are queued)."""
    import asyncio
    import threading

    from stargan_ray.serve.batching import Batcher

    release, started, calls = threading.Event(), threading.Event(), []

    def fn(items):
        calls.append(list(items))
        started.set()
        assert release.wait(60), "the test never released the first call"
        return [item * 10 for item in items]

    async def scenario():
        batcher = Batcher(fn, max_batch=8, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.to_thread(started.wait, 60)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 11)]
        await asyncio.sleep(0)  # every request is queued before the first call ends
        release.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(scenario())
    assert calls == [[0], list(range(1, 9)), [9, 10]]
    assert first == (0, 1, 1)
    assert rest == [(i * 10, 8, 2) for i in range(1, 9)] + [(90, 2, 3), (100, 2, 3)]


def test_under_load_a_batch_waits_to_fill_and_a_lone_request_does_not():
    """A request that finds the replica idle goes after wait_s (0 here) although fill_s is an
    hour; one that arrives while a call runs starts a batch that waits for max_batch requests,
    also those arriving after that call has ended."""
    import asyncio
    import threading

    from stargan_ray.serve.batching import Batcher

    hold, started, calls = threading.Event(), threading.Event(), []

    def fn(items):
        calls.append(list(items))
        started.set()
        assert hold.wait(60), "the test never released the call"
        return [item * 10 for item in items]

    async def scenario():
        batcher = Batcher(fn, max_batch=4, wait_s=0.0, fill_s=3600.0)
        hold.set()
        lone = await asyncio.wait_for(batcher.submit(0), 60)  # not the hour of fill_s
        hold.clear()
        started.clear()
        running = asyncio.ensure_future(batcher.submit(1))
        await asyncio.to_thread(started.wait, 60)
        loaded = [asyncio.ensure_future(batcher.submit(2))]  # while call 2 runs
        await asyncio.sleep(0)
        hold.set()
        await asyncio.wait_for(running, 60)
        for i in (3, 4, 5):  # after call 2 has ended, one by one
            loaded.append(asyncio.ensure_future(batcher.submit(i)))
            await asyncio.sleep(0.01)
        done = await asyncio.wait_for(asyncio.gather(*loaded), 60)
        return lone, done, batcher.stats.summary()

    lone, done, stats = asyncio.run(scenario())
    assert calls == [[0], [1], [2, 3, 4, 5]]
    assert lone == (0, 1, 1) and done == [(i * 10, 4, 3) for i in (2, 3, 4, 5)]
    assert stats["calls"] == 3 and stats["requests"] == 6 and stats["per_call"] == 2


# ---------------------------------------------------------------- POST /translate_video


def clip_bytes(tmp_path, frames=6, fps=10.0, size=(48, 40), seed=0) -> bytes:
    """A small H.264 clip of smooth moving gradients (width, height = size)."""
    from stargan_ray.video import write_video

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    shots = [np.stack([(xx * 5 + 20 * t) % 256, (yy * 6) % 256, np.full_like(xx, 40 * t)], -1)
             .astype(np.uint8) for t in range(frames)]
    shots = [np.clip(f + rng.integers(0, 8, f.shape), 0, 255).astype(np.uint8) for f in shots]
    return write_video(tmp_path / f"clip-{frames}-{fps}-{w}x{h}.mp4", shots, fps).read_bytes()


def decode_clip(data: bytes, tmp_path, name="out.mp4"):
    from stargan_ray.video import open_video

    (tmp_path / name).write_bytes(data)
    info, frames = open_video(tmp_path / name)
    return info, np.stack(list(frames))


def test_clip_limits_hold_while_decoding_and_a_missing_extra_is_one_line(monkeypatch):
    """A clip whose header does not tell its length is stopped at the first frame past a limit;
    a server without the [video] extra answers 501 naming the install command."""
    import sys

    from stargan_ray.serve.clips import OverLimit, counting, video_support

    prepare = counting(lambda frame: frame, fps=10.0, limits=Limits(max_video_frames=3))
    for i in range(3):
        assert prepare(i) == i
    with pytest.raises(OverLimit, match="at least 4 frames, more than the limit of 3 frames"):
        prepare(3)
    prepare = counting(lambda frame: frame, fps=2.0, limits=Limits(max_video_seconds=1.0))
    prepare(0), prepare(1)
    with pytest.raises(OverLimit, match="at least 1.50 s long, more than the limit of 1 s"):
        prepare(2)
    assert video_support() is None
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import raises ImportError
    missing = video_support()
    assert missing.status == 501 and missing.field == "video"
    assert "pip install 'stargan-ray[video]'" in missing.message and "\n" not in missing.message


@pytest.mark.ray
def test_a_clip_translates_to_an_mp4_with_its_frame_count_and_rate(server, checkpoint, tmp_path):
    from stargan_ray.video_translate import translate_video

    clip = clip_bytes(tmp_path, frames=6, fps=10.0)
    r = post(server, files={"video": ("clip.mp4", clip, "video/mp4")},
             data={"domain": "square", "seed": "3", "psi": "0.8"}, route="/translate_video")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4" and r.headers["x-frames"] == "6"
    info, got = decode_clip(r.content, tmp_path)
    assert info.fps == 10.0 and info.size == (S, S) and got.shape == (6, S, S, 3)
    # the clip in-process, as `translate` writes it: the same frames (one encoder, one model)
    tr = Translator.from_checkpoint(checkpoint, batch_size=MAX_BATCH)
    (tmp_path / "in.mp4").write_bytes(clip)
    means = []
    for seed in (3, 4):
        out = tmp_path / f"local-{seed}.mp4"
        translate_video(tr, tmp_path / "in.mp4", tr.latent_styles(1, [seed], 0.8), [out])
        _, want = decode_clip(out.read_bytes(), tmp_path, f"copy-{seed}.mp4")
        means.append(np.abs(got.astype(int) - want.astype(int)).mean())
    assert means[0] < 1.0 and means[1] > 5 * means[0] + 1, means  # seed 3's style, not seed 4's
    # the curl line of docs/using.md, run as written (but for the host, the token and the names)
    import subprocess

    (tmp_path / "clip.mp4").write_bytes(clip)
    subprocess.run(["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {TOKEN}",
                    "-F", f"video=@{tmp_path / 'clip.mp4'}", "-F", "domain=square", "-F", "seed=3",
                    "-F", "psi=0.8", f"{server}/translate_video", "-o", str(tmp_path / "c.mp4")],
                   check=True, timeout=120)
    np.testing.assert_array_equal(decode_clip((tmp_path / "c.mp4").read_bytes(), tmp_path)[1],
                                  got)
    ref = post(server, files={"video": ("c.mp4", clip), "reference": ("r.png", photo_bytes())},
               data={"domain": "circle"}, route="/translate_video")
    assert ref.status_code == 200, ref.text
    assert decode_clip(ref.content, tmp_path, "ref.mp4")[1].shape == (6, S, S, 3)


@pytest.mark.ray
def test_clips_past_a_limit_or_not_a_video_get_4xx_naming_it(server, tmp_path):
    ok = clip_bytes(tmp_path)
    noise = np.random.default_rng(1).integers(0, 256, 320_000, dtype=np.uint8).tobytes()
    cases = [
        ("13 frames", clip_bytes(tmp_path, frames=13, fps=25.0), {}, 413,
         "video: 13 frames, more than the limit of 12 frames"),
        ("3 s", clip_bytes(tmp_path, frames=6, fps=2.0), {}, 413,
         "video: 3.00 s long, more than the limit of 2 s"),
        ("frame size", clip_bytes(tmp_path, frames=3, size=(80, 64)), {}, 413,
         "video: frames of 80 x 64 pixels, more than the limit of 4096 pixels per frame"),
        ("upload size", noise, {}, 413, "more than the limit of 300000"),
        ("not a video", b"<html>hello</html>", {}, 400, "video: not a readable video"),
        ("truncated", ok[:len(ok) // 2], {}, 400, "video: cannot decode the video: decoding "
                                                    "stopped after"),
        ("empty", b"", {}, 400, "video: missing or empty"),
        ("two seeds", ok, {"seed": "0-1"}, 400, "seed: expected one non-negative integer"),
        ("seed and reference", ok, {"seed": "1", "reference": photo_bytes()}, 400, "not both"),
        ("unknown domain", ok, {"domain": "cat"}, 400, "unknown domain 'cat'"),
        ("unknown field", ok, {"seeds": "1"}, 400, "seeds: unknown field"),
    ]
    for what, video, extra, status, words in cases:
        files = {"video": ("clip.mp4", video)}
        if "reference" in extra:
            files["reference"] = ("r.jpg", extra.pop("reference"))
        r = post(server, files=files, data={"domain": "circle", **extra},
                 route="/translate_video")
        assert r.status_code == status, (what, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json", what
        assert words in r.json()["error"], (what, r.json())
    no_token = post(server, files={"video": ("c.mp4", ok)}, data={"domain": "circle"},
                    headers={}, route="/translate_video")
    assert no_token.status_code == 401 and no_token.json()["field"] == "token"
    limits = get(server + "/domains").json()
    assert (limits["max_video_frames"], limits["max_video_seconds"],
            limits["max_frame_pixels"]) == (12, 2.0, 4096)
    assert post(server, files={"video": ("c.mp4", ok)}, data={"domain": "circle"},
                route="/translate_video").status_code == 200
