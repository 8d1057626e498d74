"""The official `openai` and `ollama` clients, LangChain, and loraflow's own Ollama engine,
unchanged, against the shared real server."""

from __future__ import annotations

import pytest

from loraflow.engines.base import GenerationParams
from loraflow.engines.ollama import OllamaEngine
from tests.e2e.conftest import ADAPTER_NAME
from tests.e2e.server import Server

pytestmark = pytest.mark.integration

BASE = "bundled:smollm2"
HELLO = [{"role": "user", "content": "What is a LoRA adapter? Answer in one sentence."}]


@pytest.fixture(scope="module")
def openai_client(server: Server):
    from openai import OpenAI

    with OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_openai_chat_stream_models_embeddings(openai_client) -> None:
    import openai

    ids = [m.id for m in openai_client.models.list()]
    assert BASE in ids and ADAPTER_NAME in ids
    reply = openai_client.chat.completions.create(
        model=ADAPTER_NAME, messages=HELLO, temperature=0, max_tokens=16
    )
    text = reply.choices[0].message.content
    assert text and reply.usage.completion_tokens > 0
    stream = openai_client.chat.completions.create(
        model=ADAPTER_NAME, messages=HELLO, temperature=0, max_tokens=16, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text
    emb = openai_client.embeddings.create(model="bundled:minilm", input=["one", "two"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    rag = openai_client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "What does LORAFLOW_DATA_DIR do?"}],
        temperature=0,
        max_tokens=16,
        extra_body={"rag": True},
    )
    assert rag.model_extra["sources"]
    with pytest.raises(openai.NotFoundError) as info:
        openai_client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert ADAPTER_NAME in info.value.message


def test_ollama_client_chat_generate_embed_list(server: Server) -> None:
    import ollama

    client = ollama.Client(host=server.url)
    names = [m.model for m in client.list().models]
    assert BASE in names and ADAPTER_NAME in names
    options = {"temperature": 0, "num_predict": 12}
    reply = client.chat(model=ADAPTER_NAME, messages=HELLO, options=options)
    assert reply.message.content and reply.done and reply.eval_count == 12
    pieces = client.chat(model=ADAPTER_NAME, messages=HELLO, options=options, stream=True)
    assert "".join(p.message.content for p in pieces) == reply.message.content
    gen = client.generate(model=BASE, prompt="Why is the sky blue?", options=options)
    assert gen.response and gen.done
    emb = client.embed(model=BASE, input=["one", "two"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) == 384
    assert client.show(ADAPTER_NAME).modelfile.startswith(f"FROM {BASE}")
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="llama3", messages=HELLO)
    assert info.value.status_code == 404


def test_langchain_chat_and_embeddings(server: Server) -> None:
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    llm = ChatOpenAI(
        base_url=f"{server.url}/v1", api_key="unused", model=ADAPTER_NAME, temperature=0,
        max_tokens=16, max_retries=0,
    )  # fmt: skip
    answer = llm.invoke("What is a LoRA adapter?")
    assert answer.content
    assert "".join(c.content for c in llm.stream("What is a LoRA adapter?")) == answer.content
    # check_embedding_ctx_length=False: otherwise LangChain tokenizes with tiktoken (whose
    # vocabulary is a download, impossible offline) and sends token ids, which only mean
    # something to OpenAI's own models; loraflow embeds text.
    emb = OpenAIEmbeddings(
        base_url=f"{server.url}/v1", api_key="unused", model="bundled:minilm",
        check_embedding_ctx_length=False, max_retries=0,
    )  # fmt: skip
    vectors = emb.embed_documents(["one", "two"])
    assert len(vectors) == 2 and len(vectors[0]) == 384
    assert emb.embed_query("one") == pytest.approx(vectors[0], abs=1e-5)


def test_loraflow_ollama_engine_talks_to_loraflow(server: Server) -> None:
    engine = OllamaEngine(server.url, ADAPTER_NAME, timeout=120)
    with engine:
        assert engine.health().ok, engine.health().detail
        params = GenerationParams(max_new_tokens=12, temperature=0)
        result = engine.generate(HELLO, params)
        assert result.text and result.completion_tokens == 12 and result.prompt_tokens > 5
        assert result.finish_reason == "length"
        assert "".join(engine.stream(HELLO, params)) == result.text
    with OllamaEngine(server.url, "absent-model", timeout=30) as missing:
        assert not missing.health().ok and "absent-model" in missing.health().detail


def test_openai_http_engine_talks_to_loraflow(server: Server) -> None:
    from loraflow.engines.openai_http import OpenAIHTTPEngine
    from loraflow.errors import NotFound

    with OpenAIHTTPEngine(f"{server.url}/v1", BASE, api_key="unused") as engine:
        assert engine.health().ok, engine.health().detail
        assert ADAPTER_NAME in engine.adapters()
        params = GenerationParams(max_new_tokens=12, temperature=0)
        result = engine.generate(HELLO, params, adapter=ADAPTER_NAME)
        assert result.completion_tokens == 12 and result.finish_reason == "length"
        assert "".join(engine.stream(HELLO, params, adapter=ADAPTER_NAME)) == result.text
        assert engine.generate(HELLO, params).text != result.text
        with pytest.raises(NotFound, match="'nope'"):
            engine.generate(HELLO, params, adapter="nope")
    with OpenAIHTTPEngine(f"{server.url}/v1", "absent") as missing:
        assert not missing.health().ok and "absent" in missing.health().detail
