"""Constrained decoding on tiny random models, both backends. A random model follows no instruction,
so every reply that matches its schema here does so by construction: the grammar masked every other
token. Tool calls carry arguments valid for their function, streams of different schemas decode
together, a template that states tools itself gets them, and `edgekit run` takes the same formats."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

import edgekit
from edgekit.structured import TOOL_OPEN

jsonschema = pytest.importorskip("jsonschema")  # in the test extra; importorskip only names it

NAME = {"type": "string", "maxLength": 12}
SCHEMAS = {  # strings and lists bounded: a random model would otherwise write until max_tokens
    "nested": {"type": "object", "properties": {
        "town": {"type": "object", "required": ["name", "people"], "properties": {
            "name": NAME, "people": {"type": "integer", "minimum": 0, "maximum": 99999}}}},
        "required": ["town"]},
    "array": {"type": "array", "items": NAME, "minItems": 2, "maxItems": 3},
    "enum_const": {"type": "object", "properties": {"unit": {"enum": ["C", "F"]}, "v": {"const": 2}},
                   "required": ["unit", "v"]},
    "ranges": {"type": "object", "properties": {"n": {"type": "integer", "minimum": -5, "maximum": 5},
                                                "x": {"type": "number", "minimum": 0, "maximum": 1}},
               "required": ["n", "x"]},
    "pattern": {"type": "object", "required": ["code"],
                "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}}},
    "any_of": {"anyOf": [{"type": "boolean"},
                         {"type": "array", "maxItems": 2,
                          "items": {"type": "integer", "minimum": 0, "maximum": 9}}]},
    "ref": {"$defs": {"P": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0,
                                                                   "maximum": 9}}, "required": ["x"]}},
            "type": "object", "properties": {"a": {"$ref": "#/$defs/P"}, "b": {"$ref": "#/$defs/P"}},
            "required": ["a", "b"]},
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": NAME, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 6}}, "required": ["zone"]}}}
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}


def _format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}


@pytest.fixture(scope="module")
def artifacts(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The tiny Qwen2 with a window of 2048 (room for a schema stated in the prompt) in both formats."""
    gguf = edgekit.convert(str(tiny_model.parent / "ckpt"), to="gguf", quant="fp32", verify=False,
                           output=tmp_path_factory.mktemp("structured") / "gguf").path
    return {"gguf": gguf, "onnx": tiny_model}


@pytest.fixture(scope="module", params=["gguf", "onnx"])
def engine(request, artifacts):
    with edgekit.load(artifacts[request.param], device="cpu", n_ctx=1024) as eng:
        yield eng


def test_every_reply_matches_its_schema(engine):
    for name, schema in SCHEMAS.items():
        for temperature, seed in ((0.0, None), (0.8, 1), (0.8, 2)):
            r = engine.chat(f"Reply as {name}.", response_format=_format(schema), max_tokens=160,
                            temperature=temperature, seed=seed)
            assert r.finish_reason == "stop", (name, r.text)
            jsonschema.validate(r.json(), schema)
            assert r.constraint is not None and r.constraint["compile_ms"] >= 0
    again = engine.chat("x", response_format=_format(SCHEMAS["array"]), max_tokens=160)
    assert again.constraint["cached"] and again.constraint["compile_ms"] < 50  # compiled once, kept


def test_json_object_regex_and_raw_completion(engine):
    obj = engine.chat("Any object.", response_format={"type": "json_object"}, max_tokens=40)
    assert obj.text.startswith("{") and (obj.finish_reason == "length" or isinstance(obj.json(), dict))
    phone = engine.generate("Call ", response_format={"type": "regex", "regex": r"\(\d{3}\) \d{3}-\d{4}"},
                            max_tokens=40, temperature=0.8, seed=4)
    assert phone.finish_reason == "stop"
    import re

    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", phone.text), phone.text
    with pytest.raises(edgekit.InvalidOptionError, match="ignore_eos cannot be combined"):
        engine.generate("x", response_format={"type": "json_object"}, ignore_eos=True)


