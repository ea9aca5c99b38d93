"""The one configuration model: `$PRISM_HOME/prism.yaml`, validated at load.

`PRISM_HOME` defaults to `./.prism`. Every section is optional; unknown keys are refused, and every
error names the file, the line and the dotted field, e.g.
`.prism/prism.yaml:4: field 'features.dim': Input should be greater than 0`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prismatic.errors import InputError

CONFIG_FILE = "prism.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataFields(_Section):
    """Which fields of a user's JSONL/Parquet rows hold the id, the prompt and the response."""

    id_field: str = "id"
    prompt_field: str = "prompt"
    response_field: str = "response"


class FeaturesConfig(_Section):
    """Gradient features of the proxy model (DESIGN §7).

    proxy: a folder under `$PRISM_HOME/models`, a path, or a Hugging Face id.
    mode: `fast` (batched, factored per-layer projection; see fast_gradients) or `faithful` (the
      paper code's method: one backward per sample, dense projection of the full gradient).
    dim: projection dimension d (G-Vendi's rank is at most min(n, d)).
    seed: seed of the Rademacher projection; features of different seeds are never mixed.
    max_tokens: truncate each chat to this many tokens (None: never truncate; recorded when used).
    model_dtype: dtype of the proxy's weights and gradients.
    projection_dtype: dtype the dense projection multiplies in (accumulation is always float32).
    gradient_buffer_gb: (faithful) RAM for per-sample flattened gradients awaiting projection; each
      random sign block is generated once per buffer, so larger buffers amortize generation better.
    block_in, block_out: (fast) per-layer projection sizes k_in, k_out; each linear layer gives a
      k_out × k_in block; a side no larger than its block size is kept exactly.
    batch_tokens: (fast) padded tokens per forward+backward batch; bounds memory.
    device: "auto" picks CUDA when available.
    """

    proxy: str = "smollm2-135m-instruct"
    mode: Literal["fast", "faithful"] = "fast"
    dim: int = Field(1024, gt=0)
    seed: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, gt=0)
    model_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    projection_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    gradient_buffer_gb: float = Field(8.0, gt=0)
    block_in: int = Field(32, gt=0)
    block_out: int = Field(32, gt=0)
    batch_tokens: int = Field(4096, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class PrismConfig(_Section):
    """Everything in `prism.yaml`. `home` is where the file lives, not a key in it."""

    data: DataFields = DataFields()
    features: FeaturesConfig = FeaturesConfig()
    store: str | None = None

    home: Path = Field(default=Path(".prism"), exclude=True)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def store_uri(self) -> str:
        return self.store or str(self.home / "store")


def resolve_home(home: str | Path | None = None) -> Path:
    """`--home` if given, else `$PRISM_HOME`, else `./.prism`."""
    return Path(home or os.environ.get("PRISM_HOME") or ".prism")


def load_config(home: str | Path | None = None) -> PrismConfig:
    """Read and validate `<home>/prism.yaml`; a missing file means all defaults."""
    home_path = resolve_home(home)
    path = home_path / CONFIG_FILE
    raw: dict[str, Any] = {}
    root_node = None
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        try:
            root_node = yaml.compose(text)
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise InputError(path, f"invalid YAML: {getattr(exc, 'problem', exc)}",
                             line=mark.line + 1 if mark else None) from None
        if not isinstance(raw, dict):
            raise InputError(path, "the top level must be a mapping of sections", line=1)
    try:
        config = PrismConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(part) for part in err["loc"]]
        raise InputError(path, err["msg"], line=_line_of(root_node, loc), field=".".join(loc)) from None
    config.home = home_path
    return config


def _line_of(node: Any, loc: list[str]) -> int | None:
    """1-based line of the deepest YAML node along `loc` (the key itself when it is unknown)."""
    line = None
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == key:
                line = key_node.start_mark.line + 1
                node = value_node
                break
        else:
            break
    return line
