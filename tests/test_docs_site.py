"""The documentation site: the generated references equal a fresh run of tools/gen_reference.py
and name every config key and command flag, `mkdocs build --strict` passes (and fails on a broken
link), every command the pages show runs or parses, and the architecture page names every room."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stargan_ray import config
from stargan_ray.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REGENERATE = "run `python tools/gen_reference.py` and commit docs/reference/"
# The pages whose commands this test runs or parses (a test checks that no page is left out).
PAGES = ("index.md", "getting_started.md", "troubleshooting.md", "architecture.md",
         "contributing.md", "training.md", "cluster.md", "data.md", "tune.md", "evaluation.md",
         "using.md", "parity.md", "speed.md", "ray.md")
OWN_TESTS = {"your_data.md": "tests/test_docs_your_data.py"}
README_MAX_LINES = 300
SHELL_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "<", "&"}
BUILD_TIMEOUT_S = 120  # a hang guard: the build takes about a second


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "tools" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _mkdocs(config_file: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(config_file), "--site-dir", str(site)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=BUILD_TIMEOUT_S)


def test_the_committed_references_equal_a_fresh_run(tmp_path):
    _generator().write(tmp_path)
    for name in ("config.md", "cli.md"):
        fresh, committed = (tmp_path / name).read_text(), (DOCS / "reference" / name).read_text()
        assert fresh == committed, f"docs/reference/{name} is out of date: {REGENERATE}"


def test_every_config_key_is_in_the_reference():
    page = (DOCS / "reference" / "config.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+\.\w+)` \| (.*)$", page, re.M))
    assert sorted(rows) == sorted(config.config_keys()), REGENERATE
    assert "`name`" in page
    # the range and the choices reach the page, from BOUNDS and CHOICES
    assert "a power of two >= 32 and <= 1024" in rows["model.img_size"].replace("&gt;", ">") \
        .replace("&lt;", "<")
    assert "`rollback`" in rows["train.nan_policy"]
    # and the comment beside or above a field, read from the source
    assert "halve lambda_ds every this many steps" in rows["loss.ds_step_every"]
    assert "width of the mapping network" in rows["model.hidden_dim"]
    unexplained = [key for key, row in rows.items() if row.rstrip().endswith("|  |")]
    assert unexplained == [], "give these fields a comment in stargan_ray/config.py"


def test_every_command_and_flag_is_in_the_reference():
    page = (DOCS / "reference" / "cli.md").read_text()
    sections = dict(re.findall(r"^## `([\w-]+)` \{#[\w-]+\}\n(.*?)(?=^## |\Z)", page, re.M | re.S))
    commands = _subcommands()
    assert sorted(sections) == sorted(commands), REGENERATE
    for name, command in commands.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings or [action.dest]:
                assert f"`{flag}`" in sections[name], f"{name} {flag}: {REGENERATE}"


def test_the_site_builds_strictly_offline(tmp_path):
    result = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    for page in ("index.html", "reference/config/index.html", "reference/cli/index.html",
                 "your_data/index.html", "ray/index.html", "search/search_index.json"):
        assert (tmp_path / "site" / page).is_file(), page


def test_a_broken_link_fails_the_build(tmp_path):
    shutil.copytree(DOCS, tmp_path / "docs")
    page = tmp_path / "docs" / "troubleshooting.md"
    page.write_text(page.read_text() + "\nSee [a page that is not there](missing.md).\n")
    config_file = tmp_path / "mkdocs.yml"
    config_file.write_text((ROOT / "mkdocs.yml").read_text()
                           .replace("docs_dir: docs", f"docs_dir: {tmp_path / 'docs'}"))
    result = _mkdocs(config_file, tmp_path / "site")
    assert result.returncode != 0 and "missing.md" in result.stderr


def _commands(block: str) -> list[str]:
    """The command lines of a bash block: comments dropped, and lines joined where a command goes
    on (a trailing backslash, or a quotation still open at the end of the line)."""
    found, pending = [], ""
    for line in block.splitlines():
        line = line.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # no closing quotation yet
            continue
        found.append(pending)
        pending = ""
    assert not pending, f"a shown command does not end: {pending}"
    return found


def _bash_blocks(text: str) -> list[tuple[bool, list[str]]]:
    """(needs something the tests lack, command lines) for each bash block of a page."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        needs = block.lstrip().startswith("# needs:")
        found.append((needs, _commands(block)))
    return found


def _blocks() -> list[tuple[str, bool, list[str]]]:
    """(page, needs something the tests lack, command lines) for each bash block of PAGES."""
    return [(name, needs, lines) for name in PAGES
            for needs, lines in _bash_blocks((DOCS / name).read_text())]


