"""Talking to the generator LLM: requests and sampling, prompts and their parsers, the engines
(in-process vLLM, OpenAI-compatible servers) and the journal that makes a retried step send only the
requests it has no answer for."""
