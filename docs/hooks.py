"""MkDocs hook (mkdocs.yml `hooks:`): adds to the site what is generated from the code or kept elsewhere.

- `reference/configuration.md` and `reference/cli.md`, rendered by `prism_cli.reference` from the configuration
  model and the typer app at every build, so no default or option is written down by hand;
- every report and plot of `benchmarks/results/` and its folders (a study's) as `results/<path>`, so the pages
  link the reports themselves (and the strict build checks those links) instead of copying their figures.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

from prism_cli.reference import cli_reference_markdown, config_reference_markdown

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "reference/configuration.md", content=config_reference_markdown()))
    files.append(File.generated(config, "reference/cli.md", content=cli_reference_markdown()))
    for path in sorted(RESULTS.rglob("*")):
        if path.suffix in {".md", ".png"}:
            files.append(File.generated(config, f"results/{path.relative_to(RESULTS).as_posix()}",
                                        abs_src_path=str(path)))
    return files
