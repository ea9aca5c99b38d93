"""The configuration and command-line references of the documentation site, generated from the code at
`mkdocs build` time (docs/hooks.py): every prism.yaml option by its dotted path, with its type, its default, its
bounds and what its section's docstring says of it (prismatic/config.py, prismatic/config_deploy.py), and every
`prism` command with its usage, arguments and options (the typer app of prism_cli/main.py). Nothing here is
written by hand, so a new option or command appears in the docs by itself."""

from __future__ import annotations

import inspect
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from prismatic.config import PrismConfig

ENTRY = re.compile(r"^(?P<names>[a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*)(?: \([^)]*\))?: (?P<text>\S.*)$")
"""A docstring line that documents fields: `name: text`, `a, b: text` or `name (qualifier): text`."""


@dataclass(frozen=True)
class Option:
    """One prism.yaml option: `path` is dotted (`features.dim`; `[]` marks the items of a list of sections)."""

    path: str
    type: str
    default: str
    bounds: str
    doc: str


def field_docs(section: type[BaseModel]) -> dict[str, str]:
    """What the section's docstring says of each field: an entry starts at the docstring's own indentation with
    `name: ` or `name, other: ` (every name a field of the section) and runs on over more deeply indented lines;
    a blank line or an unindented line that names no field ends it."""
    docs: dict[str, str] = {}
    current: list[str] = []
    for line in inspect.cleandoc(section.__doc__ or "").splitlines()[1:]:
        if current and line.startswith(" ") and line.strip():
            for name in current:
                docs[name] += " " + line.strip()
            continue
        match = ENTRY.match(line)
        names = match["names"].split(", ") if match else []
        current = names if names and all(name in section.model_fields for name in names) else []
        for name in current:
            docs[name] = match["text"]
    return docs


def section_summary(section: type[BaseModel]) -> str:
    """The first paragraph of a section's docstring, on one line."""
    return " ".join(inspect.cleandoc(section.__doc__ or "").split("\n\n")[0].split())


