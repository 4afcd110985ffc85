"""edgekit serve on tiny models, driven by the official openai client and raw HTTP: the OpenAI shapes,
streaming equal to whole answers, every bad request a 400 (or 401/403/404/413/429) with a message,
a disconnect that frees the engine, queued requests that never interleave."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import edgekit

pytestmark = pytest.mark.system  # edgekit serve as a real process

openai = pytest.importorskip("openai")  # in the test extra; importorskip only names it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgekit.cli", "serve", *args, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw
        )

    def stop(self) -> str:
        self.proc.terminate()
        try:
            return self.proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return ""


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoint, tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The tiny Qwen2 as GGUF with its window of 256 ("gguf") and widened to 2048 ("wide": room for a
    schema or tools stated in the prompt), and a tiny BERT."""
    root = tmp_path_factory.mktemp("serve")
    return {
        "gguf": edgekit.convert(
            str(tiny_checkpoint("qwen2")), to="gguf", quant="fp32", output=root / "chat", verify=False
        ).path,
        "wide": edgekit.convert(
            str(tiny_model.parent / "ckpt"), to="gguf", quant="fp32", output=root / "wide", verify=False
        ).path,
        "bert": edgekit.convert(
            str(tiny_checkpoint("bert")), to="onnx", quant="fp32", output=root / "emb", verify=False
        ).path,
    }


# OpenAI's embeddings API takes cl100k_base token ids, which LangChain's OpenAIEmbeddings sends by
# default. tiktoken fetches that encoding's file from the network once; offline, the client and the
# server both get this small byte-level stand-in under the same name (a sitecustomize for the server).
STAND_IN_CL100K = r"""
import tiktoken, tiktoken.registry
_ranks = {bytes([i]): i for i in range(256)}
for _pair in (b"a ", b"ca", b"do", b"t ", b"g "):
    _ranks[_pair] = len(_ranks)
tiktoken.registry.ENCODINGS["cl100k_base"] = tiktoken.Encoding(
    name="cl100k_base", pat_str=r"\S+\s*|\s+", mergeable_ranks=_ranks, special_tokens={})
"""


