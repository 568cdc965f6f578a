"""The documentation keeps up with the code: every configuration key and every command.

The site (``mkdocs.yml``, ``docs/``) is the one place each command and each configuration key
is documented. These tests read the code (the configuration dataclasses, the command lines'
own ``--help``) and fail when the site lacks something, shows a default the code does not
have, or documents a configuration key twice. They need no mkdocs: only the strict build at
the end does, and it skips without it (``.ci/run`` builds the site anyway).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README_MAX_LINES = 250
PAGE_MAX_LINES = 1500
CONFIG_PAGE = DOCS / "configuration.md"
AGENT_PAGE = DOCS / "agent.md"


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _site_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in _pages())


def _table_rows(text: str) -> list[tuple[str, list[str], bool]]:
    """Every Markdown table row outside code blocks: (line, cells, is_header)."""
    rows, lines, fenced = [], text.splitlines(), False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        header = i + 1 < len(lines) and re.match(r"^\|\s*:?-", lines[i + 1]) is not None
        rows.append((line, cells, header))
    return rows


# --- sizes ---------------------------------------------------------------------------------

def test_readme_is_at_most_250_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it within {README_MAX_LINES} and move detail "
        "into the documentation site (docs/)")


def test_no_docs_page_is_over_1500_lines():
    long = {str(p.relative_to(ROOT)): n for p in _pages()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > PAGE_MAX_LINES}
    assert not long, f"split these pages (at most {PAGE_MAX_LINES} lines each): {long}"


# --- the configuration reference -----------------------------------------------------------

def _config_sections() -> dict[str, dict[str, object]]:
    """Every TOML section of the agent's configuration and its keys' defaults, from the code."""
    config = pytest.importorskip("edge.config", reason="the configuration needs the edge package")
    sections = {}
    for f in dataclasses.fields(config.AgentConfig):
        if f.name == "source":  # where the file was read from; not a TOML key
            continue
        default = f.default_factory()  # type: ignore[misc]
        sections[f.name] = {k.name: getattr(default, k.name) for k in dataclasses.fields(default)}
    return sections


def _toml(value: object) -> str:
    """A default as the reference writes it: a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return repr(value)


def _reference_tables() -> dict[str, dict[str, str]]:
    """``configuration.md``: for each ``## `[section]` `` heading, key -> default shown."""
    tables: dict[str, dict[str, str]] = {}
    section = None
    for line in CONFIG_PAGE.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^## `\[(\w+)\]`\s*$", line)
        if heading:
            section = heading.group(1)
            tables[section] = {}
        elif line.startswith("## "):
            section = None
        elif section and line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            key, default = cells[0].strip("`"), cells[1]
            assert default.startswith("`") and default.endswith("`"), (
                f"[{section}] {key}: write the default as code, e.g. `0.6`: {line}")
            tables[section][key] = default[1:-1]
    return tables


def test_every_config_key_is_in_the_reference_with_the_codes_default():
    code, page = _config_sections(), _reference_tables()
    assert list(page) == list(code), (
        "configuration.md must have one '## `[section]`' table per section, in the code's "
        f"order: code {list(code)}, page {list(page)}")
    for section, keys in code.items():
        missing = [k for k in keys if k not in page[section]]
        assert not missing, f"[{section}] keys missing from docs/configuration.md: {missing}"
        stale = [k for k in page[section] if k not in keys]
        assert not stale, f"[{section}] keys in docs/configuration.md but not in the code: {stale}"
        for key, default in keys.items():
            assert page[section][key] == _toml(default), (
                f"[{section}] {key}: docs/configuration.md shows `{page[section][key]}`, the "
                f"code's default is `{_toml(default)}`")


def test_config_keys_are_documented_only_in_the_reference():
    """Other pages link to the reference; a second table of keys would drift from it."""
    keys = {(s, k) for s, ks in _config_sections().items() for k in ks}
    twice = []
    for page in _pages():
        if page == CONFIG_PAGE:
            continue
        for line, cells, header in _table_rows(page.read_text(encoding="utf-8")):
            found = re.match(r"^`\[(\w+)\] (\w+)", cells[0])
            if not header and found and (found.group(1), found.group(2)) in keys:
                twice.append(f"{page.relative_to(ROOT)}: {line[:80]}")
    assert not twice, "configuration keys documented outside docs/configuration.md " \
                      "(link to it instead):\n" + "\n".join(twice)


def test_the_example_config_names_every_key():
    """``edge/config.example.toml`` (installed as /etc/neuroedge/config.toml) lists them all."""
    text = (ROOT / "edge" / "config.example.toml").read_text(encoding="utf-8")
    for section, keys in _config_sections().items():
        assert f"[{section}]" in text, f"edge/config.example.toml lacks [{section}]"
        block = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
        missing = [k for k in keys if not re.search(rf"^{k} = ", block, re.M)]
        assert not missing, f"edge/config.example.toml [{section}] lacks {missing}"


# --- commands ------------------------------------------------------------------------------

def _click_options(command) -> list[str]:
    import click

    names = []
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            names += [o for o in param.opts + param.secondary_opts if o.startswith("--")]
    return [n for n in names if n != "--help"]