@pytest.mark.parametrize("choice", ["required", "named", "parallel"])
def test_tool_calls_carry_valid_arguments_whole_and_streamed(engine, choice):
    named = {"type": "function", "function": {"name": "get_time"}}
    tool_choice = named if choice == "named" else "required"
    for stream in (False, True):
        r = engine.chat("What now?", tools=[WEATHER, CLOCK], tool_choice=tool_choice, max_tokens=200,
                        temperature=0.8, seed=5, stream=stream, parallel_tool_calls=choice == "parallel")
        if stream:
            assert "".join(r) == ""  # a call is not text
            r = r.result
        assert r.finish_reason in ("tool_calls", "length") and r.text == ""
        assert r.tool_calls and (r.finish_reason == "tool_calls" or choice == "parallel")
        assert choice == "parallel" or len(r.tool_calls) == 1
        for call in r.tool_calls:
            assert call.name == "get_time" or choice != "named"
            jsonschema.validate(call.args(), PARAMS[call.name])
        assert len({c.id for c in r.tool_calls}) == len(r.tool_calls)


def test_a_call_is_held_to_its_grammar_only_once_the_model_opens_it(engine):
    """tool_choice auto: free text until the text ends with <tool_call>, then the call's grammar."""
    import numpy as np

    from edgekit.structured import plan

    grammar = plan(tools=[WEATHER]).grammar
    assert grammar.trigger == TOOL_OPEN
    constraint = engine.backend.constraint_vocab().start(grammar)
    logits = np.zeros(engine.backend.constraint_vocab().width, dtype=np.float32)
    for token in engine.backend.tokenize("Let me check. <tool", False):
        assert constraint.mask(logits) is logits  # free: nothing masked
        constraint.accept(token)
    for token in engine.backend.tokenize("_call>", False):
        constraint.accept(token)
    allowed = np.isfinite(constraint.mask(logits))
    assert constraint.active and 0 < allowed.sum() < 10  # the call's grammar: a newline, then '{'
    newline = engine.backend.tokenize("\n", False)
    assert allowed[newline[0]]


