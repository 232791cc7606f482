"""`stargan-ray translate`: a trained model on your own images, files, folders and globs.

Outputs are <input stem>_<domain>_seed<k>.png (latent-guided) or <input stem>_<domain>_ref-<ref
stem>.png (reference-guided) in --out; images found in an INPUT folder keep their subfolder
there. A bad input (missing, empty, truncated, not an image, no face with --align) is named and
skipped, the others are translated, and the exit code is 1; usage errors exit 2. The work itself
is stargan_ray.translate (shared with the Serve app).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import FITS
from ..errors import ConfigError
from ..video import ffmpeg_module, is_video
from .common import (WING_FILE, add_alignment_args, add_device_arg, add_model_source_args,
                     check_output, model_config, nonnegative_int, positive_int,
                     resolve_device)

if TYPE_CHECKING:
    from ..translate import Written

BAR_ABOVE = 4  # a progress bar for more outputs than this


def seed_list(text: str):
    """--seeds: "0,1,2" or ranges "0-9" (inclusive), repeats dropped, order kept."""
    from ..translate import Seeds

    try:
        return Seeds.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
        "translate", help="translate your own images and video clips with a model",
        description="Translate each INPUT image or video clip (mp4, mov, webm, mkv, animated "
                    "gif; needs the [video] extra) into the --to domain(s), one output per "
                    "latent seed (--seeds) or per reference image (--ref); a clip becomes an "
                    "H.264 mp4 per style with every frame at its frame rate. Inputs of any size "
                    "and aspect are resized to the model's square size, as the official test "
                    "loader does. Bad inputs are named and skipped (exit code 1).")
    add_model_source_args(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively) and glob patterns "
                        "(quoted, ** for any depth); put them before --ref or after --")
    p.add_argument("--to", required=True, metavar="DOMAIN",
                   help="target domain: a name of the model's domains, its index, or all")
    styles = p.add_mutually_exclusive_group()
    styles.add_argument("--seeds", type=seed_list, default=None,
                        help="latent seeds, e.g. 0,1,2 or 0-9 (each 0 to 2^32 - 1; torch's "
                             "generator keeps 32 bits of a seed): one output each (default: 0)")
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
                   help="also write grid.png: a row per input (the first 64), the input then its "
                        "outputs (the first 64)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs an earlier run wrote (default: refuse)")
    p.add_argument("--no-limit", action="store_true",
                   help="allow more than 10,000 outputs (inputs x domains x styles); they are "
                        "written as they are made, so memory stays flat")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="images through the generator at once (default: %(default)s)")
    p.add_argument("--fit", choices=FITS, default=None,
                   help="how a photo or frame that is not square becomes square: stretch (the "
                        "official resize), crop (the centred square) or pad (a mid-grey border) "
                        "(default: the model's data.fit)")
    p.add_argument("--num-workers", type=nonnegative_int, default=0,
                   help="video clips: spread them over this many Ray workers, each with its own "
                        "copy of the model (inputs and --out on storage every node sees); 0: in "
                        "this process (default: %(default)s)")
    add_device_arg(p)
    p.set_defaults(func=run)


# ---------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    from ..inference import MAX_SEED, Translator
    from ..translate import (GRID_MAX_ROWS, check_names, expand_inputs, grid_header,
                             load_references, parse_domains, save_grid)

    device = resolve_device(args.device)
    if args.psi is not None and args.ref:
        raise ConfigError("--psi: truncates seeded styles; reference styles (--ref) are used "
                          "as they are")
    if args.seeds is not None and args.seeds.largest > MAX_SEED:
        raise ConfigError(f"--seeds: {args.seeds.largest} is above the largest seed {MAX_SEED} "
                          "(2^32 - 1: above it, seeds repeat the styles of smaller ones)")
    cfg, path = model_config(args, "translate")
    translator = Translator.from_checkpoint(path, cfg, device, args.batch_size)
    if not translator.domains_named:
        print(f"stargan-ray translate: note: {path} records no domain names (an official file or "
              f"an older checkpoint) and data.train_dir ({cfg.data.train_dir}) is not readable "
              f"here, so the domains are named by index 0-{translator.num_domains - 1}",
              file=sys.stderr)
    request = _request(args, parse_domains(args.to, translator.domains))
    first_label = next(request.labels(translator.domains))  # also checks the references' names
    sources, bad = expand_inputs(args.inputs)
    clips = [s for s in sources if is_video(s.path)]
    sources = [s for s in sources if not is_video(s.path)]
    if clips:
        ffmpeg_module()  # a missing [video] extra is one line before any work
    _check_count(args, len(sources) + len(clips), request)
    out = check_output(args.out, [a for a in args.inputs if Path(a).is_dir()], kind="dir")
    check_names(sources + clips, out, first_label)
    _check_outputs(args, out, sources + clips, request, translator.domains)

    fit = args.fit or translator.cfg.data.fit
    x_ref = load_references(request.refs, translator.img_size, fit) if request.refs else None
    for item, reason in bad:
        _skip(item, reason)
    done = _translate(args, translator, request, out, x_ref, sources, fit)
    skipped = [item for item, _ in bad] + done.skipped
    if clips:
        from ..translate_ray import translate_clips_on_ray
        from ..video_translate import translate_clips

        aligner = _aligner(args, translator) if args.align else None
        if args.num_workers:
            videos = translate_clips_on_ray(translator, request, out, clips, x_ref, aligner,
                                            fit, args.num_workers)
        else:
            videos = translate_clips(translator, request, out, clips, x_ref, aligner, fit)
        for item, reason in videos.skipped:
            _skip(item, reason)
        skipped += [item for item, _ in videos.skipped]
        print(f"wrote {videos.count} video(s) into {out}")
    if args.grid:
        save_grid(done.grid[:GRID_MAX_ROWS], out / "grid.png",
                  grid_header(x_ref, len(request.domains)))
        print(f"wrote {out / 'grid.png'}")
    print(f"wrote {done.count} image(s) into {out}"
          + (f"; skipped {len(skipped)} input(s): {', '.join(skipped)}" if skipped else ""))
    return 1 if skipped else 0


def _request(args: argparse.Namespace, domains: tuple[int, ...]):
    from ..translate import Request, Seeds

    if args.ref:
        return Request(domains, refs=tuple(Path(r) for r in args.ref))
    return Request(domains, seeds=args.seeds or Seeds([range(1)]),
                   psi=1.0 if args.psi is None else args.psi)


def _check_count(args: argparse.Namespace, num_sources: int, request) -> None:
    from ..translate import MAX_OUTPUTS

    total = num_sources * request.per_source
    if total > MAX_OUTPUTS and not args.no_limit:
        raise ConfigError(f"translate: {num_sources} input(s) x {len(request.domains)} domain(s) "
                          f"x {request.num_styles} style(s) = {total} outputs, above the limit "
                          f"of {MAX_OUTPUTS}; pass --no-limit to write them all")


def _skip(item, reason: str) -> None:
    print(f"stargan-ray translate: skipping {item}: {reason}", file=sys.stderr)


def _skip_source(path: Path, reason: str) -> None:
    if reason:  # "" when data.folders has already named the unreadable file
        _skip(path, reason)


def _check_outputs(args, out: Path, sources, request, names) -> None:
    """No output may be an input or a reference; existing outputs are kept unless --overwrite."""
    from ..translate import all_outputs

    by_name: dict[str, list[Path]] = {}
    for p in [s.path for s in sources] + list(request.refs):
        by_name.setdefault(p.name, []).append(p)  # only same-named inputs can be the same file
    for p in all_outputs(sources, out, request, names):
        check_output(p, by_name.get(p.name, []), overwrite=args.overwrite)
    if args.grid:
        check_output(out / "grid.png", by_name.get("grid.png", []), overwrite=args.overwrite)


def _alignment(args: argparse.Namespace):
    from ..translate import Alignment

    return Alignment(args.lm_mean, args.wing, args.min_confidence, WING_FILE)


def _aligner(args: argparse.Namespace, translator):
    from ..translate import build_aligner

    return build_aligner(translator, _alignment(args))


def _translate(args, translator, request, out: Path, x_ref, sources, fit: str) -> Written:
    """The library's TranslateFiles with this command's aligner, messages and progress bar."""
    from tqdm import tqdm

    from ..translate import GRID_MAX_ROWS, TranslateFiles, source_loader

    prepare = source_loader(translator, _alignment(args) if args.align else None, fit)
    total = len(sources) * request.per_source
    with tqdm(total=total, unit="image", disable=total <= BAR_ABOVE, file=sys.stderr) as bar:
        return TranslateFiles(translator, request, out, prepare, x_ref,
                              grid_rows=GRID_MAX_ROWS if args.grid else 0,
                              on_progress=bar.update,
                              on_skip=_skip_source).run(sources)
