"""Fine-tune a student model on chats, on the assistant tokens only (docs/formulas.md#student).

Each chat is one user turn and one assistant turn, rendered with the base model's chat template and
masked exactly as the proxy masks it (`prismatic.gradients.chat.encode_chat`). The loss of a batch
B is the mean cross-entropy over its assistant tokens A_B,

    L(θ) = −(1/|A_B|) Σ_{t∈A_B} log p_θ(x_t | x_<t)        (nats per assistant token),

minimized with AdamW (linear decay to 0, no warm-up) by TRL's `SFTTrainer` on pre-tokenized rows
(`input_ids`, `assistant_masks`), float32 weights under bfloat16 autocast (faster than float32 on CPUs
with native bf16 matmuls). `lora_rank` r > 0 trains rank-r LoRA adapters (PEFT, alpha = 2r)
on every linear layer and merges them into the weights; r = 0 trains every weight. The saved folder
is a plain transformers model (weights, tokenizer, chat template) that transformers and vLLM load
alike, with `train_report.json` beside it. The same seed, data and thread count give the same weights.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from prismatic.config import StudentConfig
from prismatic.data.chats import turns_of
from prismatic.errors import PrismError
from prismatic.gradients.chat import IGNORE, encode_chat
from prismatic.models import load_causal_lm

REPORT_FILE = "train_report.json"


@dataclass
class TrainReport:
    """What a training run did. `losses`: the training loss of each optimizer step (nats per assistant token)."""

    model_dir: Path
    base_model: str
    method: str
    samples: int
    tokens: int
    assistant_tokens: int
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "model_dir": str(self.model_dir)}


def train_student(chats: Sequence[Sequence[Mapping[str, str]]], out_dir: Path, config: StudentConfig, *,
                  base_model: str | Path, progress: bool = False) -> TrainReport:
    """Fine-tune `base_model` on `chats` with `config`'s epochs, lr, batch size, seed and LoRA rank; save
    the merged model, its tokenizer and `train_report.json` into `out_dir`."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    if not chats:
        raise PrismError("no training chats: the data set is empty")
    started = time.perf_counter()
    set_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_causal_lm(str(base_model), torch.float32, device)
    encoded = [encode_chat(tokenizer, *turns_of(chat), max_tokens=config.max_tokens) for chat in chats]
    rows = Dataset.from_dict({"input_ids": [chat.input_ids.tolist() for chat in encoded],
                              "assistant_masks": [(chat.labels != IGNORE).long().tolist() for chat in encoded]})
    method = "full"
    if config.lora_rank:
        from peft import LoraConfig, get_peft_model

        method = f"lora-r{config.lora_rank}"
        model = get_peft_model(model, LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    with tempfile.TemporaryDirectory(prefix="prism-train-") as scratch:
        args = SFTConfig(output_dir=scratch, num_train_epochs=config.epochs, learning_rate=config.lr,
                         per_device_train_batch_size=config.batch_size, lr_scheduler_type="linear", warmup_steps=0,
                         weight_decay=0.0, optim="adamw_torch", seed=config.seed, data_seed=config.seed,
                         max_length=None, logging_steps=1, save_strategy="no", report_to="none",
                         use_cpu=device.type == "cpu", bf16=True, disable_tqdm=not progress,
                         dataloader_num_workers=0, gradient_checkpointing=False)
        quiet = logging.getLogger("transformers.trainer")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
            trainer.train()
        finally:
            quiet.setLevel(level)
        losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
        steps = int(trainer.state.global_step)
    if config.lora_rank:
        model = model.merge_and_unload()
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    report = TrainReport(model_dir=out_dir, base_model=str(base_model), method=method, samples=len(encoded),
                         tokens=sum(chat.n_tokens for chat in encoded),
                         assistant_tokens=sum(chat.n_assistant for chat in encoded), steps=steps,
                         seconds=round(time.perf_counter() - started, 3), losses=losses)
    (out_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report
