"""The documentation: the configuration and CLI references generated from the code (prism_cli/reference.py), the
defaults the help texts quote (prism_cli/defaults.py), no hand-written default in README or docs, and the site
itself built strictly by MkDocs."""

from __future__ import annotations

import os
import re
import subprocess
from functools import reduce
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from prism_cli.reference import (
    cli_commands,
    cli_params,
    cli_reference_markdown,
    config_options,
    config_reference_markdown,
    field_docs,
)
from prismatic.config import PrismConfig, SamplingConfig, Section

REPO = Path(__file__).resolve().parents[1]


def leaves(value: dict, prefix: str = "") -> dict[str, object]:
    """Dotted path → value of every non-dict entry of a nested dict (the model's dump, walked independently)."""
    found = {}
    for key, item in value.items():
        if isinstance(item, dict) and item and key != "runtime_env":
            found.update(leaves(item, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = item
    return found


def test_field_docs_reads_entries_continuations_and_shared_entries():
    class Planted(Section):
        """A planted section.

        alpha: the first
          entry, continued.
        beta, gamma (fast): shared by two fields.
        Not an entry: a note that ends the previous one.
          delta: indented too deep to start an entry.
        """

        alpha: int = 1
        beta: int = 2
        gamma: int = 3
        delta: int = 4

    assert field_docs(Planted) == {"alpha": "the first entry, continued.", "beta": "shared by two fields.",
                                   "gamma": "shared by two fields."}


def test_the_configuration_reference_lists_every_option_with_the_models_default():
    dumped = leaves(PrismConfig().model_dump(mode="json"))
    options = {option.path: option for option in config_options()}
    scalar = {path: option for path, option in options.items() if "[]" not in path and option.default != "section"}
    assert set(scalar) == set(dumped)
    for path, value in dumped.items():
        assert yaml.safe_load(scalar[path].default) == value, path
    assert len(scalar) > 120  # every section walked, not only the top level


def test_nested_defaults_are_the_parents_not_the_sections_own():
    """synthesis.problem_sampling is built with other values than SamplingConfig's defaults."""
    options = {option.path: option for option in config_options()}
    assert SamplingConfig().max_tokens != PrismConfig().synthesis.problem_sampling.max_tokens
    assert options["synthesis.problem_sampling.max_tokens"].default == str(
        PrismConfig().synthesis.problem_sampling.max_tokens)
    assert options["synthesis.solution_sampling.temperature"].default == str(
        PrismConfig().synthesis.solution_sampling.temperature)
    # the items of a list of sections have their class's defaults; a field without one is required
    assert options["student.eval_sets[].path"].default == "required"
    assert options["student.eval_sets[].format"].default == "auto"
    assert options["features.dim"].bounds == "> 0"


def test_every_option_is_documented():
    """Each option's docstring entry (or, for a section, its class's summary): a new undocumented option fails."""
    assert [option.path for option in config_options() if not option.doc.strip()] == []


def test_the_reference_page_has_a_row_per_option_and_links_cited_docs():
    page = config_reference_markdown()
    for option in config_options():
        assert f"| `{option.path}` |" in page, option.path
    assert "[formulas.md#g-vendi](../formulas.md#g-vendi)" in page
    assert "docs/formulas.md" not in page


def test_the_cli_reference_has_every_command_and_option():
    page = cli_reference_markdown()
    commands = cli_commands()
    names = {" ".join(words) for words, _ in commands}
    assert {"prism gvendi", "prism demo", "prism run", "prism query", "prism export", "prism models install"} <= names
    for words, command in commands:
        assert f"## `{' '.join(words)}`" in page
        for param_names, _, _, _ in cli_params(words, command):
            assert f"| `{param_names}` |" in page, (words, param_names)
    assert "&lt;home&gt;/models" in page  # '<home>' would vanish as an HTML tag


NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?(?![\w.])")
NOTE = re.compile(r"\bdefault:? ([a-z_]+(?:\.[a-z_]+)+) = ")


def default_errors(text: str, model: BaseModel) -> list[str]:
    """What is wrong with the defaults a help text quotes: a `default section.key = value` whose value is not the
    model's, or a number after `default` that no such note gives."""
    errors, rest, end = [], [], 0
    for match in NOTE.finditer(text):
        key = match[1]
        try:
            expected = str(reduce(getattr, key.split("."), model))
        except AttributeError:
            errors.append(f"{key}: no such option")
            continue
        after = text[match.end():]
        given = after.split()[0].rstrip(").;,") if after.split() else ""
        if not after.startswith(expected) or after[len(expected):len(expected) + 1].isalnum():
            errors.append(f"{key} = {given}, but the model's default is {expected}")
        rest.append(text[end:match.start()])
        end = match.end() + (len(expected) if after.startswith(expected) else len(given))
    rest.append(text[end:])
    for clause in re.findall(r"\bdefault\b([^()]*)", "".join(rest)):
        errors += [f"hand-written default {number!r}" for number in NUMBER.findall(clause)]
    return errors


def test_the_default_checker_catches_a_wrong_or_hand_written_default():
    model = PrismConfig()
    assert default_errors("Projection dimension (default 1024).", model) == ["hand-written default '1024'"]
    assert default_errors("Projection dimension (default features.dim = 1024).", model) == [
        f"features.dim = 1024, but the model's default is {model.features.dim}"]
    assert default_errors(f"Projection dimension (default features.dim = {model.features.dim}).", model) == []
    assert default_errors("(default features.nope = 3)", model) == ["features.nope: no such option",
                                                                     "hand-written default '3'"]


def test_every_default_in_the_cli_help_is_the_models():
    model = PrismConfig()
    notes, errors = 0, {}
    for words, command in cli_commands():
        for names, _, _, text in cli_params(words, command):
            notes += len(NOTE.findall(text))
            if found := default_errors(text, model):
                errors[f"{' '.join(words)} {names}"] = found
    assert errors == {}
    assert notes >= 10  # the options that fall back to prism.yaml quote its defaults


def test_no_hand_written_default_in_the_readme_or_the_docs():
    """A default is written down once, in the model; prose names the option instead of its value."""
    pattern = re.compile(r"\bdefaults?\b[:\s(]*(?:is\s+|of\s+)?-?\d")
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    found = {str(page.relative_to(REPO)): pattern.findall(page.read_text(encoding="utf-8")) for page in pages}
    assert {page: hits for page, hits in found.items() if hits} == {}


def test_the_readme_stays_a_front_door():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "```sh\nmake demo\n```" in text and "```sh\nmake test\n```" in text
    assert text.count("[start:demo-table]") == 1 and text.count("[end:demo-table]") == 1


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "mkdocs").exists(), reason="mkdocs is in the dev extra")
def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a missing page, image or included file fails it."""
    done = subprocess.run([str(REPO / ".venv" / "bin" / "mkdocs"), "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    configuration = (tmp_path / "site" / "reference" / "configuration" / "index.html").read_text(encoding="utf-8")
    assert "features.dim" in configuration and str(PrismConfig().features.dim) in configuration
    assert (tmp_path / "site" / "results" / "REPORT" / "index.html").is_file()
    assert "r002" in (tmp_path / "site" / "getting-started" / "index.html").read_text(encoding="utf-8")
