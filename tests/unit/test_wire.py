"""The server's OpenAI wire translation, without a server: request bodies in, edgekit calls and
response objects out (edgekit/server/wire.py imports no web framework)."""

from __future__ import annotations

import base64
import json
import sys

import numpy as np
import pytest

from edgekit.server import wire
from edgekit.server.wire import ApiError


def test_the_wire_module_needs_no_web_framework():
    import subprocess

    code = ("import sys, edgekit.server.wire, edgekit.server.admission; print(sorted(m for m in "
            "('fastapi', 'starlette', 'uvicorn', 'sse_starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("raw,message", [
    (b"{", "not valid JSON"), (b"[1]", "JSON object"), (b"\xff", "not valid JSON"),
    # the parser's limits, each a 400 and never a 500: depth, long integers, non-finite numbers
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too deep"),
    (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "too deep"),
    (b'{"messages": [{"role": "user", "content": "x"}], "seed": ' + b"7" * 5000 + b"}", "5000 digits"),
    (b'{"max_tokens": -' + b"1" * 19 + b"}", "19 digits"),
    (b'{"temperature": NaN}', "NaN is not a JSON number"), (b'{"top_p": -Infinity}', "-Infinity"),
    (b'{"temperature": 1e999}', "too large"),
])
def test_a_body_must_be_a_json_object(raw, message):
    with pytest.raises(ApiError, match=message) as caught:
        wire.parse_body(raw)
    assert caught.value.status == 400 and caught.value.body()["error"]["type"] == "invalid_request_error"


def test_what_the_parser_limits_leave_alone():
    body = wire.parse_body(b'{"a": ' + b"[" * 31 + b"]" * 31 + b', "seed": 123456789012345678, "t": 0.5}')
    assert body["seed"] == 123456789012345678 and body["t"] == 0.5


