"""The HTTP side: a FastAPI app as the Serve ingress, in front of the Translator deployment.

Routes: GET / (the web page) and /page/<name> (its script and style, from a fixed list),
GET /domains, GET /healthz, POST /translate, POST /translate_video (a clip in, an H.264 mp4
out; clips.py). The ingress decodes and checks uploads and encodes
PNGs; only the Translator replicas hold the model. Bad requests get a 4xx JSON body
{"error": "<field>: <problem>", "field": "<field>"} and change nothing on the server.
With a token configured, every route but the page's own files needs `Authorization: Bearer
<token>` (401 otherwise, checked before the body is read). Nothing here logs request data.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations (Request) at
# runtime, and through serve.ingress the string forms do not resolve.
import base64
import io
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from ray import serve
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from ..inference import image_to_tensor
from .batching import Job
from .clips import ClipJob, upload_suffix, video_support
from .inputs import (BadRequest, Limits, check_bearer, parse_domain, parse_psi, parse_seed,
                     parse_seeds, parse_steps, read_image, too_many)

FIELDS = ("image", "domain", "seeds", "reference", "psi", "steps")
VIDEO_FIELDS = ("video", "domain", "seed", "reference", "psi")
_PAGE_DIR = Path(__file__).parent / "page"
# The page's files, read once: requests pick one by its key and never name a path.
PAGE = {name: (kind, (_PAGE_DIR / name).read_bytes()) for name, kind in (
    ("index.html", "text/html; charset=utf-8"), ("app.js", "text/javascript; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"))}

api = FastAPI(title="stargan-ray", docs_url=None, redoc_url=None)  # docs would load a CDN


@api.exception_handler(BadRequest)
async def _bad_request(request: Request, err: BadRequest) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.payload(), status_code=err.status, headers=headers)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    return JSONResponse({"error": f"{request.url.path}: {err.detail}", "field": None},
                        status_code=err.status_code)


async def read_form(request: Request, limits: Limits) -> FormData:
    """The multipart body, refused as soon as it grows past limits.max_bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limits.max_bytes:
        raise BadRequest("body", f"{length} bytes, more than the limit of {limits.max_bytes}", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_bytes:
            raise BadRequest("body", f"more than the limit of {limits.max_bytes} bytes", 413)
    if not body:
        raise BadRequest("body", "empty request; send multipart/form-data with an image file "
                                 "field named 'image' and a 'domain' field")
    kind = request.headers.get("content-type", "")
    # a form without files arrives urlencoded: accepted, so that its fields are checked by name
    if not kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise BadRequest("body", f"expected multipart/form-data, got {kind or 'no content type'}")

    async def replay() -> dict:
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=limits.max_outputs + 1,
                                                         max_fields=2 * len(FIELDS))
    except Exception as err:  # starlette raises HTTPException or MultiPartException
        raise BadRequest("body", f"malformed multipart body ({getattr(err, 'detail', err)})") \
            from None


def text_field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise BadRequest(name, "expected a text field, got a file")
    return value


