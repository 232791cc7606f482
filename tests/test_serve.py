"""`stargan-ray serve`: request checks and batching in plain torch, then a real Serve app on
loopback answering real HTTP (a photo-like image, every bad input, 32 concurrent requests equal
to the same requests one at a time)."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from stargan_ray.inference import Translator, image_to_tensor
from stargan_ray.serve.batching import Job, run_jobs
from stargan_ray.serve.inputs import BadRequest, Limits, parse_seeds

from .helpers import free_port

S = 32
DOMAINS = ["circle", "square", "triangle"]  # the synthetic set's names for 3 domains
MAX_BATCH = 8
LIMITS = {"max_bytes": 300_000, "max_pixels": 1_000_000, "max_outputs": 6}


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
                     ("0-9999999999999", "more than the limit")]:
        with pytest.raises(BadRequest, match=why if why != "7 is" else "100 outputs"):
            parse_seeds(bad, limits)


def test_batched_jobs_equal_each_job_alone(checkpoint):
    """The batching rule of the replica: fixed-shape generator calls, per-job styles."""
    tr = Translator.from_checkpoint(checkpoint, batch_size=4)
    src = [image_to_tensor(Image.open(io.BytesIO(photo_bytes(seed=i))).convert("RGB"), S).numpy()
           for i in range(5)]
    ref = np.stack([src[4], src[0]])
    jobs = [Job(src[0], 0, [0, 1]), Job(src[1], 2, [5], psi=0.5), Job(src[2], 1, references=ref),
            Job(src[3], 1, [2, 9], steps=3), Job(src[4], 0, [7, 8, 9])]
    together = run_jobs(tr, jobs)  # 2 + 1 + 2 + 3 + 3 rows: 3 generator calls of 4 rows
    for job, out in zip(jobs, together):
        alone = run_jobs(tr, [job])
        assert out.shape == alone[0].shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, alone[0])
    # interpolation ends exactly at the two seeds' own styles
    ends = run_jobs(tr, [Job(src[3], 1, [2]), Job(src[3], 1, [9])])
    np.testing.assert_array_equal(together[3][[0, 2]], np.concatenate(ends))


# ---------------------------------------------------------------- a real Serve app


@pytest.fixture(scope="module")
def server(ray_session, checkpoint):
    """The app of `stargan-ray serve` on a loopback port: its base URL."""
    from ray import serve

    from stargan_ray.serve import ServeOptions, build_app
    from stargan_ray.serve.inputs import Limits

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    opts = ServeOptions(str(checkpoint), max_batch=MAX_BATCH, cpus_per_replica=1,
                        batch_wait_s=0.05, limits=Limits(**LIMITS))
    serve.run(build_app(opts), name="stargan-ray-test", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def post(url, files=None, data=None, timeout=60):
    import requests

    return requests.post(f"{url}/translate", files=files, data=data, timeout=timeout)


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
    assert requests.get(server + "/domains", timeout=30).json()["domains"] == DOMAINS
    health = requests.get(server + "/healthz", timeout=30).json()
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
                                  headers={"content-type": "image/png"}, timeout=30)
    assert not_multipart.status_code == 400 and "multipart/form-data" in not_multipart.text
    assert requests.get(server + "/healthz", timeout=30).json()["status"] == "ok"
    ok = post(server, files={"image": ("p.png", photo_bytes(fmt="PNG"))}, data={"domain": "0"})
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"


@pytest.mark.ray
def test_32_concurrent_requests_equal_the_same_requests_one_at_a_time(server):
    requests_ = [({"image": (f"p{i}.jpg", photo_bytes(seed=i))},
                  {"domain": DOMAINS[i % 3], "seeds": f"{i},{i + 100}" if i % 4 == 0 else str(i),
                   "psi": "0.8" if i % 5 == 0 else "1"}) for i in range(32)]

    def send(request):
        r = post(server, files=request[0], data=request[1], timeout=300)
        assert r.status_code == 200, r.text
        return outputs_of(r), int(r.headers["x-batch-requests"])

    with ThreadPoolExecutor(32) as pool:
        concurrent = list(pool.map(send, requests_))
    alone = [send(request) for request in requests_]
    assert max(batch for _, batch in concurrent) > 1  # requests really shared generator calls
    assert all(batch == 1 for _, batch in alone)
    for i, ((got, _), (want, _)) in enumerate(zip(concurrent, alone)):
        assert len(got) == len(want) == (2 if i % 4 == 0 else 1)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