def test_a_template_that_states_tools_gets_them(tiny_model, tmp_path):
    """A template in the Qwen2.5 manner (it reads `tools`, teaches <tool_call>) that refuses a system
    message, as Gemma's does: the tools reach it as its variable, earlier calls with their arguments as
    objects; a response_format's words go to the first user message."""
    template = ("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}"
                "{% endif %}{% if tools %}<|im_start|>tools\nTOOLS:{{ tools | tojson }} Reply with "
                "<tool_call>{...}</tool_call><|im_end|>\n{% endif %}"
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
                "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} "
                "{{ c.function.arguments | tojson }}{% endfor %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model.parent / "ckpt", ckpt)
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    (ckpt / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    art = edgekit.convert(str(ckpt), to="onnx", quant="fp32", output=tmp_path / "a", verify=False).path
    with edgekit.load(art, device="cpu") as eng:
        seen = []
        render = eng.render_chat
        eng.render_chat = lambda messages, tools=None: seen.append(render(messages, tools)) or seen[-1]
        call = {"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        history = [{"role": "user", "content": "Weather?"},
                   {"role": "assistant", "content": None, "tool_calls": [call]},
                   {"role": "tool", "tool_call_id": "c1", "content": "12 C"}]
        r = eng.chat(history, tools=[WEATHER], tool_choice="required", max_tokens=120, temperature=0.8,
                     seed=1)
        prompt = seen[-1]
        shaped = eng.chat("Hi", response_format=_format(SCHEMAS["array"]), max_tokens=160)
    assert r.tool_calls and r.tool_calls[0].name == "get_weather"
    assert 'TOOLS:[{"type": "function", "function": {"name": "get_weather"' in prompt  # the template's words
    assert 'CALL get_weather {"city": "Oslo"}' in prompt  # arguments reached it as an object
    assert "You can call these functions" not in prompt  # not stated twice
    assert "<|im_start|>user\nReply with one JSON value" in seen[-1] and "system" not in seen[-1]
    jsonschema.validate(shaped.json(), SCHEMAS["array"])


def test_a_reply_that_opens_a_call_is_read_for_it(artifacts, monkeypatch):
    """tool_choice auto, end to end in the engine: the words stream, the call is hidden and read,
    finish_reason says so; a stop string inside the call does not cut it; a call made again ends the
    reply. The model's tokens are scripted (a random model does not choose to call); the rest is real."""
    from edgekit.runtimes.base import TokenEvent

    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n</tool_call>'
    with edgekit.load(artifacts["onnx"], device="cpu") as eng:
        ids = eng.backend.tokenize(f"Let me check.\n{call}\n{call}\nand more words", False)

        def scripted(prompt_ids, options):
            assert options.grammar is not None and options.grammar.trigger == TOOL_OPEN
            for token in ids:
                yield TokenEvent(token, eng.backend.token_bytes(token))

        monkeypatch.setattr(eng.backend, "generate", scripted)
        stream = eng.chat("Weather?", tools=[WEATHER], stop=["Oslo"], max_tokens=200, stream=True,
                          parallel_tool_calls=True)
        shown = "".join(stream)
        r = stream.result
        whole = eng.chat("Weather?", tools=[WEATHER], max_tokens=200, parallel_tool_calls=True)
    assert shown == "Let me check.\n" == r.text  # the call is not text, and the words are the same
    assert r.finish_reason == "tool_calls"
    assert [c.args() for c in r.tool_calls] == [{"city": "Oslo", "unit": "C"}]
    assert whole.text == shown and whole.tool_calls[0].name == "get_weather"
    assert len(r.token_ids) < len(ids)  # ended at the repeated call, not at the end of the script


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_streams_of_different_schemas_decode_together(artifacts, fmt):
    results = {}
    with edgekit.load(artifacts[fmt], device="cpu", n_ctx=1536, parallel=3) as eng:
        def ask(name: str) -> None:
            results[name] = eng.chat(f"Reply as {name}.", response_format=_format(SCHEMAS[name]),
                                     max_tokens=160, temperature=0.8, seed=7)

        threads = [threading.Thread(target=ask, args=(n,)) for n in ("nested", "array", "ranges")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        plain = eng.chat("No format.", max_tokens=8, temperature=0)  # the next stream has none
    for name, r in results.items():
        assert r.finish_reason == "stop", (name, r.text)
        jsonschema.validate(r.json(), SCHEMAS[name])
    assert plain.constraint is None


def test_run_holds_the_reply_to_a_schema_file(artifacts, tmp_path):
    from helpers import cli

    art = artifacts["gguf"]
    schema = tmp_path / "town.schema.json"
    schema.write_text(json.dumps(SCHEMAS["nested"]))
    p = cli("run", str(art), "Describe a town", "--json-schema", str(schema), "-n", "160", "--temp", "0.8",
            "-s", "1")
    assert p.returncode == 0, p.stderr
    jsonschema.validate(json.loads(p.stdout), SCHEMAS["nested"])
    assert "grammar compiled in" in p.stderr
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER]))
    p = cli("run", str(art), "Weather?", "--tools", str(tools), "--tool-choice", "get_weather", "-n", "120")
    assert p.returncode == 0, p.stderr
    (line,) = p.stdout.splitlines()  # one call, one JSON line, no text
    made = json.loads(line)
    jsonschema.validate(json.loads(made["function"]["arguments"]), PARAMS["get_weather"])
    p = cli("run", str(art), "x", "--json", "--json-object", "-n", "300", "--temp", "0")
    assert p.returncode == 0 and json.loads(p.stdout)["constraint"]["cached"] is False
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "object", "not": {}}')
    for args, words in ((["--json-schema", str(bad)], f"--json-schema {bad}: response_format: Unimplemented"),
                        (["--json-schema", str(tmp_path / "none.json")], "cannot read it"),
                        (["--tool-choice", "required"], "--tool-choice needs --tools"),
                        (["--regex", "a", "--json-object"], "--json-object and --regex each set"),
                        (["--tools", str(tools), "--raw"], "--tools needs the chat template")):
        p = cli("run", str(art), "x", *args)
        assert p.returncode == 1 and words in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def test_a_grammar_that_fails_ends_its_own_stream_alone(artifacts, monkeypatch):
    """Batched streams: one stream's grammar failing mid-reply (forced here) ends that stream with a
    BackendError; the stream beside it finishes, valid."""
    from edgekit.runtimes import constrain

    accept = constrain.Constraint.accept

    def failing(self, token):
        if self.grammar.what == "response_format.regex":
            raise edgekit.BackendError("constrained decoding of response_format.regex failed: forced")
        accept(self, token)

    monkeypatch.setattr(constrain.Constraint, "accept", failing)
    outcome = {}
    with edgekit.load(artifacts["onnx"], device="cpu", n_ctx=1024, parallel=2) as eng:
        def ask(name, fmt):
            try:
                outcome[name] = eng.generate("x", response_format=fmt, max_tokens=160, temperature=0.8,
                                             seed=2)
            except edgekit.BackendError as exc:
                outcome[name] = exc

        threads = [threading.Thread(target=ask, args=("regex", {"type": "regex", "regex": "[a-z]{5}"})),
                   threading.Thread(target=ask, args=("json", _format(SCHEMAS["ranges"])))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert isinstance(outcome["regex"], edgekit.BackendError) and "forced" in str(outcome["regex"])
    jsonschema.validate(outcome["json"].json(), SCHEMAS["ranges"])