@pytest.fixture(scope="module")
def stand_in_cl100k(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("cl100k")
    (site / "sitecustomize.py").write_text(STAND_IN_CL100K)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def server(artifacts, stand_in_cl100k):
    s = Server([f"chat={artifacts['wide']}", f"emb={artifacts['bert']}", "--max-body", "20000"],
               env=stand_in_cl100k)
    yield s
    s.stop()


def test_models_chat_completions_and_embeddings_through_the_openai_client(server, artifacts):
    c = server.client()
    assert [m.id for m in c.models.list()] == ["chat", "emb"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    whole = c.chat.completions.create(model="chat", messages=messages, max_tokens=12, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    pieces, usage = [], None
    for chunk in c.chat.completions.create(
        model="chat",
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            last_finish = chunk.choices[0].finish_reason or None
        else:
            usage = chunk.usage
    assert (
        "".join(pieces) == whole.choices[0].message.content and last_finish == whole.choices[0].finish_reason
    )
    with edgekit.load(artifacts["wide"]) as eng:  # the same numbers as the engine's own
        direct = eng.chat(messages, max_tokens=12, temperature=0)
        assert direct.text == whole.choices[0].message.content
        assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (
            direct.tokens_in,
            direct.tokens_out,
        )
        assert usage is not None and usage.total_tokens == direct.tokens_in + direct.tokens_out
        raw = eng.generate("Once upon a time", max_tokens=8, temperature=0)
    comp = c.completions.create(model="chat", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert comp.choices[0].text == raw.text and comp.usage.completion_tokens == raw.tokens_out
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model="chat", prompt="Once upon a time", max_tokens=8, temperature=0, stream=True
        )
        if ch.choices
    )
    assert streamed == raw.text
    emb = c.embeddings.create(model="emb", input=["a cat", "a dog"])  # the client asks for base64
    floats = c.embeddings.create(model="emb", input="a cat", encoding_format="float")
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == len(floats.data[0].embedding)
    assert emb.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert emb.usage.prompt_tokens > 0
    health = httpx.get(f"{server.url}/health").json()
    assert health == {"status": "ok", "models": ["chat", "emb"]}


def test_logprobs_through_the_openai_client(server):
    """Chat: logprobs and top_logprobs, whole and streamed (they come with the finishing chunk); the
    legacy completions' logprobs=N in their own shape."""
    c = server.client()
    ask = {"model": "chat", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 6,
           "temperature": 0, "logprobs": True, "top_logprobs": 2}
    whole = c.chat.completions.create(**ask)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
               for t in content)  # greedy: the chosen token is the likeliest
    text = whole.choices[0].message.content
    assert "".join(bytes(t.bytes).decode("utf-8", "replace") for t in content) == text
    streamed = [t for chunk in c.chat.completions.create(**ask, stream=True)
                if chunk.choices and chunk.choices[0].logprobs for t in chunk.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]  # llama.cpp: equal within 1e-5
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=1e-4)
    legacy = c.completions.create(model="chat", prompt="Once upon", max_tokens=4, temperature=0, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4 and lp.text_offset[0] == 0
    assert whole.choices[0].logprobs is not None and c.chat.completions.create(
        **{**ask, "logprobs": False, "top_logprobs": None}).choices[0].logprobs is None


def test_langchain_with_its_default_settings(server, monkeypatch):
    """LangChain's ChatOpenAI and OpenAIEmbeddings as they come: the chat answers, structured output
    parses, a bound tool is called with its arguments, and the embeddings, sent as cl100k_base token ids
    (tiktoken), equal those of the same texts sent as text."""
    langchain_openai = pytest.importorskip("langchain_openai")
    import tiktoken.registry

    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "cl100k_base", None)  # restored afterwards
    exec(STAND_IN_CL100K, {})
    sent: list[httpx.Request] = []
    recorder = httpx.Client(event_hooks={"request": [sent.append]})  # sees what goes over the wire
    chat = langchain_openai.ChatOpenAI(model="chat", base_url=f"{server.url}/v1", api_key="unused",
                                       max_tokens=8, max_retries=0)
    assert isinstance(chat.invoke("Say hi").content, str)
    roomy = langchain_openai.ChatOpenAI(model="chat", base_url=f"{server.url}/v1", api_key="unused",
                                        max_tokens=64, max_retries=0, temperature=0)
    person = roomy.with_structured_output({"title": "Person", "type": "object", "required": ["name"],
                                           "properties": {"name": {"type": "string", "maxLength": 8}}},
                                          method="json_schema").invoke("Invent a person")
    assert set(person) == {"name"} and isinstance(person["name"], str)  # parsed: the schema held
    add = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["a"]}}}
    called = roomy.bind_tools([add], tool_choice="any").invoke("Add")  # "any": OpenAI's "required"
    assert [c["name"] for c in called.tool_calls] == ["add"] and 0 <= called.tool_calls[0]["args"]["a"] <= 9
    embedder = langchain_openai.OpenAIEmbeddings(model="emb", base_url=f"{server.url}/v1", api_key="unused",
                                                 max_retries=0, http_client=recorder)
    vectors = embedder.embed_documents(["a cat", "a dog"])
    inputs = [json.loads(r.content)["input"] for r in sent if r.url.path.endswith("/embeddings")]
    assert inputs and all(isinstance(ids, list) and all(isinstance(i, int) for i in ids)
                          for ids in inputs[0]), inputs  # token ids went over the wire, not text
    as_text = server.client().embeddings.create(model="emb", input=["a cat", "a dog"],
                                                encoding_format="float")
    for ours, theirs in zip(vectors, as_text.data, strict=True):
        assert np.linalg.norm(np.array(ours) - np.array(theirs.embedding)) < 1e-4
    bad = httpx.post(f"{server.url}/v1/embeddings", json={"model": "emb", "input": [[1, 2, 10**6]]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
    assert "not a cl100k_base token id" in bad.json()["error"]["message"]


def test_structured_output_and_tool_calls_through_the_openai_client(server):
    """parse() with a pydantic model; tools with "required" and a named choice, whole and streamed (the
    calls' deltas carry index, id, name and arguments); a tool's result in the conversation."""
    pydantic = pytest.importorskip("pydantic")

    class Town(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=10)
        founded: int = pydantic.Field(ge=0, le=2100)

    c = server.client()
    parse = getattr(c.chat.completions, "parse", None) or c.beta.chat.completions.parse
    r = parse(model="chat", messages=[{"role": "user", "content": "A town?"}], response_format=Town,
              max_tokens=150, temperature=0.8, seed=1)
    town = r.choices[0].message.parsed
    assert isinstance(town, Town) and 0 <= town.founded <= 2100 and r.choices[0].finish_reason == "stop"
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"]}}}
    ask = [{"role": "user", "content": "Weather?"}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        whole = c.chat.completions.create(model="chat", messages=ask, tools=[tool], tool_choice=choice,
                                          max_tokens=200, temperature=0)
        (call,) = whole.choices[0].message.tool_calls
        assert whole.choices[0].finish_reason == "tool_calls" and whole.choices[0].message.content is None
        assert call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments)["city"], str)
        deltas, finish = [], None
        for chunk in c.chat.completions.create(model="chat", messages=ask, tools=[tool], tool_choice=choice,
                                               max_tokens=200, temperature=0, stream=True):
            deltas += chunk.choices[0].delta.tool_calls or []
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls" and [d.index for d in deltas] == [0]
        assert deltas[0].id.startswith("call_")
        assert deltas[0].function.arguments == call.function.arguments  # greedy: the same call
    answered = ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                      {"role": "tool", "tool_call_id": call.id, "content": "12 C"}]
    after = c.chat.completions.create(model="chat", messages=answered, tools=[tool], max_tokens=4)
    assert after.choices[0].message.role == "assistant"


