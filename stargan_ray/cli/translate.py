"""`stargan-ray translate`: a trained model on your own images, files, folders and globs.

Outputs are <input stem>_<domain>_seed<k>.png (latent-guided) or <input stem>_<domain>_ref-<ref
stem>.png (reference-guided) in --out; images found in an INPUT folder keep their subfolder
there. A bad input (missing, empty, truncated, not an image, no face with --align) is named and
skipped, the others are translated, and the exit code is 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .common import (WING_FILE, add_alignment_args, add_device_arg, add_model_source_args,
                     check_output, model_config, positive_int, resolve_device)

GRID_MAX_ROWS = 64  # --grid shows the first this many inputs (a row each)
BAR_ABOVE = 4  # a progress bar for more inputs than this


def seed_list(text: str) -> list[int]:
    """--seeds: "0,1,2" or ranges "0-9" (inclusive), repeats dropped, order kept."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            seeds += range(int(first), int(last or first) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds such as 0,1,2 or 0-9, got {text!r}") \
            from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r} (a range runs upwards)")
    return list(dict.fromkeys(seeds))


def psi_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "translate", help="translate your own images (files, folders, globs) with a model",
        description="Translate each INPUT image into the --to domain(s), one output per latent "
                    "seed (--seeds) or per reference image (--ref). Inputs of any size and "
                    "aspect are resized to the model's square size, as the official test loader "
                    "does. Bad inputs are named and skipped (exit code 1).")
    add_model_source_args(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively) and glob patterns "
                        "(quoted, ** for any depth); put them before --ref or after --")
    p.add_argument("--to", required=True, metavar="DOMAIN",
                   help="target domain: a name of the model's domains, its index, or all")
    styles = p.add_mutually_exclusive_group()
    styles.add_argument("--seeds", type=seed_list, default=None,
                        help="latent seeds, e.g. 0,1,2 or 0-9: one output each (default: 0)")
    styles.add_argument("--ref", nargs="+", action="extend", metavar="IMAGE",
                        help="reference images: one output each, in the reference's style")
    p.add_argument("--psi", type=psi_value, default=None,
                   help="truncation of seeded styles toward the domain's mean style: 1 none, "
                        "0.7 safer, 0 the mean (default: 1)")
    p.add_argument("--align", action="store_true",
                   help="align faces to CelebA-HQ first (CelebA-HQ models); needs --wing and "
                        "--lm-mean as `stargan-ray align` does")
    add_alignment_args(p, wing_default=None,
                       wing_help=f"FAN checkpoint for --align (default: the model's "
                                 f"model.wing_path, else {WING_FILE})")
    p.add_argument("--out", required=True, help="output folder, created if needed")
    p.add_argument("--grid", action="store_true",
                   help=f"also write grid.png: a row per input (the first {GRID_MAX_ROWS}), the "
                        "input then its outputs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs an earlier run wrote (default: refuse)")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="images through the generator at once (default: %(default)s)")
    add_device_arg(p)
    p.set_defaults(func=run)


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Source:
    path: Path
    subdir: str  # relative folder under an INPUT folder ("" for files and globs)


def expand_inputs(inputs: list[str]) -> tuple[list[Source], list[tuple[str, str]]]:
    """(image files to translate, [(input, why it gives nothing)]): files as given, folders
    recursively (listed as training lists images), globs by their matches; repeats dropped."""
    from ..data.folders import list_image_files

    sources: list[Source] = []
    bad: list[tuple[str, str]] = []

    def add_folder(folder: Path) -> int:
        base = folder.resolve()
        # named below the folder as given, so messages show the paths the user typed
        files = [folder / Path(f).relative_to(base) for f in list_image_files(folder)]
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
    seen: set[Path] = set()
    unique = []
    for s in sources:
        key = s.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique, bad


def parse_domains(text: str, names: list[str]) -> list[int]:
    """--to: a name, an index or all -> domain ids; ConfigError lists the domains."""
    if text == "all":
        return list(range(len(names)))
    if text in names:
        return [names.index(text)]
    if text.isdigit() and int(text) < len(names):
        return [int(text)]
    raise ConfigError(f"--to {text}: not a domain of this model; its domains are "
                      f"{', '.join(names)} (or their indices 0-{len(names) - 1}), or all")


