"""Translating image files: inputs (files, folders, globs), the outputs' names, the face aligner
and batched generation written to disk as it is made.

Used by `stargan-ray translate`; free of Ray and argparse so that the Serve app and the video
path can share it. Outputs are
<input stem>_<domain>_seed<k>.png (latent-guided) or <input stem>_<domain>_ref-<ref stem>.png
(reference-guided); images found in an input folder keep their subfolder. Generation runs over
(sources x styles) in chunks of about batch_size pairs and each chunk is written before the next
is made, so memory does not grow with the number of outputs (a source's FAN masks are computed
once for all of its styles). Plain torch: no Ray, no argparse.
"""

from __future__ import annotations

import glob
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .errors import ConfigError
from .inference import Translator, load_image_tensor, to_pixels
from .video import VIDEO_EXTENSIONS, is_video

GRID_MAX_ROWS = 64  # a grid shows the first this many inputs (a row each)
GRID_MAX_OUTPUTS = 64  # ... and the first this many outputs of each
_DIGITS = re.compile("[0-9]+")
MAX_OUTPUTS = 10_000  # outputs of one `translate` command unless --no-limit


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Source:
    path: Path
    subdir: str  # relative folder under an input folder ("" for files and globs)


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Source], list[tuple[str, str]]]:
    """(image files to translate, [(input, why it gives nothing)]): files as given, folders
    recursively (listed as training lists images), globs by their matches; repeats dropped."""
    from .data.folders import list_image_files

    sources: list[Source] = []
    bad: list[tuple[str, str]] = []

    def add_folder(folder: Path) -> int:
        base = folder.resolve()
        # named below the folder as given, so messages show the paths the user typed
        files = [folder / Path(f).relative_to(base) for f in list_image_files(folder)]
        files += sorted(p for p in folder.rglob("*")  # clips too (stargan_ray.video_translate)
                        if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file() and is_video(p))
        sources.extend(Source(f, f.parent.relative_to(folder).as_posix().strip("."))
                       for f in files)
        return len(files)

    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            if not add_folder(path):
                bad.append((item, "folder holds no image files"))
        elif path.is_file():
            sources.append(Source(path, ""))
        elif glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            for match in matches:
                if match.is_dir():
                    add_folder(match)
                else:
                    sources.append(Source(match, ""))
            if not matches:
                bad.append((item, "matches no files"))
        else:
            bad.append((item, "no such file or folder"))
    return _unique(sources), bad


def _unique(sources: list[Source]) -> list[Source]:
    seen: set[Path] = set()
    unique = []
    for s in sources:
        key = s.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


# ---------------------------------------------------------------- what to make


class Seeds:
    """Latent seeds from "0,1,2" or ranges "0-9" (inclusive): repeats dropped, order kept.

    Held as ranges and counted and listed lazily, so "0-100000" costs no memory before its seeds
    are used.
    """

    def __init__(self, ranges: Sequence[range]) -> None:
        self.ranges = tuple(ranges)

    @classmethod
    def parse(cls, text: str) -> "Seeds":
        """ValueError (naming the expected form) for text that is not seeds."""
        ranges = []
        for part in text.split(","):
            first, dash, last = (p.strip() for p in part.partition("-"))
            if not _DIGITS.fullmatch(first) or (dash and not _DIGITS.fullmatch(last)):
                raise ValueError(f"expected seeds such as 0,1,2 or 0-9, got {text!r}")
            ranges.append(range(int(first), int(last if dash else first) + 1))
        if not any(ranges):
            raise ValueError(f"no seeds in {text!r} (a range runs upwards)")
        return cls([r for r in ranges if r])

    def __iter__(self) -> Iterator[int]:
        for i, r in enumerate(self.ranges):
            earlier = self.ranges[:i]
            yield from (s for s in r if not any(s in e for e in earlier))

    @property
    def count(self) -> int:
        """How many seeds (not len(): a range may hold more than an index can count)."""
        count, end = 0, -1
        for r in sorted(self.ranges, key=lambda r: r.start):  # the union's size
            count += max(0, r.stop - max(r.start, end))
            end = max(end, r.stop)
        return count

    @property
    def largest(self) -> int:
        return max(r.stop - 1 for r in self.ranges)


