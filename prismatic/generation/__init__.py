"""Talking to the generator LLM.

- `requests`: `Sampling` (the `SamplingConfig` fields plus seed and stop), `GenerationRequest` and its key.
- `prompts`: the prompt builders and the parsers of their answers.
- `engines`: the `Engine` interface and its factory (`engines.base`), in-process vLLM (`engines.vllm`),
  OpenAI-compatible servers (`engines.openai`).
- `journal`: the journal that makes a retried step send only the requests it has no answer for.
"""