def domain_labels(cfg, path) -> list[str]:
    """The model's domain names (recorded in the checkpoint at path, else read from
    data.train_dir); their indices, said once on stderr, when unknown."""
    from ..checkpoint import read_domains
    from ..inference import domain_names

    names = domain_names(cfg, read_domains(path))
    if names is None:
        n = cfg.model.num_domains
        print(f"stargan-ray translate: note: {path} records no domain names (an official file or "
              f"an older checkpoint) and data.train_dir ({cfg.data.train_dir}) is not readable "
              f"here, so the domains are named by index 0-{n - 1}", file=sys.stderr)
        names = [str(i) for i in range(n)]
    return names


def style_labels(args: argparse.Namespace) -> list[str]:
    """The output name part of each style: seed<k> or ref-<stem> (stems must differ)."""
    if not args.ref:
        return [f"seed{k}" for k in (args.seeds or [0])]
    stems = [Path(r).stem for r in args.ref]
    for stem in stems:
        if stems.count(stem) > 1:
            raise ConfigError(f"--ref: several references are named {stem}; their outputs would "
                              "share a name, rename one")
    return [f"ref-{stem}" for stem in stems]


def output_paths(sources: list[Source], out: Path, labels: list[str]) -> list[list[Path]]:
    """Per source, its output files (one per (domain, style) label); ConfigError on a clash."""
    owner: dict[Path, Path] = {}
    paths = []
    for s in sources:
        row = [out / s.subdir / f"{s.path.stem}_{label}.png" for label in labels]
        for p in row:
            if p in owner:
                raise ConfigError(f"{owner[p]} and {s.path} would both write {p}; translate "
                                  "them into different --out folders")
            owner[p] = s.path
        paths.append(row)
    return paths


# ---------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    from ..inference import Translator

    device = resolve_device(args.device)
    if args.psi is not None and args.ref:
        raise ConfigError("--psi: truncates seeded styles; reference styles (--ref) are used "
                          "as they are")
    cfg, path = model_config(args, "translate")
    names = domain_labels(cfg, path)
    domains = parse_domains(args.to, names)
    labels = [f"{names[y]}_{s}" for y in domains for s in style_labels(args)]
    sources, bad = expand_inputs(args.inputs)
    out = check_output(args.out, [a for a in args.inputs if Path(a).is_dir()], kind="dir")
    outputs = output_paths(sources, out, labels)
    _check_outputs(args, out, sources, outputs)

    translator = Translator.from_checkpoint(path, cfg, device, args.batch_size)
    styles = _styles(args, translator, domains)
    for item, reason in bad:
        _skip(item, reason)
    skipped = [item for item, _ in bad]
    written, grid = _translate_all(args, translator, styles, sources, outputs, skipped)
    if args.grid:
        _save_grid(grid, out / "grid.png", _grid_header(args, translator, len(domains)))
        print(f"wrote {out / 'grid.png'}")
    print(f"wrote {written} image(s) into {out}"
          + (f"; skipped {len(skipped)} input(s): {', '.join(skipped)}" if skipped else ""))
    return 1 if skipped else 0


def _skip(item, reason: str) -> None:
    print(f"stargan-ray translate: skipping {item}: {reason}", file=sys.stderr)


def _check_outputs(args, out: Path, sources: list[Source], outputs: list[list[Path]]) -> None:
    """No output may be an input or a reference; existing outputs are kept unless --overwrite."""
    by_name: dict[str, list[Path]] = {}
    for p in [s.path for s in sources] + [Path(r) for r in args.ref or []]:
        by_name.setdefault(p.name, []).append(p)  # only same-named inputs can be the same file
    for p in [*(p for row in outputs for p in row), *([out / "grid.png"] if args.grid else [])]:
        check_output(p, by_name.get(p.name, []), overwrite=args.overwrite)


