"""The round atlas: one self-contained HTML page per round that shows its gradient space (a 2-D map of the
pool and the round's candidates), its clusters, the rounds so far, its rejections and a searchable sample
table (`prism report`, the `round_report` asset). `gather` reads the store (`gather.py`), `project` maps
the features to 2-D (`projection.py`), `render`/`write_report` build the page (`figures.py`, `page.py`,
`assets/`), `map_png` draws the small map for Dagster's metadata (`png.py`). No Dagster, no CLI here.
"""
