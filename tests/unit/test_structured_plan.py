"""Structured output and tool calls without a model: what response_format and tools compile to, the
errors for what cannot be enforced, the prompt's words, and the reading of a reply's tool calls."""

from __future__ import annotations

import json

import pytest

from edgekit.errors import SchemaError
from edgekit.structured import (
    TOOL_CLOSE,
    TOOL_OPEN,
    closed,
    plan,
    prepare,
    read_reply,
    repeated_call,
    template_renders_tools,
)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def schema_format(schema):
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}


@pytest.mark.parametrize("response_format,words", [
    ("json", "must be an object"),
    ({"type": "xml"}, "response_format.type must be text, json_object, json_schema or regex"),
    ({"type": "json_object", "schema": {}}, "'schema' is not supported"),
    ({"type": "json_schema"}, "response_format.json_schema must be an object"),
    ({"type": "json_schema", "json_schema": {"schema": {}, "colour": 1}}, "'colour' is not supported"),
    ({"type": "json_schema", "json_schema": {"schema": []}}, "must be a JSON schema object"),
    (schema_format({"not": {"type": "string"}}), 'Unimplemented keys: ["not"]'),
    (schema_format({"type": "strng"}), "Invalid type: strng"),
    (schema_format({"$ref": "#/$defs/missing"}), "/$defs/missing"),
    (schema_format({"type": "string", "pattern": "(("}), "unclosed group"),
    ({"type": "regex", "regex": ""}, "non-empty string"),
    ({"type": "regex", "regex": "[0-9"}, "regex"),
])
def test_what_cannot_be_enforced_is_a_schema_error_naming_it(response_format, words):
    with pytest.raises(SchemaError) as caught:
        plan(response_format)
    assert words in str(caught.value)
    assert str(caught.value).startswith("response_format")


@pytest.mark.parametrize("tools,choice,words", [
    ("get_weather", None, "tools must be a list"),
    ([{"type": "function"}], None, "tools[0] must be"),
    ([{"type": "function", "function": {"name": "a b"}}], None, "tools[0].function.name must be"),
    ([WEATHER, WEATHER], None, "two tools are named 'get_weather'"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "x": 1}}], None,
     "'x' is not supported"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"not": {}}}}], "required",
     "Unimplemented"),
    ([WEATHER], {"type": "function", "function": {"name": "get_time"}}, "not among the tools"),
    ([WEATHER], "sometimes", "tool_choice must be"),
    (None, "required", "tool_choice 'required' needs tools"),
    ([WEATHER], {"type": "function", "function": {"name": "get_weather", "x": 1}}, "'x' is not supported"),
])
def test_bad_tools_and_choices_are_schema_errors(tools, choice, words):
    with pytest.raises(SchemaError) as caught:
        plan(tools=tools, tool_choice=choice)
    assert words in str(caught.value)
    assert caught.value.field == ("tool_choice" if str(caught.value).startswith("tool_choice") else "tools")


def test_a_tools_schema_error_names_the_tool():
    bad = {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "not": {}}}}
    with pytest.raises(SchemaError) as caught:
        plan(tools=[WEATHER, bad])
    assert str(caught.value).startswith("tools[1].function.parameters: Unimplemented keys")
    assert caught.value.field == "tools" and len(str(caught.value)) < 200


def test_a_regex_format_with_tools_is_refused():
    with pytest.raises(SchemaError, match="regex cannot be combined with tools"):
        plan({"type": "regex", "regex": "a+"}, tools=[WEATHER])


def test_what_each_request_compiles_to():
    assert plan().grammar is None and not plan().calls
    assert plan({"type": "text"}).grammar is None
    obj = plan({"type": "json_object"})
    assert obj.grammar is not None and obj.grammar.what == "response_format"
    assert "JSON object" in obj.instructions
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    shaped = plan(schema_format(schema))
    assert json.dumps(schema, separators=(",", ":")) in shaped.instructions  # stated in the prompt, as given
    auto = plan(tools=[WEATHER])  # free text until the model opens a call
    assert auto.calls and auto.grammar.trigger == TOOL_OPEN
    assert auto.tools[0]["function"]["name"] == "get_weather"
    required = plan(tools=[WEATHER], tool_choice="required")
    assert required.calls and required.grammar.trigger == ""  # calls from the first token
    assert plan(tools=[WEATHER], tool_choice="none").grammar is None
    assert plan(tool_choice="auto").grammar is None  # no tools: no call can be made
    both = plan(schema_format(schema), tools=[WEATHER])  # the reply in its format, or a call
    assert both.grammar.trigger == "" and both.calls and both.instructions
    forced = plan(schema_format(schema), tools=[WEATHER], tool_choice="required")
    assert forced.instructions == ""  # calls alone: the format's words would only mislead


def test_a_pydantic_model_is_a_json_schema_format():
    pydantic = pytest.importorskip("pydantic")

    class Town(pydantic.BaseModel):
        name: str
        founded: int

    made = plan(Town)
    assert '"founded"' in made.instructions and made.grammar is not None


