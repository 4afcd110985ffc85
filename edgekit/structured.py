"""Structured output and tool calls, as OpenAI's API asks for them: a chat's `response_format` and
`tools` become a grammar that constrains decoding (runtimes/constrain.py), words that state it in the
prompt (as OpenAI does: the model should know what it is asked for, not only be held to it), and a
reading of the reply (the tool calls it made).

Tool calls are written as `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, the form of
the templates that support tools (Qwen2.5 and the Hermes family); a template without tool support gets
the tools and that form in its system message, and earlier calls and results as text.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import SchemaError

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_CALL = re.compile(re.escape(TOOL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CLOSE), re.S)


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made: `arguments` is JSON text (OpenAI's wire form), `args()` the object."""

    id: str
    name: str
    arguments: str

    def args(self) -> Any:
        return json.loads(self.arguments)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class Plan:
    """What a chat asks for beyond text: the grammar (None: free text), the words added to the system
    message, the tools (OpenAI's objects, for a template that renders them) and whether the reply is
    read for tool calls."""

    grammar: Any = None  # runtimes.constrain.Grammar
    instructions: str = ""
    tools: tuple[dict[str, Any], ...] = ()
    calls: bool = False  # the reply may hold tool calls: the stream hides them, the result lists them
    describe_tools: str = field(default="", repr=False)  # the tools in words, for a template without them


NO_PLAN = Plan()


def plan(response_format: Any = None, tools: Any = None, tool_choice: Any = None,
         parallel_tool_calls: bool = False) -> Plan:
    """A chat's response_format and tools, checked (SchemaError naming the field) and compiled."""
    from edgekit.runtimes.constrain import JSON_STYLE, json_schema_grammar, lark_grammar, regex_grammar

    reply, words, regex = _response_format(response_format)
    functions = _tools(tools)
    choice = _tool_choice(tool_choice, functions)
    if not isinstance(parallel_tool_calls, bool):
        raise SchemaError(f"parallel_tool_calls must be true or false, not {parallel_tool_calls!r}",
                          "parallel_tool_calls")
    if choice == "none" or not functions:
        if regex is not None:
            return Plan(regex_grammar(regex, "response_format.regex"), words)
        grammar = None if reply is None else json_schema_grammar(reply, "response_format")
        return Plan(grammar, words)
    if regex is not None:
        raise SchemaError("response_format of type regex cannot be combined with tools; use a json_schema",
                          "response_format")
    allowed = [f for f in functions if choice in ("auto", "required") or f["name"] == choice]
    body = {**_call_schema(allowed), "x-guidance": JSON_STYLE}
    call = f'"{TOOL_OPEN}\\n" body "\\n{TOOL_CLOSE}"'
    calls = f'{call} ("\\n" {call})*' if parallel_tool_calls else call
    rules = f"body: %json {json.dumps(body)}\n"
    if choice != "auto":  # required or named: the reply is calls alone (a response_format has no say)
        grammar, words = lark_grammar(f"start: {calls}\n{rules}", "tools"), ""
    elif reply is not None:  # the reply in its format, or calls
        reply = {**reply, "x-guidance": JSON_STYLE}
        grammar = lark_grammar(f"start: reply | calls\ncalls: {calls}\n"
                               f"reply: %json {json.dumps(reply)}\n{rules}", "tools")
    else:  # free text, and a call held to the tools' schemas once the model opens one (the token that
        # opens it may carry a space or a newline past the tag)
        rest = f'/[ \\t]*\\n?/ body "\\n{TOOL_CLOSE}"' + (f' ("\\n" {call})*' if parallel_tool_calls else "")
        grammar = lark_grammar(f"start: {rest}\n{rules}", "tools", trigger=TOOL_OPEN)
    return Plan(grammar, words, tuple(_tool_object(f) for f in functions), calls=True,
                describe_tools=_describe(functions, choice, parallel_tool_calls))