@dataclass(frozen=True)
class Request:
    """What each source becomes: an output per (target domain, style), domain-major; the styles
    are seeds (latent-guided, truncated by psi) or reference images."""

    domains: tuple[int, ...]
    seeds: Seeds = field(default_factory=lambda: Seeds([range(1)]))
    psi: float = 1.0
    refs: tuple[Path, ...] = ()

    @property
    def num_styles(self) -> int:
        return len(self.refs) if self.refs else self.seeds.count

    @property
    def per_source(self) -> int:
        return len(self.domains) * self.num_styles

    def style_labels(self) -> Iterator[str]:
        """The output name part of each style: seed<k> or ref-<stem> (stems must differ)."""
        if not self.refs:
            return (f"seed{k}" for k in self.seeds)
        stems = [r.stem for r in self.refs]
        for stem in stems:
            if stems.count(stem) > 1:
                raise ConfigError(f"--ref: several references are named {stem}; their outputs "
                                  "would share a name, rename one")
        return (f"ref-{stem}" for stem in stems)

    def labels(self, names: Sequence[str]) -> Iterator[str]:
        """<domain>_<style> of each output of a source, in order."""
        return (f"{names[y]}_{style}" for y in self.domains for style in self.style_labels())


def parse_domains(text: str, names: Sequence[str]) -> tuple[int, ...]:
    """A name, an index or all -> domain ids; ConfigError (for --to) lists the domains."""
    if text == "all":
        return tuple(range(len(names)))
    if text in names:
        return (list(names).index(text),)
    if text.isdigit() and int(text) < len(names):
        return (int(text),)
    raise ConfigError(f"--to {text}: not a domain of this model; its domains are "
                      f"{', '.join(names)} (or their indices 0-{len(names) - 1}), or all")


def output_path(out: Path, source: Source, label: str) -> Path:
    """A photo's output is a .png, a clip's an .mp4."""
    suffix = ".mp4" if is_video(source.path) else ".png"
    return out / source.subdir / f"{source.path.stem}_{label}{suffix}"


def check_names(sources: Sequence[Source], out: Path, first_label: str) -> None:
    """ConfigError when two sources would write the same files (same folder and stem)."""
    owner: dict[Path, Path] = {}
    for s in sources:
        path = output_path(out, s, first_label)  # same stem and folder: every output clashes
        if path in owner:
            raise ConfigError(f"{owner[path]} and {s.path} would both write {path}; translate "
                              "them into different --out folders")
        owner[path] = s.path


def all_outputs(sources: Sequence[Source], out: Path, request: Request,
                names: Sequence[str]) -> Iterator[Path]:
    """Every output file, lazily (one at a time, however many there are)."""
    for s in sources:
        yield from (output_path(out, s, label) for label in request.labels(names))


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class Alignment:
    """Align faces to CelebA-HQ first (as `stargan-ray align`). wing None: the model's own FAN,
    else its model.wing_path, else fallback_wing (where the official download puts it)."""

    lm_mean: str
    wing: str | None = None
    min_confidence: float = 0.2
    fallback_wing: str = "expr/checkpoints/wing.ckpt"


Loader = Callable[[Path], "tuple[torch.Tensor | None, str]"]


def source_loader(translator: Translator, alignment: Alignment | None = None,
                  fit: str = "stretch") -> Loader:
    """path -> ((3, S, S) source, "") or (None, why it was skipped); raises data.folders.BadImage
    for a file that cannot be read."""
    if alignment is None:
        return lambda path: (load_image_tensor(path, translator.img_size, fit), "")
    from .data.folders import load_image
    from .grids import to_image
    from .inference import image_to_tensor

    size = translator.img_size
    aligner = build_aligner(translator, alignment)
    align_size = aligner.img_size

    def prepare(path: Path) -> tuple[torch.Tensor | None, str]:
        x = image_to_tensor(load_image(path, fit=fit), align_size).to(translator.device)
        result = aligner.align(x)
        if result.image is None:
            return None, result.reason
        # quantised as `stargan-ray align` writes it, so align + translate give these pixels
        return image_to_tensor(to_image(result.image.clamp(-1, 1)), size), ""

    return prepare


def build_aligner(translator: Translator, alignment: Alignment):
    """The align.FaceAligner of an Alignment: the FAN and the mean landmarks loaded."""
    from .align import FaceAligner, load_mean_landmarks
    from .models.fan import load_fan

    mean = load_mean_landmarks(alignment.lm_mean)
    fan = translator.nets.fan if alignment.wing is None else None
    if fan is None:
        wing = alignment.wing or translator.cfg.model.wing_path or alignment.fallback_wing
        fan = load_fan(wing, translator.device)
    size = translator.img_size
    # the aligner needs a multiple of 64 (FAN heatmaps); small models align at 256 px
    align_size = size if size % 64 == 0 and size >= 256 else 256
    return FaceAligner(fan, mean, align_size, alignment.min_confidence)


def load_references(refs: Sequence[Path], img_size: int, fit: str = "stretch") -> torch.Tensor:
    """(R, 3, S, S) reference images; ConfigError (for --ref) names one that cannot be used."""
    from .data.folders import BadImage

    images = []
    for ref in refs:
        try:
            images.append(load_image_tensor(ref, img_size, fit))
        except BadImage as err:
            raise ConfigError(f"--ref {ref}: cannot be used as a reference ({err})") from None
    return torch.stack(images)


