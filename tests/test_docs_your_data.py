"""docs/your_data.md: every `stargan-ray` command on the page runs, in order, on small generated
images at the paths the page shows, and prepare's summary is the one the page prints."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stargan_ray.cli import build_parser, main
from stargan_ray.cli.common import experiment_from_args
from stargan_ray.data.table import open_train_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "your_data.md"


def _blocks(text: str, kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", text, re.S)


def _commands() -> list[str]:
    return [line for block in _blocks(DOC.read_text(), "bash") for line in block.splitlines()
            if line.startswith("stargan-ray ")]


def _photo(path: Path, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(path)


def _write_data(root: Path) -> None:
    """The page's paths: my_photos/{train,val}/{cat,dog}, all_photos with labels (3 wide cats,
    34 square dogs), celeba/ with an attributes file."""
    for split in ("train", "val"):
        for d, domain in enumerate(("cat", "dog")):
            for i in range(4):
                _photo(root / "my_photos" / split / domain / f"{i}.jpg", (48, 40), 10 * d + i)
    rows, val_rows = ["path,domain"], ["path,domain"]
    for i in range(3):
        _photo(root / "all_photos" / "2023" / f"IMG_{i:04d}.png", (96 + 2 * i, 32), i)
        rows.append(f"2023/IMG_{i:04d}.png,cat")
    for i in range(3, 37):
        _photo(root / "all_photos" / "2023" / f"IMG_{i:04d}.png", (40, 40), i)
        rows.append(f"2023/IMG_{i:04d}.png,dog")
    val_rows += [rows[1], rows[2], rows[5], rows[6]]
    (root / "all_photos" / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "all_photos" / "val_labels.csv").write_text("\n".join(val_rows) + "\n")
    names = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Smiling"]
    lines = ["12", " ".join(names)]
    for i in range(12):
        values = [-1] * 4
        values[i % 3] = 1
        values[3] = 1 if i % 2 else -1
        _photo(root / "celeba" / "img_align_celeba" / f"{i + 1:06d}.jpg", (36, 44), 100 + i)
        lines.append(f"{i + 1:06d}.jpg " + " ".join(f"{v:2d}" for v in values))
    (root / "celeba" / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")


def test_every_command_of_the_guide_runs(tmp_path, monkeypatch, capsys):
    commands = _commands()
    assert len(commands) >= 6
    _write_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    printed = {}
    for command in commands:
        argv = shlex.split(command)[1:]
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, (command, err)
        printed[command] = out
        if argv[0] == "train":  # --dry-run checks no data: open it as the driver does
            cfg = experiment_from_args(build_parser().parse_args(argv))
            table, bad = open_train_table(cfg)
            assert table.domains == ("cat", "dog") and not bad, command
    crop = next(c for c in commands if "--fit crop" in c)
    shown = _blocks(DOC.read_text(), "text")[0].strip().splitlines()
    got = printed[crop].strip().splitlines()
    assert got[:-1] == shown[:-1]  # all but the content hash
    assert got[-1].startswith("content hash ") and shown[-1] == "content hash ..."
    hair = next(c for c in commands if "--attributes" in c)
    assert "Black_Hair  4" in printed[hair] and "Brown_Hair  4" in printed[hair]