def _response_format(value: Any) -> tuple[dict[str, Any] | None, str, str | None]:
    """(the JSON schema a reply must match or None, the words that say so, a regex or None)."""
    if value is None:
        return None, "", None
    if hasattr(value, "model_json_schema"):  # a pydantic model class, as the openai client's parse() takes
        value = {"type": "json_schema", "json_schema": {"name": getattr(value, "__name__", "reply"),
                                                        "schema": value.model_json_schema()}}
    if not isinstance(value, Mapping):
        raise SchemaError(f'response_format must be an object such as {{"type": "json_object"}}, '
                          f"not {type(value).__name__}", "response_format")
    kind = value.get("type")
    _only(value, {"text": {"type"}, "json_object": {"type"}, "json_schema": {"type", "json_schema"},
                  "regex": {"type", "regex"}}.get(kind, {"type"}), "response_format", "response_format")
    if kind == "text":
        return None, "", None
    if kind == "json_object":
        return {"type": "object"}, "Reply with one JSON object and nothing else.", None
    if kind == "regex":
        regex = value.get("regex")
        if not isinstance(regex, str) or not regex:
            raise SchemaError("response_format.regex must be a non-empty string", "response_format")
        return None, "", regex
    if kind != "json_schema":
        raise SchemaError("response_format.type must be text, json_object, json_schema or regex, "
                          f"not {kind!r}", "response_format")
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise SchemaError('response_format.json_schema must be an object: {"name": ..., "schema": {...}}',
                          "response_format")
    _only(spec, {"name", "schema", "strict", "description"}, "response_format.json_schema",
          "response_format")
    schema = spec.get("schema", {"type": "object"})
    if not isinstance(schema, Mapping):
        raise SchemaError("response_format.json_schema.schema must be a JSON schema object",
                          "response_format")
    from edgekit.runtimes.constrain import schema_text

    what = f" ({spec['description']})" if isinstance(spec.get("description"), str) else ""
    words = (f"Reply with one JSON value{what} that matches this JSON schema, and nothing else: "
             f"{schema_text(schema)}")
    return closed(schema), words, None


def _tools(value: Any) -> list[dict[str, Any]]:
    """The functions of a tools list: [{"name", "description", "parameters"}], checked."""
    if value is None:
        return []
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise SchemaError('tools must be a list of {"type": "function", "function": {...}} objects', "tools")
    out, names = [], set()
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type") != "function" or not isinstance(
                tool.get("function"), Mapping):
            raise SchemaError(f'{where} must be {{"type": "function", "function": {{"name": ..., '
                              '"parameters": {...}}}}', "tools")
        _only(tool, {"type", "function"}, where, "tools")
        fn = tool["function"]
        _only(fn, {"name", "description", "parameters", "strict"}, f"{where}.function", "tools")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise SchemaError(f"{where}.function.name must be 1 to 64 letters, digits, _ or -, not {name!r}",
                              "tools")
        if name in names:
            raise SchemaError(f"{where}.function.name: two tools are named {name!r}", "tools")
        names.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, Mapping):
            raise SchemaError(f"{where}.function.parameters must be a JSON schema object", "tools")
        description = fn.get("description", "")
        if not isinstance(description, str):
            raise SchemaError(f"{where}.function.description must be a string", "tools")
        params = closed(params)
        from edgekit.runtimes.constrain import json_schema_grammar

        json_schema_grammar(params, f"{where}.function.parameters")  # its errors name the tool
        out.append({"name": name, "description": description, "parameters": params})
    return out