# ---------------------------------------------------------------- generating and writing


def style_chunks(translator: Translator, request: Request, x_ref: torch.Tensor | None,
                 size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(labels, styles (k, style_dim)) of up to size styles at a time, in output order."""
    names = translator.domains
    for y in request.domains:
        keys: Iterable[int] = request.seeds if x_ref is None else range(len(x_ref))
        pairs = zip(request.style_labels(), keys)
        while chunk := list(itertools.islice(pairs, size)):
            labels = [f"{names[y]}_{label}" for label, _ in chunk]
            picked = [key for _, key in chunk]
            yield labels, (translator.latent_styles(y, picked, request.psi) if x_ref is None
                           else translator.reference_styles(x_ref[picked], y))


@dataclass
class Written:
    """What a TranslateFiles run did."""

    count: int = 0  # output files written
    skipped: list[str] = field(default_factory=list)  # inputs that gave no output
    grid: list[np.ndarray] = field(default_factory=list)  # rows: the input, then its outputs


@dataclass
class TranslateFiles:
    """Translate image files in batches and write each output as soon as it is made.

    on_progress(n): n more outputs are done (written, or given up with their input);
    on_skip(path, why): an input gave no output (why is "" when data.folders already named it).
    """

    translator: Translator
    request: Request
    out: Path
    prepare: Loader
    x_ref: torch.Tensor | None = None  # the references (load_references) in reference mode
    grid_rows: int = 0  # keep grid rows (Written.grid) of the first this many inputs
    on_progress: Callable[[int], None] = lambda n: None
    on_skip: Callable[[Path, str], None] = lambda path, why: None

    def run(self, sources: Sequence[Source]) -> Written:
        done = Written()
        size = self.translator.batch_size
        for start in range(0, len(sources), size):
            x, kept = self._load(sources[start:start + size], done)
            if kept:
                self._write(x, kept, done)
        return done

    def _load(self, batch: Sequence[Source], done: Written) -> tuple[torch.Tensor, list[Source]]:
        from .data import folders

        xs, kept = [], []
        for source in batch:
            try:
                x, reason = self.prepare(source.path)
            except folders.BadImage as err:
                x, reason = None, ""
                folders.report_unreadable(source.path, str(err))
            if x is None:
                self.on_skip(source.path, reason)
                done.skipped.append(str(source.path))
                self.on_progress(self.request.per_source)
            else:
                xs.append(x)
                kept.append(source)
        return (torch.stack(xs) if xs else torch.zeros(0)), kept

    def _write(self, x: torch.Tensor, kept: list[Source], done: Written) -> None:
        """Every style of the batch's sources, about batch_size pairs through G at a time."""
        from PIL import Image

        masks = self.translator.masks(x)  # once per source, whatever its number of styles
        rows = {i: [image] for i, image in enumerate(to_pixels(x))
                if len(done.grid) + i < self.grid_rows}
        made: set[Path] = set()
        per_call = max(1, self.translator.batch_size // len(kept))
        for labels, styles in style_chunks(self.translator, self.request, self.x_ref, per_call):
            y = self.translator.translate(x, styles, masks)
            for i, source in enumerate(kept):
                pixels = to_pixels(y[i])
                for image, label in zip(pixels, labels):
                    path = output_path(self.out, source, label)
                    if path.parent not in made:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        made.add(path.parent)
                    Image.fromarray(image).save(path)
                if i in rows and len(rows[i]) <= GRID_MAX_OUTPUTS:
                    rows[i] += list(pixels[:GRID_MAX_OUTPUTS + 1 - len(rows[i])])
            done.count += len(kept) * len(labels)
            self.on_progress(len(kept) * len(labels))
        done.grid += [np.concatenate(rows[i], axis=1) for i in sorted(rows)]


def grid_header(x_ref: torch.Tensor | None, num_domains: int) -> np.ndarray | None:
    """A reference-mode grid's top row: a white tile, then the references per domain."""
    if x_ref is None:
        return None
    refs = to_pixels(x_ref)
    white = np.full_like(refs[0], 255)
    return np.concatenate([white, *(list(refs) * num_domains)], axis=1)[
        :, :(1 + GRID_MAX_OUTPUTS) * refs.shape[2]]


def save_grid(rows: list[np.ndarray], path: Path, header: np.ndarray | None = None) -> None:
    from PIL import Image

    if header is not None:
        rows = [header, *rows]
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)


__all__ = ["Source", "expand_inputs", "Seeds", "Request", "parse_domains", "output_path",
           "check_names", "all_outputs", "Alignment", "source_loader", "build_aligner",
           "load_references",
           "style_chunks", "TranslateFiles", "Written", "grid_header", "save_grid",
           "GRID_MAX_ROWS", "GRID_MAX_OUTPUTS", "MAX_OUTPUTS"]