def _simple_commands(line: str) -> list[list[str]]:
    """A shell line split at its operators (&&, |, ;, redirections) into its commands."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current, redirected = [], [], False
    for token in lexer:
        if token in SHELL_OPERATORS:
            if current:
                commands.append(current)
            current, redirected = [], token in (">", ">>", "<")
        elif not redirected:  # the word after a redirection is its file, not a command
            current.append(token)
    if current:
        commands.append(current)
    return commands


def _parse_only(line: str) -> None:
    """A command the tests cannot run: the shell parses it, and every `stargan-ray` command in
    it (also after `ray job submit ... --` or an environment assignment) parses with the CLI."""
    for argv in _simple_commands(line):
        if "stargan-ray" in argv:
            try:
                build_parser().parse_args(argv[argv.index("stargan-ray") + 1:])
            except SystemExit:
                pytest.fail(f"the shown command does not parse: {line}")


def _run_known(argv: list[str], tmp_path: Path) -> None:
    """The commands other than stargan-ray and make that the pages show."""
    if argv[:2] == ["python", "tools/gen_reference.py"] and len(argv) == 2:
        out = tmp_path / "reference"
        subprocess.run([sys.executable, str(ROOT / "tools" / "gen_reference.py"), str(out)],
                       check=True, capture_output=True, timeout=BUILD_TIMEOUT_S)
        assert (out / "cli.md").read_text() == (DOCS / "reference" / "cli.md").read_text()
    elif argv[:3] == ["mkdocs", "build", "--strict"]:
        result = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "shown-site")
        assert result.returncode == 0, result.stderr
    else:
        pytest.fail(f"a page shows {shlex.join(argv)!r}, which tests/test_docs_site.py does not "
                    "know how to run")


def test_every_command_on_the_pages_runs_or_parses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    blocks = _blocks()
    assert sum(len(lines) for _, _, lines in blocks) >= 6
    for page, needs, lines in blocks:
        for line in lines:
            argv = shlex.split(line, comments=True)
            if needs:
                _parse_only(line)  # exits 2 on an unknown flag
            elif argv[0] == "stargan-ray":
                build_parser().parse_args(argv[1:])  # exits 2 on an unknown flag
                code = main(argv[1:])
                assert code == 0, (page, line, capsys.readouterr().err)
            elif argv[0] == "make":
                made = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True,
                                      text=True, timeout=BUILD_TIMEOUT_S)
                assert made.returncode == 0, (page, line, made.stderr)
                shown = re.findall(r"^\.venv/bin/stargan-ray (.*)$", made.stdout, re.M)
                for command in shown:  # what the target would run parses
                    build_parser().parse_args(shlex.split(command))
                assert shown or argv[1:] != ["demo"], made.stdout
            else:
                _run_known(argv, tmp_path)


def test_the_architecture_page_names_every_room():
    package = ROOT / "stargan_ray"
    rooms = {f"stargan_ray/{p.name}" + ("/" if p.is_dir() else "")
             for p in package.iterdir()
             if (p.suffix == ".py" and p.name not in ("__init__.py", "__main__.py"))
             or (p.is_dir() and (p / "__init__.py").is_file())}
    named = set(re.findall(r"^\| `(stargan_ray/[\w./]+)` \|", (DOCS / "architecture.md").read_text(),
                           re.M))
    assert named == rooms


def test_the_readme_is_short_undated_and_its_commands_parse():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, "move the detail to a page under docs/"
    dated = re.findall(r"\b20\d\d-\d\d(?:-\d\d)?\b", text)
    assert dated == [], f"dated run records belong on the pages under docs/: {dated}"
    blocks = _bash_blocks(text)
    shown = [line for _, lines in blocks for line in lines]
    assert "make demo" in shown[0] and "make test" in shown[1], "the two commands come first"
    assert sum("stargan-ray" in line for line in shown) >= 5, shown
    for line in shown:
        _parse_only(line)
    for page in re.findall(r"\]\(docs/([\w/]+\.md)(?:#[\w-]+)?\)", text):
        assert (DOCS / page).is_file(), page



def test_every_flag_of_every_command_has_help():
    missing = [f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
               for name, command in _subcommands().items() for action in command._actions
               if not isinstance(action, argparse._HelpAction)
               and not (action.help or "").strip()]
    assert missing == [], f"give these arguments help text in stargan_ray/cli/: {missing}"


def test_a_shown_command_with_an_unknown_flag_fails():
    page = ("```bash\n# needs: a cluster\nray job submit --address http://HEAD:8265 -- \\\n"
            "    stargan-ray train --experiment toy --no-such-flag && echo done\n```\n")
    [(needs, lines)] = _bash_blocks(page)
    assert needs and lines == ["ray job submit --address http://HEAD:8265 -- stargan-ray train "
                               "--experiment toy --no-such-flag && echo done"]
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _parse_only(lines[0])
    _parse_only(lines[0].replace(" --no-such-flag", ""))


def test_every_page_has_its_commands_checked():
    pages = {page.name for page in DOCS.glob("*.md")}
    unchecked = sorted(pages - set(PAGES) - set(OWN_TESTS))
    assert unchecked == [], f"add these pages to PAGES in tests/test_docs_site.py: {unchecked}"
