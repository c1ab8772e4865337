"""The README is a front door and docs/ holds the rest: the door stays short, and no link or
command the pages show points at nothing."""

from __future__ import annotations

import contextlib
import importlib.util
import re

from catsdogs_pl.cli import COMMANDS
from catsdogs_pl.places import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
# `catsdogs STAGE` where a shell command starts: not catsdogs_pl, catsdogs-serve, /predictions/catsdogs
STAGE = re.compile(r"(?:^|[;&|(`]|\s)catsdogs[ \t]+([a-z][a-z-]*)(?=\s|$)", re.M)
MODULE = re.compile(r"python3? -m (catsdogs_pl(?:\.\w+)*)")


def code(page):
    return "\n".join(FENCE.findall(page.read_text()))


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_links_every_page():
    linked = set(LINK.findall(README.read_text()))
    assert {f"docs/{page.name}" for page in PAGES[1:]} <= linked


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            path = target.split("#", 1)[0]
            external = re.match(r"https?://|mailto:", path)
            if path and not external and not (page.parent / path).is_file():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken


def test_catsdogs_stages_exist():
    shown = {stage for page in PAGES for stage in STAGE.findall(code(page))}
    assert shown  # the README's quick start shows some
    assert shown <= set(COMMANDS), shown - set(COMMANDS)


def test_python_m_modules_exist():
    shown = {module for page in PAGES for module in MODULE.findall(code(page))}
    assert shown
    missing = []
    for module in sorted(shown):
        try:
            spec = importlib.util.find_spec(module)
            if spec is not None and spec.submodule_search_locations is not None:
                spec = importlib.util.find_spec(f"{module}.__main__")  # a package runs its __main__
        except ModuleNotFoundError:  # a parent package is missing
            spec = None
        if spec is None:
            missing.append(module)
    assert not missing


COMMAND = re.compile(
    r"(?:python3? -m (catsdogs_pl(?:\.\w+)*)|(?:^|\s)catsdogs[ \t]+([a-z][a-z-]*))([^\n|;&#]*)",
    re.M,
)


def _help(words: list[str], capsys) -> str:
    from catsdogs_pl import cli

    with contextlib.suppress(SystemExit):  # argparse's --help exits 0
        cli.main([*words, "--help"])
    return capsys.readouterr().out


def test_every_flag_the_pages_show_exists(capsys):
    """`--flag` on a command of a code block is in that stage's --help (or its subcommand's)."""
    stage_of = {c.module: name for name, c in COMMANDS.items()}
    stage_of["catsdogs_pl.demo_loop"] = "demo"
    missing, seen = [], 0
    for page in PAGES:
        for module, stage, rest in COMMAND.findall(code(page)):
            stage = stage or stage_of.get(module)
            flags = re.findall(r"(?<![\w-])(--[a-z][\w.-]*)", rest)
            if not flags or stage not in COMMANDS or stage == "ui":
                continue
            words = rest.split()
            sub = [words[0]] if words and not words[0].startswith("-") else []
            helps = _help([stage], capsys) + (_help([stage, *sub], capsys) if sub else "")
            for flag in flags:
                seen += 1
                if flag.split("=")[0] not in helps:
                    missing.append(f"{page.name}: catsdogs {stage} {' '.join(sub)} {flag}")
    assert seen > 20 and not missing, (seen, missing)