def test_every_edge_agent_command_and_option_is_in_the_site():
    pytest.importorskip("click", reason="the agent's command line needs click (edge extra)")
    cli = pytest.importorskip("edge.cli").cli
    site, agent = _site_text(), AGENT_PAGE.read_text(encoding="utf-8")
    missing = [o for o in _click_options(cli) if o not in site]
    for name, command in cli.commands.items():
        headings = re.findall(rf"^#+ `edge-agent {re.escape(name)}`\s*$", site, re.M)
        if len(headings) != 1:
            missing.append(f"one heading '`edge-agent {name}`' (found {len(headings)})")
        section = agent.split(f"`edge-agent {name}`", 1)[-1].split("\n## ", 1)[0]
        missing += [f"{name} {o}" for o in _click_options(command) if o not in section]
    documented = set(re.findall(r"^#+ `edge-agent ([\w-]+)`", site, re.M))
    stale = sorted(documented - set(cli.commands))
    assert not missing, f"edge-agent commands or options not documented in docs/agent.md: {missing}"
    assert not stale, f"the site documents edge-agent commands that do not exist: {stale}"


# Every other command line of the project, by `python -m MODULE`, read from its own --help.
WORKSTATION_CLIS = ["trainer", "trainer.audit", "converters.tflite", "converters.trust",
                    "converters.score", "converters.rule", "converters.benchmark", "benchmarks",
                    "edge.benchmark"]


def _help(args: list[str]) -> str | None:
    result = subprocess.run([sys.executable, "-m", *args, "--help"], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    return result.stdout if result.returncode == 0 else None


def _help_options(text: str) -> set[str]:
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    return options - {"--help"}


def _click_subcommands(text: str) -> list[str]:
    if "\nCommands:" not in text:
        return []
    block = text.split("\nCommands:", 1)[1]
    return re.findall(r"^  ([a-z][\w-]*)\s", block, re.M)


@pytest.mark.parametrize("module", WORKSTATION_CLIS)
def test_every_workstation_command_and_option_is_in_the_site(module):
    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        pytest.skip(f"{top} is not installed")
    text = _help([module])
    if text is None:
        pytest.skip(f"python -m {module} --help fails here (its extra is not installed)")
    site = _site_text()
    missing = [f"python -m {module}"] if f"python -m {module}" not in site else []
    missing += sorted(o for o in _help_options(text) if o not in site)
    for sub in _click_subcommands(text):
        sub_text = _help([module, sub]) or ""
        if f"python -m {module} {sub}" not in site:
            missing.append(f"python -m {module} {sub}")
        missing += sorted(f"{sub} {o}" for o in _help_options(sub_text) if o not in site)
    assert not missing, f"not documented in docs/: {missing}"


# --- the site's structure ------------------------------------------------------------------

def _nav_and_not_in_nav() -> tuple[list[str], list[str]]:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = re.findall(r"^\s+- (?:[^:\n]+: )?([\w./-]+\.md)\s*$", text.split("\nnav:", 1)[1], re.M)
    block = re.search(r"^not_in_nav: \|\n((?:  .*\n)+)", text, re.M)
    patterns = [p.strip().lstrip("/") for p in block.group(1).splitlines()] if block else []
    return nav, patterns


def test_every_page_is_in_the_navigation():
    nav, not_in_nav = _nav_and_not_in_nav()
    missing = [n for n in nav if not (DOCS / n).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist: {missing}"
    pages = [str(p.relative_to(DOCS)) for p in _pages()]
    left_out = [p for p in pages if p not in nav
                and not any(fnmatch.fnmatch(p, pat) for pat in not_in_nav)]
    assert not left_out, f"pages missing from mkdocs.yml's nav: {left_out}"


def test_the_architecture_map_names_every_module():
    """docs/architecture.md is the map of the code: each module of the four parts, and each
    script under deploy/ and trainer/, is named there (a new one left off is found here)."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    files = [p for part in ("edge", "trainer", "converters", "benchmarks", "deploy")
             for p in (ROOT / part).rglob("*") if p.suffix in (".py", ".sh")
             and p.name != "__init__.py" and "__pycache__" not in p.parts]
    missing = sorted(str(p.relative_to(ROOT)) for p in files if f"`{p.name}`" not in text
                     and f"`{p.relative_to(ROOT)}`" not in text)
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_nothing_refers_to_the_old_readme_parts():
    """README.md is no longer assembled from docs/readme/*.md; those parts are gone."""
    files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT,
                           check=True).stdout.split()
    this = str(Path(__file__).relative_to(ROOT))
    found = []
    for name in files:
        path = ROOT / name
        if name in (this, "docs/testing.md") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if "docs/readme" in text or "assemble.sh" in text:
            found.append(name)
    assert not found, f"references to docs/readme/ or assemble.sh remain in: {found}"


def test_readme_links_resolve():
    """README.md is read on GitHub, outside mkdocs' link check: its links must exist too."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    broken = [link for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
              if "://" not in link and not (ROOT / link).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"


def test_readme_test_command_is_what_ci_runs():
    """The README's second command and .ci/run install the same extras and run the same steps."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line for line in readme.splitlines()
                   if line.startswith("python3 -m venv") and "pytest" in line)
    steps = [s.strip().replace(".venv/bin/", "") for s in command.split("&&")]
    extras = re.search(r"-e '(\.\[[^\]]+\])'", steps[1]).group(1)
    assert f"-e '{extras}'" in ci, f".ci/run must install {extras} as the README does"
    ci_lines = [line.strip() for line in ci.splitlines() if line.strip()
                and not line.lstrip().startswith("#")]
    position = 0
    for step in steps[2:]:
        matches = [i for i, line in enumerate(ci_lines) if line.endswith(step) and i >= position]
        assert matches, f"the README's step '{step}' is not run by .ci/run (in this order)"
        position = matches[0]


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    """The site builds with every link and anchor resolved (what .ci/run checks)."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                             "--site-dir", str(tmp_path / "site")],
                            capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
