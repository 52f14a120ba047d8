"""Answer with a model behind an OpenAI-compatible server (llama.cpp's server, vLLM, Ollama).

Through llama-index's OpenAILike chat client: greedy (temperature 0), answers arrive whole rather
than streamed. Such a server cannot score arbitrary continuations, so it serves free decoding only.
Does not choose evidence or check citations; every network wait is bounded.
"""

from collections.abc import Callable
from typing import Any

from assistant.errors import AssistantError
from assistant.generation import Generated


class RemoteLLM:
    def __init__(self, url: str, model: str | None, api_key: str, timeout: float) -> None:
        import openai
        from llama_index.llms.openai_like import OpenAILike

        self.url = url.rstrip("/")
        self.evaluated = 0
        client = openai.OpenAI(base_url=self.url, api_key=api_key, timeout=timeout, max_retries=0)
        listed = self._call(lambda: client.models.list().data)  # also: is it there at all, before any question
        if not (model or listed):
            raise AssistantError(f"the LLM server at {self.url} lists no model; pass --llm-model NAME")
        self.name = model or str(listed[0].id)
        self.llm = OpenAILike(
            model=self.name, api_base=self.url, api_key=api_key, is_chat_model=True, temperature=0.0,
            timeout=timeout, max_retries=0,
            # Plain greedy decoding, as the local model does: llama-cpp-python's server otherwise
            # penalises repeated tokens (1.1), which changed many short answers. vLLM and Ollama
            # ignore fields they do not know.
            additional_kwargs={"extra_body": {"repeat_penalty": 1.0}},
        )

    def chat(self, messages: list[dict[str, str]], max_tokens: int,
             on_text: Callable[[str], None] | None = None) -> Generated:
        from llama_index.core.llms import ChatMessage

        turns = [ChatMessage(role=m["role"], content=m["content"]) for m in messages]
        response = self._call(lambda: self.llm.chat(turns, max_tokens=max_tokens))
        text = (response.message.content or "").strip()
        if on_text and text:
            on_text(text)
        usage = getattr(response.raw, "usage", None)
        if usage is not None:
            self.evaluated += (usage.prompt_tokens or 0) + (usage.completion_tokens or 0)
        return Generated(text)

    def _call(self, work: Callable[[], Any]) -> Any:
        """Run one request; any failure of the server or the network becomes one line naming the URL."""
        import openai

        try:
            return work()
        except openai.APITimeoutError:
            raise AssistantError(f"the LLM server at {self.url} did not answer in time") from None
        except openai.APIConnectionError:
            raise AssistantError(f"cannot reach the LLM server at {self.url}; is it running?") from None
        except openai.APIStatusError as e:
            raise AssistantError(
                f"the LLM server at {self.url} answered HTTP {e.status_code}; "
                "is it an OpenAI-compatible URL ending in /v1?"
            ) from None
        except openai.OpenAIError as e:  # e.g. a reply that is not OpenAI's JSON
            raise AssistantError(f"the LLM server at {self.url} failed ({type(e).__name__})") from None
