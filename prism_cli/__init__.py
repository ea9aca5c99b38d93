"""The `prism` command: `main` (the typer app), `runner` (runs rounds through Dagster and prints what
they made) and `select_files` (`prism select` on files outside a store)."""