def test_llm_cli_as_its_users_configure_it(server, tmp_path):
    """Simon Willison's `llm` with the server as an OpenAI-compatible model (its extra-openai-models.yaml):
    a prompt streams an answer; --schema (response_format) gives JSON of that shape."""
    llm = Path(sys.executable).with_name("llm")
    if not llm.exists():
        pytest.skip("llm is not installed (the test extra has it)")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: tiny\n  model_name: chat\n  api_base: {server.url}/v1\n  supports_schema: true\n")
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path), "OPENAI_API_KEY": "unused"}
    p = subprocess.run([str(llm), "-m", "tiny", "-o", "max_tokens", "6", "Say hi"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},  # bounded: a
              "age": {"type": "integer", "minimum": 0, "maximum": 120}},  # random model writes on and on
              "required": ["name", "age"]}
    p = subprocess.run([str(llm), "-m", "tiny", "--schema", json.dumps(schema), "-o", "temperature", "0",
                        "-o", "max_tokens", "300", "Invent a person"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    person = json.loads(p.stdout)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int), p.stdout


@pytest.mark.parametrize(
    "body,status,says",
    [
        (
            {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "temperature": -1},
            400,
            "temperature",
        ),
        ({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "top_p": 5}, 400, "top_p"),
        (
            {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
            400,
            "max_tokens",
        ),
        ({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n must be 1"),
        (
            {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
            400,
            "number",
        ),
        ({"model": "chat", "messages": []}, 400, "messages must be a non-empty list"),
        ({"model": "chat", "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0]"),
        ({"model": "chat", "messages": [{"role": "user", "content": 5}]}, 400, "content must be a string"),
        (
            {"model": "chat", "messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 16},
            400,
            "max_tokens is 16, but the context window is 2048",
        ),
        ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "no model named 'nope'"),
        ({"model": "emb", "messages": [{"role": "user", "content": "hi"}]}, 400, "embedding model"),
        ({"model": "chat", "input": "hi"}, 400, "a text generator"),
    ],
)
def test_each_bad_request_is_answered_with_its_reason(server, body, status, says):
    path = "/v1/embeddings" if "input" in body else "/v1/chat/completions"
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == status and says in r.json()["error"]["message"], r.text
    assert r.json()["error"]["type"]


def test_bad_bodies_and_foreign_hosts(server):
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b"{not json",
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    big = {"model": "chat", "messages": [{"role": "user", "content": "x" * 30000}]}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=big, timeout=30)
    assert r.status_code == 413 and "20000 bytes" in r.json()["error"]["message"]

    def chunked():  # no Content-Length: counted as it arrives
        yield json.dumps(big).encode()

    r = httpx.post(f"{server.url}/v1/chat/completions", content=chunked(), timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = httpx.get(f"{server.url}/v1/models", headers={"host": "attacker.example:8080"}, timeout=30)
    assert r.status_code == 403 and "loopback" in r.json()["error"]["message"]  # DNS rebinding
    assert (
        httpx.get(f"{server.url}/v1/models", headers={"host": f"localhost:{server.port}"}).status_code == 200
    )


def test_an_api_key_and_a_public_address(artifacts):
    p = subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "serve", str(artifacts["gguf"]), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "give an API key" in p.stderr and "Traceback" not in p.stderr
    s = Server([str(artifacts["gguf"]), "--api-key", "s3cret"])
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        assert [m.id for m in s.client(api_key="s3cret").models.list()] == ["chat"]
    finally:
        log = s.stop()
    # one access line per request: who, what, the status, how long (and the model and user named)
    assert '"GET /v1/models" 401' in log and '"GET /v1/models" 200' in log, log


@pytest.fixture(scope="module")
def slow_server(artifacts, tmp_path_factory):
    """A server whose llama.cpp takes 50 ms more per token, one request waiting at most."""
    from helpers import slow_tokens_env

    env = slow_tokens_env(tmp_path_factory.mktemp("slow-site"), 0.05)
    s = Server([str(artifacts["gguf"]), "--max-queue", "2"], env=env)
    yield s
    s.stop()


def test_a_client_that_disconnects_frees_the_engine(slow_server):
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Tell a long story"}],
        "max_tokens": 200,
        "temperature": 0,
        "stream": True,
    }
    start = time.monotonic()
    with httpx.stream("POST", f"{slow_server.url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = [line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data:")]
    assert len(got) >= 3  # a few tokens came, then the client went away (200 would take 10 s)
    c = slow_server.client()
    reply = c.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.usage.completion_tokens == 3 and time.monotonic() - start < 8


def test_a_full_queue_answers_429_with_retry_after(slow_server):
    async def go():
        async with httpx.AsyncClient(timeout=120) as http:
            body = {
                "model": "chat",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 20,
                "temperature": 0,
            }
            return await asyncio.gather(
                *(http.post(f"{slow_server.url}/v1/chat/completions", json=body) for _ in range(5))
            )

    answers = asyncio.run(go())
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) == 2 and codes.count(429) == 3, codes  # one running and one waiting
    refused = next(r for r in answers if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1 and "queued" in refused.json()["error"]["message"]


def test_concurrent_clients_get_their_own_answers(server, artifacts):
    prompts = [f"Question number {i}: what comes next?" for i in range(8)]
    with edgekit.load(artifacts["wide"]) as eng:
        alone = [eng.chat(p, max_tokens=16, temperature=0).text for p in prompts]

    async def ask(client, prompt):
        pieces = []
        stream = await client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=16,
            temperature=0,
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
        return "".join(pieces)

    async def go():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        return await asyncio.gather(*(ask(client, p) for p in prompts))

    assert asyncio.run(go()) == alone


def test_parallel_streams_decode_together_each_as_alone(tiny_model, artifacts):
    """--parallel 3 on an ONNX model: six clients at once, three decoded together and three waiting for
    a row; each answer is the one it gets alone. Streams too small for a prompt are refused by name."""
    prompts = [f"Question number {i}: what comes next?" for i in range(6)]
    with edgekit.load(tiny_model) as eng:
        alone = [eng.chat(p, max_tokens=12, temperature=0).text for p in prompts]
    s = Server([f"chat={tiny_model}", "--parallel", "3"])
    try:
        async def ask(client, prompt: str, stream: bool) -> str:
            kw = {"model": "chat", "messages": [{"role": "user", "content": prompt}], "max_tokens": 12,
                  "temperature": 0}
            if not stream:
                return (await client.chat.completions.create(**kw)).choices[0].message.content
            pieces = []
            async for chunk in await client.chat.completions.create(stream=True, **kw):
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
            return "".join(pieces)

        async def go():
            client = openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=120)
            return await asyncio.gather(*(ask(client, p, i % 2 == 0) for i, p in enumerate(prompts)))

        assert asyncio.run(go()) == alone
        page = httpx.get(f"{s.url}/metrics", timeout=30)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
        values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                  for line in page.text.splitlines() if line and not line.startswith("#")}
        assert values['edgekit_streams{model="chat"}'] == 3
        assert values['edgekit_requests_total{model="chat"}'] == 6
        assert values['edgekit_requests_running{model="chat"}'] == 0
        assert values['edgekit_tokens_generated_total{model="chat"}'] == 6 * 12
        assert 0 < values['edgekit_ttft_seconds{model="chat",quantile="0.5"}'] < 60
        assert values['edgekit_decode_tokens_per_second{model="chat",quantile="0.95"}'] > 0
    finally:
        err = s.stop()
    assert "3 streams of 682 tokens" in err
    refused = subprocess.run([sys.executable, "-m", "edgekit.cli", "serve", f"chat={artifacts['gguf']}",
                              "--parallel", "16", "--port", str(_free_port())],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "model 'chat'" in refused.stderr and "tokens per stream" in refused.stderr


def test_drive_by_requests_from_web_pages_are_refused(server):
    """A page in the user's browser may POST here without a preflight (text/plain, a form, a typeless
    Blob) and may send any Origin: only JSON bodies, and only pages of this machine."""
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    url = f"{server.url}/v1/chat/completions"
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"content-type": kind} if kind else {}
        r = httpx.post(url, content=body.encode(), headers=headers, timeout=30)
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"], kind
    for origin in ("https://evil.example", "null", "http://attacker.example:8080", "file://"):
        r = httpx.post(url, content=body.encode(), timeout=30,
                       headers={"content-type": "application/json", "origin": origin})
        assert r.status_code == 403 and "web page" in r.json()["error"]["message"], origin
        assert httpx.get(f"{server.url}/v1/models", headers={"origin": origin}, timeout=30).status_code == 403
    for origin in ("http://localhost:5173", f"http://127.0.0.1:{server.port}", "http://[::1]:3000"):
        r = httpx.post(url, content=body.encode(), timeout=60,
                       headers={"content-type": "application/json; charset=utf-8", "origin": origin})
        assert r.status_code == 200, (origin, r.text)


def test_malformed_bodies_are_400s_and_the_next_request_is_answered(server):
    url = f"{server.url}/v1/chat/completions"
    ok = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        (b'{"model": "chat", "x": ' + b"[" * 9000 + b"]" * 9000 + b"}", "too deep"),
        (json.dumps(ok)[:-1].encode() + b', "seed": ' + b"9" * 5000 + b"}", "5000 digits"),
        (json.dumps(ok)[:-1].encode() + b', "temperature": NaN}', "NaN"),
        (json.dumps({**ok, "stream": True, "stream_options": "include_usage"}).encode(), "stream_options"),
        (json.dumps({**ok, "stream": True, "stream_options": ["include_usage"]}).encode(), "stream_options"),
        (json.dumps({**ok, "stream": "yes"}).encode(), "stream must be true or false"),
    ]
    for raw, says in cases:
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 400 and says in r.json()["error"]["message"], (raw[:60], r.text[:300])
    assert httpx.post(url, json=ok, timeout=30).status_code == 200


def test_a_conversation_of_100001_messages_costs_what_the_window_holds(slow_server):
    """3.7 MB of one-character turns (under the body limit): the oldest leave before anything is
    rendered or counted, so the answer comes in seconds (it took minutes when every fit re-rendered
    the whole conversation), and so does the next request."""
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x"} for i in range(100_001)]
    start = time.monotonic()
    r = httpx.post(f"{slow_server.url}/v1/chat/completions", timeout=120,
                   json={"model": "chat", "messages": messages, "max_tokens": 2, "temperature": 0})
    took = time.monotonic() - start
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] <= 256, r.text[:300]
    assert took < 30, took
    r = httpx.post(f"{slow_server.url}/v1/completions", timeout=120,  # 3.5 MB in one prompt
                   json={"model": "chat", "prompt": "word " * 700_000, "max_tokens": 2})
    assert r.status_code == 400 and "prompt is at least" in r.json()["error"]["message"], r.text[:300]
    start = time.monotonic()
    c = slow_server.client()
    assert c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                     max_tokens=2).usage.completion_tokens == 2
    assert time.monotonic() - start < 5


