import json
import subprocess
import sys

import pytest
import torch

from prismatic.models import PRESETS, build_chatml_tokenizer, build_random_model


def test_tokenizer_is_deterministic_with_chatml_template():
    a, b = build_chatml_tokenizer(), build_chatml_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    text = a.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert a.convert_tokens_to_ids("<|im_end|>") == a.eos_token_id
    assert a.decode(a("Tom has 3 apples.")["input_ids"]) == "Tom has 3 apples."


def test_tiny_model_shape_and_seeded_weights():
    model, tok = build_random_model("tiny", seed=0)
    again, _ = build_random_model("tiny", seed=0)
    assert model.config.head_dim >= 32  # vLLM's CPU attention refuses smaller heads
    assert model.config.vocab_size == len(tok)
    for (name, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), name


def test_qwen_preset_has_qwen25_05b_parameter_count():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = {k: v for k, v in PRESETS["qwen2.5-0.5b"].items() if k != "dtype"}
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    # Qwen2.5-0.5B-Instruct: 494,032,768 parameters (tied embeddings).
    assert sum(p.numel() for p in model.parameters()) == 494_032_768


def test_models_init_cli_writes_a_loadable_folder(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny"
    result = subprocess.run([sys.executable, "-m", "prism_cli.main", "models", "init", "--preset", "tiny", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "qwen2" and tok.chat_template


@pytest.mark.slow
def test_smollm2_is_installed_dense_and_idempotent(smollm2_dir):
    from transformers import AutoConfig

    from prismatic.models import install_smollm2

    provenance = json.loads((smollm2_dir / "prism-provenance.json").read_text())
    assert "Q4_1" in provenance["note"]
    config = AutoConfig.from_pretrained(smollm2_dir)
    assert config.model_type == "llama" and config.hidden_size == 576 and config.num_hidden_layers == 30
    assert getattr(config, "quantization_config", None) is None
    stamp = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert install_smollm2(smollm2_dir.parent) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == stamp