def test_chat_messages_join_text_parts_and_map_developer_to_system():
    body = {"messages": [{"role": "developer", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "Hel"},
                                                      {"type": "text", "text": "lo"}]}]}
    assert wire.chat_messages(body) == [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Hello"}]


@pytest.mark.parametrize("messages,param", [
    ([], "messages"), ([{"role": "robot", "content": "x"}], "messages[0]"),
    ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
    ([{"role": "user", "content": "x", "tool_calls": []}], "messages[0].tool_calls"),
    ([{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": {}}}]}],
     "messages[0].tool_calls[0]"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0]"),
    ([{"role": "user", "content": 3}], "messages[0].content")])
def test_bad_messages_name_the_field(messages, param):
    with pytest.raises(ApiError) as caught:
        wire.chat_messages({"messages": messages})
    assert caught.value.param == param


def test_generation_options_over_the_models_defaults():
    options = wire.generation_options({"temperature": 0.5, "max_completion_tokens": 7, "stop": "END"},
                                      {"temperature": 0.2, "top_p": 0.9})
    assert options == {"temperature": 0.5, "top_p": 0.9, "max_tokens": 7, "stop": ["END"]}
    assert wire.generation_options({}, {})["max_tokens"] == wire.DEFAULT_MAX_TOKENS


@pytest.mark.parametrize("body,param", [
    ({"n": 2}, "n"), ({"temperature": "hot"}, "temperature"), ({"top_k": 1.5}, "top_k"),
    ({"seed": True}, "seed"), ({"max_tokens": 0}, "max_tokens"), ({"stop": ["a"] * 5}, "stop")])
def test_bad_options_are_400s_naming_the_field(body, param):
    with pytest.raises(ApiError) as caught:
        wire.generation_options(body, {})
    assert caught.value.status == 400 and caught.value.param == param


def test_an_option_out_of_range_is_a_400_with_edgekits_words():
    with pytest.raises(ApiError, match="top_p must be in") as caught:
        wire.generation_options({"top_p": 0}, {})  # OpenAI's range allows 0; edgekit's sampler cannot
    assert caught.value.status == 400
    for field, value in [("temperature", 3), ("temperature", -0.5), ("top_p", 1.5)]:
        with pytest.raises(ApiError, match=f"{field} must be between") as caught:  # OpenAI's ranges
            wire.generation_options({field: value}, {})
        assert caught.value.param == field
    with pytest.raises(ApiError, match="frequency_penalty must be in"):
        wire.generation_options({"frequency_penalty": -3}, {})


def test_fields_are_served_refused_by_name_or_taken_when_they_ask_for_nothing():
    chat = {"model": "m", "messages": [], "user": "u", "seed": 1, "frequency_penalty": 0.1}
    wire.check_fields(chat, "chat")
    wire.check_fields({**chat, "logprobs": False, "tools": [], "response_format": {"type": "text"},
                       "tool_choice": "none", "logit_bias": {}, "top_logprobs": None}, "chat")
    wire.check_fields({**chat, "logprobs": True, "top_logprobs": 3}, "chat")  # served
    wire.check_fields({**chat, "tools": [{}], "tool_choice": "required", "parallel_tool_calls": True,
                       "response_format": {"type": "json_object"}}, "chat")  # served (checked later)
    for kind, field, value in [("completion", "top_logprobs", 2), ("completion", "tools", [{}]),
                               ("completion", "response_format", {"type": "json_object"}),
                               ("chat", "prompt", "x"), ("completion", "messages", []),
                               ("completion", "echo", True), ("embedding", "temperature", 1),
                               ("chat", "whatever", 0)]:
        with pytest.raises(ApiError) as caught:
            wire.check_fields({"model": "m", field: value}, kind)
        assert caught.value.code == "unsupported_parameter" and caught.value.param == field


def test_logprobs_as_each_route_asks_for_them():
    """Chat: logprobs true and top_logprobs 0-20; the legacy completions: logprobs 0-5. The result's
    tokens come back in OpenAI's two shapes."""
    from edgekit.engine import TokenLogprob

    assert wire.generation_options({"logprobs": True, "top_logprobs": 2}, {})["logprobs"] == 2
    assert wire.generation_options({"logprobs": True}, {})["logprobs"] == 0
    assert "logprobs" not in wire.generation_options({"logprobs": False}, {})
    assert wire.generation_options({"logprobs": 3}, {}, "completion")["logprobs"] == 3
    for body, kind, param in [({"top_logprobs": 2}, "chat", "top_logprobs"),
                              ({"logprobs": True, "top_logprobs": 21}, "chat", "top_logprobs"),
                              ({"logprobs": 2}, "chat", "logprobs"),
                              ({"logprobs": 6}, "completion", "logprobs"),
                              ({"logprobs": True}, "completion", "logprobs")]:
        with pytest.raises(ApiError) as caught:
            wire.generation_options(body, {}, kind)
        assert caught.value.param == param, body

    class Result:
        text, finish_reason, tokens_in, tokens_out = "Hi!", "stop", 3, 2
        logprobs = (TokenLogprob(5, b"Hi", -0.5, ((5, b"Hi", -0.5), (6, b"Yo", -1.5))),
                    TokenLogprob(7, b"!", -0.1, ((7, b"!", -0.1), (8, b".", -2.5))))

    chat = wire.whole("chat", "id", "m", Result())["choices"][0]["logprobs"]["content"]
    assert chat[0] == {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": [
        {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
        {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]}]}
    legacy = wire.whole("completion", "id", "m", Result())["choices"][0]["logprobs"]
    assert legacy == {"tokens": ["Hi", "!"], "token_logprobs": [-0.5, -0.1],
                      "top_logprobs": [{"Hi": -0.5, "Yo": -1.5}, {"!": -0.1, ".": -2.5}],
                      "text_offset": [0, 2]}
    Result.logprobs = None
    assert wire.whole("chat", "id", "m", Result())["choices"][0]["logprobs"] is None


def test_models_and_the_model_check():
    assert wire.models_list(["a"], 5)["data"] == [{"id": "a", "object": "model", "created": 5,
                                                   "owned_by": "edgekit"}]
    tasks = {"chat": "text-generation", "emb": "feature-extraction"}
    assert wire.check_model("chat", tasks, "text-generation") == "chat"
    with pytest.raises(ApiError) as missing:
        wire.check_model("nope", tasks, "text-generation")
    assert missing.value.status == 404 and missing.value.code == "model_not_found"
    with pytest.raises(ApiError, match="/v1/embeddings"):
        wire.check_model("emb", tasks, "text-generation")


def test_embeddings_as_floats_and_base64():
    texts, fmt = wire.embedding_input({"input": "one", "encoding_format": "base64"})
    assert (texts, fmt) == (["one"], "base64")
    vector = np.array([0.5, -1.25, 3.0], np.float32)
    data = wire.embeddings([vector], fmt, "emb", 2)
    decoded = np.frombuffer(base64.b64decode(data["data"][0]["embedding"]), "<f4")
    assert decoded.tolist() == [0.5, -1.25, 3.0] and data["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    assert wire.embeddings([vector], "float", "emb", 2)["data"][0]["embedding"] == [0.5, -1.25, 3.0]
    with pytest.raises(ApiError):
        wire.embedding_input({"input": []})


def test_embedding_inputs_as_token_ids(monkeypatch):
    """Token ids (one list, or a list of lists) are OpenAI's cl100k_base ids, decoded to text; without
    tiktoken the 400 says what to send instead; a mix of text and ids, or booleans, are refused."""
    class Stand_in:  # noqa: N801 - tiktoken's Encoding as far as the decoding goes
        n_vocab = 3

        def decode(self, ids: list[int]) -> str:
            return "".join("abc"[i] for i in ids)

    monkeypatch.setitem(sys.modules, "tiktoken", type(sys)("tiktoken"))
    sys.modules["tiktoken"].get_encoding = lambda name: Stand_in() if name == "cl100k_base" else None
    assert wire.embedding_input({"input": [0, 1, 2]})[0] == ["abc"]
    assert wire.embedding_input({"input": [[2, 1], [0]]})[0] == ["cb", "a"]
    for bad, says in (([[0, 7]], "7 is not a cl100k_base token id"), ([["a"], [0]], "or token ids"),
                      (["a", [0]], "or token ids"), ([True, False], "or token ids"),
                      ([[0]] * 2049, "at most 2048")):
        with pytest.raises(ApiError, match=says) as caught:
            wire.embedding_input({"input": bad})
        assert caught.value.param == "input"
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # not installed
    with pytest.raises(ApiError, match="pip install tiktoken.*check_embedding_ctx_length=False"):
        wire.embedding_input({"input": [0, 1]})


def test_streaming_flags_and_the_end_of_a_stream():
    assert wire.streaming({"stream": True, "stream_options": {"include_usage": True}}) == (True, True)
    assert wire.streaming({"stream": False}) == wire.streaming({}) == (False, False)
    for bad, param in [({"stream": "yes"}, "stream"), ({"stream": 1}, "stream"),
                       ({"stream": True, "stream_options": "include_usage"}, "stream_options"),
                       ({"stream": True, "stream_options": ["include_usage"]}, "stream_options"),
                       ({"stream": True, "stream_options": {"include_usage": "yes"}},
                        "stream_options.include_usage"),
                       ({"stream_options": {"include_usage": True}}, "stream_options")]:
        with pytest.raises(ApiError) as caught:
            wire.streaming(bad)
        assert caught.value.status == 400 and caught.value.param == param, bad
    opening = [json.loads(x) for x in wire.stream_opening("chat", "id-1", "m")]
    assert opening[0]["choices"][0]["delta"]["role"] == "assistant" and opening[0]["id"] == "id-1"


def test_the_access_line_and_the_origin_rule():
    from edgekit.server.admission import access_line, origin_host

    forged = 'alice\n127.0.0.1 "GET /admin" 200'
    line = access_line({"client": ("127.0.0.1", 5), "method": "POST", "path": "/v1/chat/completions",
                        "state": {"model": "smol", "user": forged}}, 200, 1.234)
    assert line.startswith('127.0.0.1 "POST /v1/chat/completions" 200 1.23 s model=smol user=alice_')
    assert "\n" not in line  # a client's text cannot forge a second line
    assert [origin_host(o) for o in ("http://localhost:5173", "https://evil.example", "null",
                                     "http://[::1]:3000", "http://127.0.0.1")] == [
        "localhost", "evil.example", "", "[::1]", "127.0.0.1"]


def test_metrics_page_counts_and_quantiles_in_prometheus_text():
    """/metrics: one line per model and figure, label values escaped, quantiles over recent answers."""
    import asyncio
    from types import SimpleNamespace

    from edgekit.server.admission import Slot, prometheus

    engine = SimpleNamespace(backend=SimpleNamespace(parallel=4), manifest={})
    slot = Slot('my "chat"', engine, asyncio.Semaphore(4), waiting=5, running=3, served=7)
    for ttft, speed in ((0.1, 50.0), (0.3, 70.0), (0.2, 60.0)):
        slot.record(SimpleNamespace(metrics=SimpleNamespace(tokens_out=10, ttft_s=ttft, decode_tok_s=speed)))
    slot.record(SimpleNamespace(metrics=SimpleNamespace(tokens_out=0, ttft_s=9.0, decode_tok_s=0.0)))
    page = prometheus({'my "chat"': slot})
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in page.splitlines() if not line.startswith("#")}
    m = 'model="my \\"chat\\""'
    assert values[f"edgekit_streams{{{m}}}"] == 4 and values[f"edgekit_requests_running{{{m}}}"] == 3
    assert values[f"edgekit_requests_waiting{{{m}}}"] == 2
    assert values[f"edgekit_requests_total{{{m}}}"] == 7 + 4
    assert values[f"edgekit_tokens_generated_total{{{m}}}"] == 30  # the empty answer adds no quantile
    assert f"edgekit_tokens_generated_total{{{m}}} 30\n" in page  # counters as integers, not 3e+01
    assert values[f'edgekit_ttft_seconds{{{m},quantile="0.5"}}'] == pytest.approx(0.2)
    assert values[f'edgekit_decode_tokens_per_second{{{m},quantile="0.5"}}'] == pytest.approx(60.0)
    assert "# TYPE edgekit_requests_total counter" in page and page.endswith("\n")


def test_structured_fields_are_checked_before_anything_queues():
    """response_format and tools compile when the body is read: a schema that cannot be enforced is a
    400 naming the field; good ones reach engine.chat() as they came."""
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"not": {}}}}}
    with pytest.raises(ApiError) as caught:
        wire.generation_options(body, {})
    assert caught.value.status == 400 and caught.value.param == "response_format"
    assert caught.value.code == "invalid_schema" and "Unimplemented keys" in caught.value.message
    with pytest.raises(ApiError) as caught:
        wire.generation_options({"tools": [{"type": "function", "function": {"name": "a b"}}]}, {})
    assert caught.value.param == "tools"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    options = wire.generation_options({"tools": tools, "tool_choice": "required"}, {})
    assert options["tools"] == tools and options["tool_choice"] == "required"
    assert "tools" not in wire.generation_options({"tools": tools}, {}, "completion")  # refused earlier


def test_tool_calls_go_out_in_openais_shapes():
    from edgekit.engine import GenerationResult
    from edgekit.metrics import DecodeMetrics
    from edgekit.structured import ToolCall

    call = ToolCall("call_1", "f", '{"a": 1}')
    metrics = DecodeMetrics.from_times(0.0, [0.1], 0.2, 3)
    result = GenerationResult("", "tool_calls", metrics, tool_calls=(call,))
    message = wire.whole("chat", "id", "m", result)["choices"][0]
    assert message["finish_reason"] == "tool_calls" and message["message"]["content"] is None
    assert message["message"]["tool_calls"] == [{"id": "call_1", "type": "function",
                                                 "function": {"name": "f", "arguments": '{"a": 1}'}}]
    events = [json.loads(e) for e in wire.stream_event("chat", "id", "m", "done", result, False)
              if e != "[DONE]"]
    assert events[0]["choices"][0]["delta"]["tool_calls"][0] == {"index": 0, **call.to_dict()}
    assert events[1]["choices"][0]["finish_reason"] == "tool_calls"