def test_a_client_that_drops_a_whole_answer_frees_the_engine(slow_server):
    """Not streamed: the client gives up after a second (200 tokens would take 10 s); the server
    notices, cancels the generation, and the next request is answered at once."""
    body = {"model": "chat", "messages": [{"role": "user", "content": "Tell a long story"}],
            "max_tokens": 200, "temperature": 0}
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{slow_server.url}/v1/chat/completions", json=body, timeout=1.0)
    reply = slow_server.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.usage.completion_tokens == 3 and time.monotonic() - start < 5


def test_sigterm_stops_the_server_while_it_generates(artifacts, tmp_path_factory):
    import threading

    from helpers import slow_tokens_env

    s = Server([str(artifacts["gguf"])], env=slow_tokens_env(tmp_path_factory.mktemp("slow"), 0.05))
    answers: list[int] = []

    def ask() -> None:  # 400 tokens: 20 s, while the client stays connected
        try:
            answers.append(httpx.post(f"{s.url}/v1/chat/completions", timeout=60, json={
                "model": "chat", "messages": [{"role": "user", "content": "Tell a long story"}],
                "max_tokens": 400}).status_code)
        except httpx.HTTPError:
            answers.append(0)

    worker = threading.Thread(target=ask)
    worker.start()
    time.sleep(1.5)
    start = time.monotonic()
    s.proc.terminate()
    try:
        s.proc.wait(timeout=15)
    finally:
        s.proc.kill()
        worker.join(timeout=60)
    assert time.monotonic() - start < 5 and s.proc.returncode is not None
    assert "Traceback" not in s.proc.stderr.read()


