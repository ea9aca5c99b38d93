import pytest

from prismatic.config import PrismConfig
from prismatic.config_file import load_config, resolve_home
from prismatic.errors import InputError


def test_defaults_without_a_file(tmp_path):
    config = load_config(tmp_path)
    assert config == PrismConfig(home=tmp_path)
    assert (config.features.dim, config.features.final) == (4096, "sparse")
    assert config.features.proxy == "smollm2-135m-instruct"
    assert config.models_dir == tmp_path / "models"


def test_values_are_read(tmp_path):
    (tmp_path / "prism.yaml").write_text("features:\n  dim: 512\n  seed: 7\ndata:\n  prompt_field: question\n")
    config = load_config(tmp_path)
    assert (config.features.dim, config.features.seed, config.data.prompt_field) == (512, 7, "question")


@pytest.mark.parametrize("text, line, field, message", [
    ("features:\n  dim: -3\n", 2, "features.dim", "greater than 0"),
    ("features:\n  dim: 1024\n  colour: blue\n", 3, "features.colour", "Extra inputs"),
    ("stores: x\n", 1, "stores", "Extra inputs"),
    ("features:\n  model_dtype: float16\n", 2, "features.model_dtype", "'float32' or 'bfloat16'"),
    ("synthesis:\n  seed: 1\n  kmeans_backend: gpu\n", 3, "synthesis.kmeans_backend", "'auto', 'faiss' or 'bf16'"),
])
def test_errors_name_file_line_and_field(tmp_path, text, line, field, message):
    path = tmp_path / "prism.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_config(tmp_path)
    assert (info.value.line, info.value.field) == (line, field)
    assert message in str(info.value) and str(path) in str(info.value)


def test_invalid_yaml_and_non_mapping(tmp_path):
    (tmp_path / "prism.yaml").write_text("features:\n  dim: [1, 2\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(tmp_path)
    (tmp_path / "prism.yaml").write_text("- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        load_config(tmp_path)


def test_home_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("PRISM_HOME", raising=False)
    assert str(resolve_home()) == ".prism"
    monkeypatch.setenv("PRISM_HOME", str(tmp_path))
    assert resolve_home() == tmp_path
    assert resolve_home("elsewhere") == type(tmp_path)("elsewhere")


def test_prism_store_overrides_the_files_store_when_the_file_is_loaded(monkeypatch, tmp_path):
    (tmp_path / "prism.yaml").write_text("store: s3://bucket/prefix\n")
    monkeypatch.delenv("PRISM_STORE", raising=False)
    assert load_config(tmp_path).store_uri == "s3://bucket/prefix"
    monkeypatch.setenv("PRISM_STORE", str(tmp_path / "elsewhere"))
    config = load_config(tmp_path)
    assert config.store_uri == str(tmp_path / "elsewhere")
    monkeypatch.delenv("PRISM_STORE")
    assert config.store_uri == str(tmp_path / "elsewhere")  # read once, at load: not a property of the environment
    assert PrismConfig(home=tmp_path).store_uri == str(tmp_path / "store")


def test_sparse_final_stage_needs_the_fast_path(tmp_path):
    (tmp_path / "prism.yaml").write_text("features:\n  mode: faithful\n  final: sparse\n")
    with pytest.raises(InputError, match=r"prism.yaml:1: field 'features': .*final: sparse is the fast path"):
        load_config(tmp_path)
    (tmp_path / "prism.yaml").write_text("features:\n  final: sparse\n")
    assert load_config(tmp_path).features.final == "sparse"
    (tmp_path / "prism.yaml").write_text("features:\n  mode: faithful\n")  # the default final is the fast path's
    assert load_config(tmp_path).features.mode == "faithful"


@pytest.mark.parametrize("text, line, field, message", [
    ("generator:\n  backend: openai\n  budget_tokens: -5\n", 3, "generator.budget_tokens", "greater than 0"),
    ("generator:\n  budget_usd: -0.5\n  prices: {input_usd_per_million: 1, output_usd_per_million: 2}\n", 2,
     "generator.budget_usd", "greater than 0"),
    ("generator:\n  prices:\n    input_usd_per_million: 0.15\n", 2, "generator.prices.output_usd_per_million",
     "Field required"),
    ("generator:\n  prices: {input_usd_per_million: -1, output_usd_per_million: 2}\n", 2,
     "generator.prices.input_usd_per_million", "greater than or equal to 0"),
    ("generator:\n  budget_usd: 5\n", 2, "generator.budget_usd", "a budget in USD needs prices"),
    ("generator:\n  backend: openai\n  max_requests_per_minute: 0\n", 3, "generator.max_requests_per_minute",
     "greater than 0"),
    ("generator:\n  max_tokens_per_minute: 1000\n", 2, "generator.max_tokens_per_minute",
     "applies to backend 'openai' only"),
])
def test_bad_limits_are_one_line_naming_the_key(tmp_path, text, line, field, message):
    path = tmp_path / "prism.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_config(tmp_path)
    assert (info.value.line, info.value.field) == (line, field)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_limits_budget_and_prices_are_read(tmp_path):
    (tmp_path / "prism.yaml").write_text(
        "generator:\n  backend: openai\n  max_requests_per_minute: 600\n  max_tokens_per_minute: 200000\n"
        "  budget_usd: 2.5\n  budget_tokens: 1000000\n"
        "  prices: {input_usd_per_million: 0.15, output_usd_per_million: 0.6}\n")
    generator = load_config(tmp_path).generator
    assert (generator.max_requests_per_minute, generator.max_tokens_per_minute) == (600, 200000)
    assert (generator.budget_usd, generator.budget_tokens) == (2.5, 1000000)
    assert (generator.prices.input_usd_per_million, generator.prices.output_usd_per_million) == (0.15, 0.6)