def test_objects_that_name_their_properties_are_closed_to_others():
    schema = {"type": "object", "properties": {
        "properties": {"type": "object", "properties": {"a": {"const": {"properties": {}}}}},
        "free": {"type": "object", "properties": {}, "additionalProperties": True}},
        "$defs": {"Inner": {"type": "object", "properties": {"b": {"type": "string"}}}}}
    out = closed(schema)
    assert out["additionalProperties"] is False
    inner = out["properties"]["properties"]
    assert inner["additionalProperties"] is False and "additionalProperties" not in out["properties"]
    assert inner["properties"]["a"] == {"const": {"properties": {}}}  # data is left as it is
    assert out["properties"]["free"]["additionalProperties"] is True  # said otherwise: kept
    assert out["$defs"]["Inner"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the schema given is not changed


@pytest.mark.parametrize("schema", [
    {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
               {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}]},
    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]},
    {"$defs": {"B": {"type": "object", "required": ["b"]}},
     "type": "object", "properties": {"a": {"type": "integer"}}, "$ref": "#/$defs/B"},
])
def test_objects_combined_with_others_stay_open(schema):
    """Closing any of these would make a satisfiable schema unsatisfiable."""
    out = closed(schema)
    parts = out.get("allOf", [out])
    assert all("additionalProperties" not in part for part in parts)
    assert plan(schema_format(schema)).grammar is not None  # still compiles


def test_a_tools_own_references_are_rebased_into_the_call_schema():
    from edgekit.structured import _call_schema

    params = {"type": "object", "properties": {"town": {"$ref": "#/$defs/Town"}},
              "$defs": {"Town": {"type": "object", "properties": {"name": {"type": "string"}}}}}
    body = _call_schema([{"name": "f", "parameters": params}])
    assert body["$defs"]["f0"]["properties"]["town"] == {"$ref": "#/$defs/f0/$defs/Town"}
    assert body["anyOf"][0]["properties"]["arguments"] == {"$ref": "#/$defs/f0"}


def test_the_words_join_the_system_message_or_make_one():
    made = plan({"type": "json_object"})
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert prepare(system, made, False)[0]["content"].startswith("Be brief.\n\nReply with one JSON object")
    alone = prepare([{"role": "user", "content": "Hi"}], made, False)
    assert [m["role"] for m in alone] == ["system", "user"]
    tools = plan(tools=[WEATHER])
    described = prepare([{"role": "user", "content": "Hi"}], tools, False)[0]["content"]
    assert "get_weather" in described and TOOL_OPEN in described  # no template support: words
    assert prepare([{"role": "user", "content": "Hi"}], tools, True) == [{"role": "user", "content": "Hi"}]


def test_earlier_calls_and_results_reach_the_template_in_the_form_it_reads():
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "c1", "content": "12 C"}]
    own = prepare(history, plan(), True)  # a template with tool support: arguments as an object
    assert own[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"} and own[2]["role"] == "tool"
    text = prepare(history, plan(), False)  # without: the <tool_call> form, results as the user's
    made = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    assert text[1] == {"role": "assistant", "content": f"{TOOL_OPEN}\n{made}\n{TOOL_CLOSE}"}
    assert text[2] == {"role": "user", "content": "<tool_response>\n12 C\n</tool_response>"}


def test_a_reply_is_read_for_its_words_and_whole_calls():
    text = (f'Let me look.\n{TOOL_OPEN}\n{{"name": "get_weather", "arguments": {{"city": "Oslo"}}}}\n'
            f'{TOOL_CLOSE}'
            f'\n{TOOL_OPEN}\n{{"name": "broken", "arguments": \n{TOOL_CLOSE}\n{TOOL_OPEN}\n{{"name": "cut')
    words, calls = read_reply(text)
    assert words == "Let me look.\n" and [c.name for c in calls] == ["get_weather"]  # as streamed
    assert calls[0].args() == {"city": "Oslo"} and calls[0].id.startswith("call_")
    assert calls[0].to_dict()["function"]["arguments"] == '{"city": "Oslo"}'
    assert read_reply("Just words.") == ("Just words.", ())


def test_a_call_made_again_is_found():
    one = f'{TOOL_OPEN}\n{{"name": "f", "arguments": {{"a": 1}}}}\n{TOOL_CLOSE}'
    other = f'{TOOL_OPEN}\n{{"name": "f", "arguments": {{"a": 2}}}}\n{TOOL_CLOSE}'
    assert repeated_call(one) is None and repeated_call(f"{one}\n{other}") is None
    assert repeated_call(f"{one}\n{other}\n{one}") == len(f"{one}\n{other}\n")


def test_which_templates_state_tools_themselves():
    """Those that read `tools` and teach <tool_call> blocks (Qwen2.5, Hermes); not those that teach
    another form (Llama 3's JSON), which get the tools in the system message in the form edgekit reads."""
    assert template_renders_tools("{% if tools %}{{ tools | tojson }} <tool_call></tool_call>{% endif %}")
    assert not template_renders_tools("{% if tools %}{{ tools | tojson }}{% endif %}")
    assert not template_renders_tools("{% for m in messages %}{{ m.content }}{% endfor %}")


def test_the_words_go_to_the_first_user_message_for_a_template_without_system():
    made = plan({"type": "json_object"})
    out = prepare([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}], made, False,
                  system=False)
    assert [m["role"] for m in out] == ["user", "assistant"]
    assert out[0]["content"].startswith("Reply with one JSON object") and out[0]["content"].endswith("\n\nHi")


def test_numbers_are_written_with_at_most_six_decimals_unless_the_range_is_narrow():
    out = closed({"type": "object", "properties": {
        "lat": {"type": "number", "minimum": -90, "maximum": 90}, "maybe": {"type": ["number", "null"]},
        "share": {"type": "number", "minimum": 0, "maximum": 0.5},
        "step": {"type": "number", "multipleOf": 0.25},
        "n": {"type": "integer"}}})["properties"]
    assert out["lat"]["multipleOf"] == out["maybe"]["multipleOf"] == 1e-6
    assert "multipleOf" not in out["share"] and out["step"]["multipleOf"] == 0.25  # left as they were
    assert "multipleOf" not in out["n"]