def test_a_port_that_cannot_be_used_is_refused_before_any_model_loads(artifacts):
    from helpers import cli

    p = cli("serve", str(artifacts["gguf"]), "--port", "70000")
    assert p.returncode == 1 and "port must be between 0 and 65535" in p.stderr
    assert "Traceback" not in p.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        p = cli("serve", "/nonexistent/model", "--port", str(port))  # the port is named, not the model
        assert p.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr


@pytest.mark.parametrize("field,value", [
    ("function_call", "auto"), ("logit_bias", {"1": 5}),
    ("functions", [{"name": "f"}]), ("frobnicate", 1), ("service_tier", "flex"),
])
def test_a_field_the_server_does_not_implement_is_a_400_naming_it(server, field, value):
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, field: value}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "unsupported_parameter" and error["param"] == field
    assert f"'{field}'" in error["message"]


def test_fields_that_ask_for_nothing_and_the_cheap_ones_are_served(server):
    c = server.client()
    reply = c.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0,
        logprobs=False, response_format={"type": "text"}, tool_choice="none", user="alice",
        frequency_penalty=1.5, presence_penalty=0.5, seed=3, stop=["\n\n"])
    assert reply.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as refused:  # a schema it cannot enforce: a 400 naming it
        c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                  response_format={"type": "json_schema", "json_schema": {
                                      "name": "x", "schema": {"not": {"type": "string"}}}})
    assert refused.value.body["param"] == "response_format" and "Unimplemented keys" in str(refused.value)
    assert c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                     max_tokens=2).choices  # and the server goes on
    for bad, param in [({"temperature": 3}, "temperature"), ({"top_p": 1.5}, "top_p"),
                       ({"frequency_penalty": 2.5}, None), ({"echo": True}, "echo"),
                       ({"suffix": "x"}, "suffix")]:
        path = "/v1/completions" if "echo" in bad or "suffix" in bad else "/v1/chat/completions"
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", **bad}
        body.pop("prompt" if path.endswith("chat/completions") else "messages")
        r = httpx.post(server.url + path, json=body, timeout=30)
        assert r.status_code == 400 and (param is None or r.json()["error"]["param"] == param), r.text
    ok = httpx.post(f"{server.url}/v1/embeddings", json={"model": "emb", "input": "a", "dimensions": 999})
    assert ok.status_code == 400 and ok.json()["error"]["param"] == "dimensions"


def test_routes_answer_in_openais_shape_and_the_only_model_is_the_default(server):
    assert httpx.get(f"{server.url}/v1/models/chat").json() == {
        "id": "chat", "object": "model", "created": httpx.get(f"{server.url}/v1/models").json()["data"][0][
            "created"], "owned_by": "edgekit"}
    for method, path, status in [("GET", "/v1/models/nope", 404), ("GET", "/v1/nothing", 404),
                                 ("GET", "/v1/chat/completions", 405), ("DELETE", "/v1/models", 405)]:
        r = httpx.request(method, server.url + path, timeout=30)
        assert r.status_code == status and r.json()["error"]["message"], (path, r.text)
    # one text generator and one embedder: a request without "model" gets the one that does its task
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "chat"
    r = httpx.post(f"{server.url}/v1/embeddings", json={"input": ["a", "b"]}, timeout=60)
    assert r.status_code == 200 and r.json()["model"] == "emb" and len(r.json()["data"]) == 2