def type_name(annotation: object) -> str:
    """A prism.yaml reader's name for a field's type: `int`, `float`, `"fast" | "faithful"`, `list of str`, …"""
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(f'"{value}"' for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join("null" if arg is type(None) else type_name(arg) for arg in get_args(annotation))
    if origin is list:
        return f"list of {type_name(get_args(annotation)[0])}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def yaml_value(value: object) -> str:
    """A default as prism.yaml would spell it (`null`, `true`, `[math, nli]`, `0.95`)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000).strip().removesuffix(
        "\n...").strip()


def bounds_of(field) -> str:
    """The field's numeric bounds (`> 0`, `≥ 0, ≤ 1`), from its pydantic constraints."""
    parts = []
    for item in field.metadata:
        for kind, sign in ((Gt, ">"), (Ge, "≥"), (Lt, "<"), (Le, "≤")):
            if isinstance(item, kind):
                parts.append(f"{sign} {getattr(item, kind.__name__.lower())}")
    return ", ".join(parts)


def section_model(annotation: object) -> type[BaseModel] | None:
    """The section class of a field holding one section or a list of them (None for other fields)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is list:
        return section_model(get_args(annotation)[0])
    return None


def config_sections(model: BaseModel | type[BaseModel] | None = None, prefix: str = "") \
        -> list[tuple[str, type[BaseModel], list[Option]]]:
    """Every section of prism.yaml, depth first: (dotted path, class, its options). Defaults are read from the
    instance the parent builds (`synthesis.problem_sampling` has other defaults than `SamplingConfig`'s own);
    the items of a list of sections have their class's defaults, and fields without one are `required`."""
    model = PrismConfig() if model is None else model
    cls = model if isinstance(model, type) else type(model)
    docs = field_docs(cls)
    options, nested = [], []
    for name, field in cls.model_fields.items():
        if field.exclude:
            continue
        path = f"{prefix}{name}"
        if isinstance(model, type):
            value = None if field.is_required() else field.get_default(call_default_factory=True)
        else:
            value = getattr(model, name)
        sub = section_model(field.annotation)
        if field.is_required():
            default = "required"
        elif sub is not None and get_origin(field.annotation) is not list and isinstance(value, BaseModel):
            default = "section"
        else:
            default = yaml_value(value)
        doc = docs.get(name) or (section_summary(sub) if sub is not None else "")
        options.append(Option(path, type_name(field.annotation), default, bounds_of(field), doc))
        if isinstance(value, BaseModel):
            nested.append((path + ".", value))
        elif sub is not None and get_origin(field.annotation) is list:
            nested.append((path + "[].", sub))
    found = [(prefix.rstrip("."), cls, options)]
    for sub_prefix, sub_model in nested:
        found += config_sections(sub_model, sub_prefix)
    return found


def config_options() -> list[Option]:
    """Every option of prism.yaml, sections included, depth first."""
    return [option for _, _, options in config_sections() for option in options]


DOC_CITATION = re.compile(r"\bdocs/([\w-]+\.md)(#[\w-]+)?")
DEFAULT_NOTE = re.compile(r"\bdefault ([a-z_]+)\.([a-z_.]+) = ")


def prose(text: str) -> str:
    """Docstring or help text as Markdown: `<` and `>` escaped outside code spans, citations of a docs page
    (`docs/<page>.md#anchor`) made links from reference/, and the `default section.key = value` of a help text
    linked to its option's section."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside backticks
        part = parts[i].replace("<", "&lt;").replace(">", "&gt;")
        part = DOC_CITATION.sub(lambda m: f"[{m[1]}{m[2] or ''}](../{m[1]}{m[2] or ''})", part)
        parts[i] = DEFAULT_NOTE.sub(lambda m: f"default [`{m[1]}.{m[2]}`](configuration.md#{m[1]}) = ", part)
    return "`".join(parts)


def _cell(text: str) -> str:
    return prose(text).replace("|", "\\|").replace("\n", " ")


def config_reference_markdown() -> str:
    """The configuration reference page: one table per section of prism.yaml."""
    lines = [
        "# Configuration reference",
        "",
        "Every option of `$PRISM_HOME/prism.yaml`, generated from the configuration model "
        "(`prismatic/config.py`, `prismatic/config_deploy.py`) each time the site is built: this page is the one "
        "place defaults are written down. Every key is optional; a file sets only what differs, and an unknown key "
        "is refused with its line. `$PRISM_STORE` overrides `store`, and `--store` of `prism demo`, `prism run` "
        "and `prism export` overrides both.",
        "",
        "```yaml",
        "# $PRISM_HOME/prism.yaml, for example: a served generator, a smaller projection",
        "generator:",
        "  backend: openai",
        "  model: Qwen/Qwen2.5-7B-Instruct",
        "  base_urls: [\"http://vllm-0:8000/v1\"]",
        "features: {dim: 1024, final: dense}",
        "```",
        "",
    ]
    for path, cls, options in config_sections():
        title = f"`{path}`" if path else "Top level"
        lines += [f"## {title}", "", prose(section_summary(cls)), ""]
        lines += ["| option | type | default | description |", "|---|---|---|---|"]
        for option in options:
            kind = option.type + (f" ({option.bounds})" if option.bounds else "")
            default = option.default if option.default in ("section", "required") else f"`{option.default}`"
            lines.append(f"| `{option.path}` | {_cell(kind)} | {_cell(default)} | {_cell(option.doc)} |")
        lines.append("")
    return "\n".join(lines)


def _commands(group, words: list[str]):
    """(words, command) of every command below `group`, in the app's order (typer's click: duck-typed)."""
    ctx = group.context_class(group, info_name=" ".join(words))
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if hasattr(command, "list_commands"):
            yield from _commands(command, [*words, name])
        else:
            yield [*words, name], command


def cli_commands():
    """(words, command) of every `prism` command, from the typer app."""
    import typer.main

    from prism_cli.main import app

    return list(_commands(typer.main.get_command(app), ["prism"]))


def cli_params(words: list[str], command) -> list[tuple[str, str, str, str]]:
    """(names, type, default, help) of each argument and option of a command, `--help` aside."""
    ctx = command.context_class(command, info_name=" ".join(words))
    rows = []
    for param in command.get_params(ctx):
        if param.name == "help":
            continue
        descriptor = getattr(param, "type_descriptor", None)
        kind = type_name(descriptor.annotation) if descriptor is not None else ""
        if param.param_type_name == "argument":
            rows.append((param.name.upper() + (" …" if param.nargs == -1 else ""), kind,
                         "required" if param.required else "", param.help or ""))
            continue
        default = ""
        if param.required:
            default = "required"
        elif param.show_default and param.default not in (None, False):
            default = f"`{param.default}`"
        rows.append((", ".join(param.opts), "flag" if kind == "bool" else kind, default, param.help or ""))
    return rows


def cli_reference_markdown() -> str:
    """The command-line reference page: each command's usage, description, arguments and options."""
    lines = [
        "# Command-line reference",
        "",
        "Every `prism` command, generated from the typer app (`prism_cli/main.py`, `prism_cli/student.py`) each time "
        "the site is built. `--json` prints exactly one JSON object on stdout (progress and logs go to stderr); an "
        "error a user can fix is one line `prism: error: …` with exit code 2, and nothing is written. A default "
        "written as `section.key = value` comes from prism.yaml, and `value` is the model's default "
        "([configuration reference](configuration.md)).",
        "",
    ]
    for words, command in cli_commands():
        ctx = command.context_class(command, info_name=" ".join(words))
        usage = " ".join([*words, *command.collect_usage_pieces(ctx)])
        lines += [f"## `{' '.join(words)}`", "", prose(inspect.cleandoc(command.help or "")), "", "```", usage, "```",
                  ""]
        rows = [f"| `{names}` | {_cell(kind)} | {_cell(default)} | {_cell(text)} |"
                for names, kind, default, text in cli_params(words, command)]
        if rows:
            lines += ["| argument or option | type | default | description |", "|---|---|---|---|", *rows, ""]
    return "\n".join(lines)