def _styles(args, translator, domains: list[int]):
    """(D K, style_dim): the K styles of each target domain, domain-major (as the labels)."""
    import torch

    from ..data.folders import BadImage

    if not args.ref:
        psi = 1.0 if args.psi is None else args.psi
        return torch.cat([translator.latent_styles(y, args.seeds or [0], psi) for y in domains])
    refs = []
    for ref in args.ref:
        try:
            refs.append(_load(ref, translator.img_size))
        except BadImage as err:
            raise ConfigError(f"--ref {ref}: cannot be used as a reference ({err})") from None
    x_ref = torch.stack(refs)
    return torch.cat([translator.reference_styles(x_ref, y) for y in domains])


def _load(path, size: int):
    from ..inference import load_image_tensor

    return load_image_tensor(path, size)


def _source_loader(args, translator):
    """path -> ((3, S, S) source, "") or (None, why it was skipped); raises BadImage."""
    if not args.align:
        return lambda path: (_load(path, translator.img_size), "")
    from ..align import FaceAligner, load_mean_landmarks
    from ..data.folders import load_image
    from ..grids import to_image
    from ..inference import image_to_tensor
    from ..models.fan import load_fan

    mean = load_mean_landmarks(args.lm_mean)
    fan = translator.nets.fan if args.wing is None else None
    if fan is None:
        wing = args.wing or translator.cfg.model.wing_path or WING_FILE
        fan = load_fan(wing, translator.device)
    size = translator.img_size
    # the aligner needs a multiple of 64 (FAN heatmaps); small models align at 256 px
    align_size = size if size % 64 == 0 and size >= 256 else 256
    aligner = FaceAligner(fan, mean, align_size, args.min_confidence)

    def prepare(path):
        x = image_to_tensor(load_image(path), align_size).to(translator.device)
        result = aligner.align(x)
        if result.image is None:
            return None, result.reason
        # quantised as `stargan-ray align` writes it, so align + translate give these pixels
        aligned = to_image(result.image.clamp(-1, 1))
        return image_to_tensor(aligned, size), ""

    return prepare


def _translate_all(args, translator, styles, sources, outputs, skipped: list[str]):
    """Translate in batches, write the PNGs; returns (outputs written, grid rows as uint8)."""
    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    from ..data import folders
    from ..inference import to_pixels

    prepare = _source_loader(args, translator)
    written, grid = 0, []
    bar = tqdm(total=len(sources), unit="image", disable=len(sources) <= BAR_ABOVE,
               file=sys.stderr)
    for start in range(0, len(sources), args.batch_size):
        xs, rows = [], []
        for source, row in zip(sources[start:start + args.batch_size],
                               outputs[start:start + args.batch_size]):
            try:
                x, reason = prepare(source.path)
            except folders.BadImage as err:
                x, reason = None, ""
                folders.report_unreadable(source.path, str(err))
            bar.update(1)
            if x is None:
                if reason:
                    _skip(source.path, reason)
                skipped.append(str(source.path))
                continue
            xs.append(x)
            rows.append(row)
        if not xs:
            continue
        x = torch.stack(xs)
        y = translator.translate(x, styles)
        for x_i, y_i, row in zip(to_pixels(x), y, rows):
            pixels = to_pixels(y_i)
            for image, path in zip(pixels, row):
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
            written += len(row)
            if args.grid and len(grid) < GRID_MAX_ROWS:
                grid.append(np.concatenate([x_i, *pixels], axis=1))
    bar.close()
    return written, grid


def _grid_header(args, translator, num_domains: int):
    """The grid's top row in reference mode: a white tile, then the references per domain."""
    import numpy as np
    import torch

    from ..inference import to_pixels

    if not args.ref:
        return None
    refs = to_pixels(torch.stack([_load(r, translator.img_size) for r in args.ref]))
    white = np.full_like(refs[0], 255)
    return np.concatenate([white, *(list(refs) * num_domains)], axis=1)


def _save_grid(rows, path: Path, header=None) -> None:
    import numpy as np
    from PIL import Image

    if header is not None:
        rows = [header, *rows]
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