async def file_fields(form: FormData, name: str) -> list[bytes]:
    """The bytes of each file sent as `name`; a file input left empty by a browser is skipped."""
    out = []
    for value in form.getlist(name):
        if not isinstance(value, UploadFile):
            raise BadRequest(name, "expected a file upload (multipart), got a text field")
        data = await value.read()
        if data or value.filename:
            out.append(data)
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """Checks requests, turns them into Jobs for the Translator and its outputs into PNGs."""

    def __init__(self, translator, limits: Limits = Limits(), token_sha256: str | None = None):
        self.translator = translator
        self.limits = limits
        self.token_sha256 = token_sha256
        self._info: dict | None = None

    def authorize(self, request: Request) -> None:
        check_bearer(request.headers.get("authorization"), self.token_sha256)

    async def info(self) -> dict:
        if self._info is None:
            self._info = await self.translator.info.remote()
        return self._info

    @api.get("/")
    async def index(self) -> Response:
        return await self.page("index.html")

    @api.get("/page/{name}")
    async def page(self, name: str) -> Response:
        if name not in PAGE:
            raise HTTPException(404, "Not Found")
        kind, data = PAGE[name]
        return Response(data, media_type=kind)

    @api.get("/domains")
    async def domains(self, request: Request) -> dict:
        self.authorize(request)
        info = await self.info()
        limits = self.limits
        return {"domains": info["domains"], "img_size": info["img_size"],
                "max_outputs": limits.max_outputs, "max_bytes": limits.max_bytes,
                "max_video_frames": limits.max_video_frames,
                "max_video_seconds": limits.max_video_seconds,
                "max_frame_pixels": limits.max_frame_pixels}

    @api.get("/healthz")
    async def healthz(self, request: Request) -> dict:
        self.authorize(request)
        info = await self.info()
        return {"status": "ok", "domains": len(info["domains"]), "device": info["device"]}

    @api.post("/translate")
    async def translate(self, request: Request) -> Response:
        self.authorize(request)
        form = await read_form(request, self.limits)
        job, labels = await self.job(form)
        outputs, batch, call = await self.translator.run.remote(job)
        # how many requests shared the generator call, and which call on its replica it was
        # (for tests and benchmarks)
        headers = {"X-Batch-Requests": str(batch), "X-Batch-Id": str(call)}
        if len(outputs) == 1:
            return Response(png_bytes(outputs[0]), media_type="image/png",
                            headers={**headers, "X-Output-Label": labels[0]})
        info = await self.info()
        return JSONResponse({"domain": info["domains"][job.domain], "outputs": [
            {"label": label, "png": base64.b64encode(png_bytes(p)).decode("ascii")}
            for label, p in zip(labels, outputs)]}, headers=headers)

    @api.post("/translate_video")
    async def translate_video(self, request: Request) -> Response:
        """A clip in one style: the same frame count and rate, H.264 mp4 at the model's size."""
        self.authorize(request)
        missing = video_support()  # before reading a body this server cannot use
        if missing is not None:
            raise BadRequest(missing.field, missing.message, missing.status)
        form = await read_form(request, self.limits)
        result = await self.translator.run_clip.remote(await self.clip_job(form))
        if result.error is not None:
            raise BadRequest(result.error.field, result.error.message, result.error.status)
        return Response(result.mp4, media_type="video/mp4", headers={
            "X-Frames": str(result.frames), "X-Fps": f"{result.fps:g}"})

    async def clip_job(self, form: FormData) -> ClipJob:
        """The ClipJob a form asks for: a video file, a domain, one seed or one reference."""
        unknown = sorted(set(form.keys()) - set(VIDEO_FIELDS))
        if unknown:
            raise BadRequest(unknown[0], f"unknown field; the fields are {', '.join(VIDEO_FIELDS)}")
        info, limits = await self.info(), self.limits
        videos = [v for v in form.getlist("video") if isinstance(v, UploadFile)]
        data = await file_fields(form, "video")
        if len(data) != 1 or not data[0]:
            raise BadRequest("video", "missing or empty; send one clip as a multipart file field "
                                      "named 'video'" if len(data) < 2 else
                             f"{len(data)} files sent; send one clip")
        domain = parse_domain(text_field(form, "domain"), info["domains"])
        references = await file_fields(form, "reference")
        seed_text, psi_text = text_field(form, "seed"), text_field(form, "psi")
        if len(references) > 1:
            raise BadRequest("reference", f"{len(references)} files sent; a clip takes one style")
        if references and (seed_text or (psi_text and psi_text.strip())):
            raise BadRequest("seed" if seed_text else "psi", "give a seed (and psi) or one "
                                                             "reference image, not both")
        seed = parse_seed(seed_text)
        reference = None
        if references:
            image = read_image(references[0], "reference", limits)
            reference = image_to_tensor(image, info["img_size"]).numpy()
        return ClipJob(data[0], upload_suffix(videos[0].filename), domain, seed, reference,
                       parse_psi(psi_text), limits)

    async def job(self, form: FormData) -> tuple[Job, list[str]]:
        """The Job a form asks for and a label per output; BadRequest names what is wrong."""
        unknown = sorted(set(form.keys()) - set(FIELDS))
        if unknown:
            raise BadRequest(unknown[0], f"unknown field; the fields are {', '.join(FIELDS)}")
        info, limits = await self.info(), self.limits
        images = await file_fields(form, "image")
        if len(images) > 1:
            raise BadRequest("image", f"{len(images)} files sent; send one source image")
        source = read_image(images[0] if images else None, "image", limits)
        domain = parse_domain(text_field(form, "domain"), info["domains"])
        references = await file_fields(form, "reference")
        if len(references) > limits.max_outputs:
            raise too_many(len(references), limits)
        seeds_text, psi_text = text_field(form, "seeds"), text_field(form, "psi")
        if references and seeds_text:
            raise BadRequest("seeds", "give seeds or reference images, not both")
        if references and psi_text and psi_text.strip():
            raise BadRequest("psi", "truncates seeded styles only; reference styles are used as "
                                    "they are: send psi with seeds, or reference without psi")
        size = info["img_size"]
        refs = [image_to_tensor(read_image(r, "reference", limits), size) for r in references]
        seeds = [] if refs else parse_seeds(seeds_text, limits)
        labels = [f"ref{i}" for i in range(len(refs))] or [f"seed{s}" for s in seeds]
        steps = parse_steps(text_field(form, "steps"), len(labels), limits)
        if steps is not None:
            labels = [f"{labels[0]}-{labels[1]}@{i / (steps - 1):.3f}" for i in range(steps)]
        job = Job(source=image_to_tensor(source, size).numpy(), domain=domain, seeds=seeds,
                  references=np.stack([r.numpy() for r in refs]) if refs else None,
                  psi=parse_psi(psi_text), steps=steps)
        return job, labels