def _tool_choice(value: Any, functions: list[dict[str, Any]]) -> str:
    """"none", "auto", "required" or the one function's name."""
    if value is None:
        return "auto" if functions else "none"
    if value in ("none", "auto", "required"):
        if value == "required" and not functions:  # "auto" with no tools: no call can be made
            raise SchemaError("tool_choice 'required' needs tools", "tool_choice")
        return value if functions else "none"
    if isinstance(value, Mapping) and value.get("type") == "function" and isinstance(value.get("function"),
                                                                                      Mapping):
        _only(value, {"type", "function"}, "tool_choice", "tool_choice")
        _only(value["function"], {"name"}, "tool_choice.function", "tool_choice")
        name = value["function"].get("name")
        if name not in {f["name"] for f in functions}:
            raise SchemaError(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
        return name
    raise SchemaError('tool_choice must be "none", "auto", "required" or {"type": "function", '
                      '"function": {"name": ...}}', "tool_choice")


def _only(obj: Mapping[str, Any], allowed: set[str], where: str, field: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise SchemaError(f"{where}: {', '.join(map(repr, unknown))} is not supported; "
                          f"it takes {', '.join(sorted(allowed))}", field)


def _call_schema(functions: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON of one call of any of `functions`: {"name": <one of them>, "arguments": <its parameters>}.
    Each function's schema sits in $defs, its own references ("#/...") pointed there."""
    defs = {f"f{i}": _rebase(f["parameters"], f"#/$defs/f{i}") for i, f in enumerate(functions)}
    options = [{"type": "object",
                "properties": {"name": {"const": f["name"]}, "arguments": {"$ref": f"#/$defs/f{i}"}},
                "required": ["name", "arguments"], "additionalProperties": False}
               for i, f in enumerate(functions)]
    return {"$defs": defs, "anyOf": options}


def _rebase(schema: Any, base: str) -> Any:
    if isinstance(schema, Mapping):
        return {k: (base + v[1:] if k == "$ref" and isinstance(v, str) and v.startswith("#")
                    else _rebase(v, base)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebase(v, base) for v in schema]
    return schema


# keywords whose values are data, not schemas; and those whose values map names to schemas
_DATA = frozenset({"const", "enum", "default", "examples", "example"})
_NAMED = frozenset({"properties", "$defs", "definitions", "patternProperties", "dependentSchemas"})


DECIMALS = 6  # the most decimals a number is written with (a model at temperature writes on and on)


def closed(schema: Any) -> Any:
    """The schema as replies are generated under it, which every reply still matches as given:
    - every object that names its properties and says nothing of others is closed to them
      (additionalProperties false; leaving a property out is always allowed), so a small model cannot
      pad its JSON with keys of its own. An object combined with others (a part of allOf, or beside
      $ref, anyOf or oneOf) or requiring a property it does not list stays open: closing it could make
      the schema unsatisfiable;
    - a number with no multipleOf is written with at most DECIMALS decimals (multipleOf 10^-DECIMALS),
      unless its range is narrower than 1."""
    return _close(schema, True)


def _close(schema: Any, may_close: bool) -> Any:
    if isinstance(schema, list):
        return [_close(v, may_close) for v in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _DATA:
            out[key] = value
        elif key in _NAMED and isinstance(value, Mapping):
            out[key] = {name: _close(sub, True) for name, sub in value.items()}
        else:  # the parts of an allOf describe one object together: none of them may close it alone
            out[key] = _close(value, key != "allOf")
    kinds = out.get("type") if isinstance(out.get("type"), list) else [out.get("type")]
    low = out.get("minimum", out.get("exclusiveMinimum"))
    high = out.get("maximum", out.get("exclusiveMaximum"))
    narrow = all(isinstance(v, int | float) for v in (low, high)) and high - low < 1
    if "number" in kinds and "multipleOf" not in out and not narrow:
        out["multipleOf"] = 10.0 ** -DECIMALS
    properties = out.get("properties")
    required = out.get("required") if isinstance(out.get("required"), list) else []
    others = {"additionalProperties", "patternProperties"}  # said of other properties already
    combined = {"$ref", "allOf", "anyOf", "oneOf"}  # combined with another schema: left open
    if (may_close and isinstance(properties, Mapping) and not (others | combined) & set(out)
            and all(name in properties for name in required)):
        out["additionalProperties"] = False
    return out


def _tool_object(fn: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": fn}


def _describe(functions: list[dict[str, Any]], choice: str, parallel: bool) -> str:
    """The tools in words, for a chat template that does not render them itself."""
    listed = "\n".join(json.dumps(_tool_object(f), ensure_ascii=False) for f in functions)
    how = (f"To call a function, write {TOOL_OPEN}\n{{\"name\": <function name>, \"arguments\": "
           f"<its arguments as a JSON object>}}\n{TOOL_CLOSE}"
           + (" (one block per call)." if parallel else "."))
    when = {"auto": " Call one only when it helps; otherwise answer in words.",
            "required": " Answer by calling a function."}.get(choice, f" Answer by calling {choice}.")
    return f"You can call these functions:\n{listed}\n{how}{when}"


def prepare(messages: list[dict[str, Any]], the_plan: Plan, template_tools: bool,
            system: bool = True) -> list[dict[str, Any]]:
    """The messages a chat template renders: the plan's words in the system message (made when there is
    none; system=False: at the start of the first user message instead, for a template that refuses a
    system message), and the tool calls and results of earlier turns in the form this template reads
    (its own when it states tools, else text in the <tool_call> form the model is told to use)."""
    out = [_for_template(m, template_tools) for m in messages]
    words = the_plan.instructions
    if the_plan.tools and not template_tools:
        words = f"{the_plan.describe_tools}\n\n{words}" if words else the_plan.describe_tools
    if not words:
        return out
    if out and out[0].get("role") == "system" and isinstance(out[0].get("content"), str):
        out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{words}"}
    elif system:
        out.insert(0, {"role": "system", "content": words})
    else:
        at = next((i for i, m in enumerate(out) if m.get("role") == "user"), None)
        if at is None or not isinstance(out[at].get("content"), str):
            out.insert(0, {"role": "user", "content": words})
        else:
            out[at] = {**out[at], "content": f"{words}\n\n{out[at]['content']}"}
    return out


def _for_template(message: dict[str, Any], template_tools: bool) -> dict[str, Any]:
    calls = message.get("tool_calls")
    role = message.get("role")
    if template_tools:
        if calls:  # templates read arguments as an object (transformers' convention), OpenAI sends text
            return {**message, "tool_calls": [_with_object_arguments(c) for c in calls]}
        return message
    if calls:
        text = "\n".join(_call_text(c) for c in calls)
        content = message.get("content") or ""
        return {"role": "assistant", "content": f"{content}\n{text}" if content else text}
    if role == "tool":
        result = message.get("content") or ""
        return {"role": "user", "content": f"<tool_response>\n{result}\n</tool_response>"}
    return message


def _function(call: Any) -> tuple[Mapping[str, Any], Any]:
    """An earlier call's function object ({"name", "arguments"}, OpenAI's nesting or flat) and its
    arguments as an object (the text itself when it is not JSON)."""
    fn = call.get("function", call) if isinstance(call, Mapping) else {}
    fn = fn if isinstance(fn, Mapping) else {}
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            pass
    return fn, args


def _with_object_arguments(call: Any) -> Any:
    fn, args = _function(call)
    if not isinstance(fn.get("arguments"), str) or isinstance(args, str):
        return call  # an object already, or text that is not JSON: as it came
    if "function" in call:
        return {**call, "function": {**fn, "arguments": args}}
    return {**call, "arguments": args}


def _call_text(call: Any) -> str:
    fn, args = _function(call)
    body = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
    return f"{TOOL_OPEN}\n{body}\n{TOOL_CLOSE}"


def _blocks(text: str) -> Iterator[tuple[int, Any]]:
    """(where it starts, its JSON) of each whole <tool_call> block of `text` that holds JSON."""
    for match in _CALL.finditer(text):
        try:
            yield match.start(), json.loads(match.group(1))
        except ValueError:
            continue


def read_reply(text: str) -> tuple[str, tuple[ToolCall, ...]]:
    """(the reply's words, the tool calls it made): every whole <tool_call> block with a name and
    arguments; the words are what comes before the first block (the server strips them)."""
    calls = []
    for _, data in _blocks(text):
        if isinstance(data, dict) and isinstance(data.get("name"), str) and "arguments" in data:
            args = json.dumps(data["arguments"], ensure_ascii=False)
            calls.append(ToolCall(f"call_{uuid.uuid4().hex[:24]}", data["name"], args))
    at = text.find(TOOL_OPEN)
    return (text if at < 0 else text[:at]), tuple(calls)  # the words as they were streamed


def repeated_call(text: str) -> int | None:
    """Where the last whole call of `text` starts, when it repeats an earlier call exactly (name and
    arguments): a small model that has made its calls may go on making the same one until max_tokens.
    None when it does not."""
    seen, last = set(), None
    for at, data in _blocks(text):
        key = json.dumps(data, sort_keys=True)
        last = (key in seen, at)
        seen.add(key)
    return last[1] if last is not None and last[0] else None


def template_renders_tools(source: str) -> bool:
    """Whether a chat template states tools itself in the form edgekit reads (it reads a `tools`
    variable and teaches <tool_call> blocks, as Qwen2.5's and the Hermes family's do). A template
    that teaches another form (Llama 3's JSON, Mistral's [TOOL_CALLS] ...) is given the tools in the
    system message instead, with the form edgekit reads."""
    return re.search(r"\btools\b", source) is not None and TOOL_OPEN in source
