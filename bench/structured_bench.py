"""Structured output and tool calls on the real SmolLM2-135M-Instruct int4, through `edgekit serve` and
the official `openai` client: does every reply validate, and what does the grammar cost?

    .venv/bin/python bench/structured_bench.py [--replies 20] [--clients 4] [--formats onnx,gguf]
    .venv/bin/python bench/structured_bench.py --speed [--rounds 5]

Default: SCHEMAS (nested objects, arrays with item counts, enums, const, integer and number ranges,
string lengths and patterns, anyOf, oneOf, $ref/$defs) x `--replies` replies at temperature 0 and 0.8,
`--clients` requests at once (the server decodes them together, each with its own schema); then
`beta.chat.completions.parse` with pydantic models, and tool calls with tool_choice "required" and
named, whole and streamed. Each reply is checked with `jsonschema`; a reply cut at max_tokens counts as
a failure. --speed (the engine, no server): decode tok/s and TTFT of replies held to a schema against
the same prompt decoded free for as many tokens (interleaved, medians, the ratio), and the compile
time of a schema not seen before.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_serve import Server  # noqa: E402

import edgekit  # noqa: E402

SHORT = {"type": "string", "minLength": 1, "maxLength": 40}


def obj(**properties) -> dict:
    """An object schema that requires every property it lists (as each schema here does)."""
    return {"type": "object", "properties": properties, "required": list(properties)}


def number(low: float, high: float, kind: str = "number") -> dict:
    return {"type": kind, "minimum": low, "maximum": high}


SCHEMAS = {
    "town": (
        "Describe the town of Bergen.",
        obj(name=SHORT, country=SHORT, founded=number(0, 2030, "integer")),
    ),
    "nested": (
        "Describe a small library and its address.",
        obj(
            name=SHORT, address=obj(street=SHORT, city=SHORT, zip={"type": "string", "pattern": "^[0-9]{5}$"})
        ),
    ),
    "list": (
        "Name three fruits.",
        obj(fruits={"type": "array", "items": SHORT, "minItems": 3, "maxItems": 3}),
    ),
    "enum": (
        "Is the sky blue on a clear day? Answer and rate your confidence.",
        obj(answer={"enum": ["yes", "no", "unsure"]}, confidence=number(0, 1)),
    ),
    "const": (
        "Report the status of the server.",
        obj(version={"const": 2}, status={"enum": ["ok", "degraded", "down"]}, message=SHORT),
    ),
    "ranges": (
        "Give the temperature in Oslo today and a humidity percentage.",
        obj(celsius=number(-60, 60), humidity=number(0, 100, "integer")),
    ),
    "pattern": (
        "Invent a product with a code like AB-123 and a price.",
        obj(code={"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}, name=SHORT, price=number(0, 10000)),
    ),
    "any_of": (
        "What is 2 + 2? Answer with a number or a word.",
        obj(answer={"anyOf": [number(0, 100, "integer"), SHORT]}),
    ),
    "one_of": (
        "Describe a pet: a cat or a dog.",
        obj(
            pet={
                "oneOf": [
                    obj(kind={"const": "cat"}, lives=number(1, 9, "integer")),
                    obj(kind={"const": "dog"}, breed=SHORT),
                ]
            }
        ),
    ),
    "ref": (
        "Give the start and end points of a short trip, as coordinates.",
        {
            "$defs": {"point": obj(lat=number(-90, 90), lon=number(-180, 180))},
            **obj(start={"$ref": "#/$defs/point"}, end={"$ref": "#/$defs/point"}),
        },
    ),
    "people": (
        "List two people with their ages and hobbies.",
        obj(
            people={
                "type": "array",
                "minItems": 2,
                "maxItems": 2,
                "items": obj(
                    name=SHORT,
                    age=number(0, 120, "integer"),
                    hobbies={"type": "array", "items": SHORT, "minItems": 1, "maxItems": 3},
                ),
            }
        ),
    ),
}


def tool(name: str, description: str, parameters: dict) -> dict:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


TOOLS = [
    tool(
        "get_weather", "Current weather in a city", obj(city=SHORT, unit={"enum": ["celsius", "fahrenheit"]})
    ),
    tool(
        "add_event",
        "Add an event to the calendar",
        {
            **obj(
                title=SHORT,
                day={"type": "string", "pattern": "^2026-[0-9]{2}-[0-9]{2}$"},
                guests={"type": "array", "items": SHORT, "maxItems": 4},
            ),
            "required": ["title", "day"],
        },
    ),
]
TOOL_PROMPTS = [
    "What's the weather in Lisbon?",
    "Put lunch with Ana on the calendar for next Friday.",
    "Is it raining in Tokyo?",
    "Schedule a team meeting on 2026-03-02 with Bo and Cy.",
]
MAX_TOKENS = 200


def validity(client, fmt: str, replies: int, clients: int) -> dict:
    import jsonschema

    jobs = [(name, t, i) for name in SCHEMAS for t in (0.0, 0.8) for i in range(replies)]

    def one(job):
        name, temperature, i = job
        prompt, schema = SCHEMAS[name]
        r = client.chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=MAX_TOKENS,
            temperature=temperature,
            seed=i,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": True},
            },
        )
        choice = r.choices[0]
        try:
            jsonschema.validate(json.loads(choice.message.content), schema)
            return name, temperature, True, choice.finish_reason
        except (ValueError, jsonschema.ValidationError):
            return name, temperature, False, choice.finish_reason

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, jobs))
    table = {}
    for name, temperature, ok, finish in results:
        row = table.setdefault(f"{name} t={temperature}", [0, 0, 0])
        row[0] += ok
        row[1] += 1
        row[2] += finish == "length"
    print(f"\n{fmt}: {len(SCHEMAS)} schemas x {replies} replies x 2 temperatures, {clients} clients at once")
    print("| schema | valid | cut at max_tokens |\n|---|---|---|")
    for key, (ok, n, cut) in table.items():
        print(f"| {key} | {ok}/{n} | {cut} |")
    total = sum(r[2] for r in results)
    print(f"| all | {total}/{len(results)} | {sum(r[3] == 'length' for r in results)} |")
    return {"valid": total, "replies": len(results)}


def parsed_and_tools(client, fmt: str, replies: int) -> None:
    from typing import Annotated

    import jsonschema
    import openai
    from pydantic import BaseModel, Field

    class Town(BaseModel):
        name: str = Field(max_length=40)
        founded: int = Field(ge=0, le=2030)

    class Recipe(BaseModel):
        title: str = Field(max_length=40)
        ingredients: list[Annotated[str, Field(max_length=40)]] = Field(min_length=2, max_length=5)
        minutes: int = Field(ge=1, le=300)

    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    parsed = 0
    for i in range(replies):
        for model, prompt in ((Town, "Tell me about Oslo."), (Recipe, "A recipe for pancakes.")):
            try:
                r = parse(
                    model="smol",
                    messages=[{"role": "user", "content": prompt}],
                    response_format=model,
                    max_tokens=MAX_TOKENS,
                    temperature=0.8,
                    seed=i,
                )
            except openai.LengthFinishReasonError:  # cut at max_tokens: counted as not parsed
                continue
            parsed += isinstance(r.choices[0].message.parsed, model)
    print(f"{fmt}: parse() with pydantic models: {parsed}/{2 * replies} parsed")
    params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for choice in ("required", "named"):
        valid = total = 0
        for i in range(replies):
            prompt = TOOL_PROMPTS[i % len(TOOL_PROMPTS)]
            name = "get_weather" if "eather" in prompt or "rain" in prompt else "add_event"
            tool_choice = (
                {"type": "function", "function": {"name": name}} if choice == "named" else "required"
            )
            for stream in (False, True):
                kwargs = dict(
                    model="smol",
                    messages=[{"role": "user", "content": prompt}],
                    tools=TOOLS,
                    tool_choice=tool_choice,
                    max_tokens=MAX_TOKENS,
                    temperature=0.8,
                    seed=i,
                )
                if stream:
                    calls = []
                    for chunk in client.chat.completions.create(stream=True, **kwargs):
                        calls += (
                            [c.function for c in chunk.choices[0].delta.tool_calls or []]
                            if chunk.choices
                            else []
                        )
                else:
                    calls = [
                        c.function
                        for c in client.chat.completions.create(**kwargs).choices[0].message.tool_calls or []
                    ]
                total += 1
                try:
                    assert calls and (choice != "named" or calls[0].name == name)
                    for c in calls:
                        jsonschema.validate(json.loads(c.arguments), params[c.name])
                    valid += 1
                except (AssertionError, ValueError, KeyError, jsonschema.ValidationError):
                    pass
        print(f"{fmt}: tool_choice {choice}: {valid}/{total} replies with valid calls (whole and streamed)")


def speed(art: Path, fmt: str, rounds: int) -> None:
    """Decode tok/s and TTFT of a reply held to a schema against the same prompt (the schema's words
    in it too) decoded free for as many tokens; and the compile time of a schema not seen before."""
    from edgekit.structured import plan, prepare

    prompt = [{"role": "user", "content": "List ten animals with a short note on each."}]
    item = {
        "type": "object",
        "properties": {"name": SHORT, "note": {"type": "string", "maxLength": 60}},
        "required": ["name", "note"],
    }
    schema = {
        "type": "object",
        "properties": {"animals": {"type": "array", "minItems": 10, "maxItems": 10, "items": item}},
        "required": ["animals"],
    }
    held_format = {"type": "json_schema", "json_schema": {"name": "animals", "schema": schema}}
    words = prepare(prompt, plan(held_format), False)  # what the held request's template renders
    free, held, ttft_free, ttft_held, compile_ms = [], [], [], [], []
    with edgekit.load(art) as eng:
        eng.chat(words, max_tokens=16)  # warm-up
        for r in range(rounds):
            b = eng.chat(prompt, max_tokens=200, response_format=held_format)
            a = eng.chat(words, max_tokens=b.tokens_out, ignore_eos=True)
            held.append(b.decode_tok_s)
            free.append(a.decode_tok_s)
            ttft_held.append(b.ttft_s)
            ttft_free.append(a.ttft_s)
            fresh = {**schema, "maxProperties": 10 + r}  # a schema not seen before: compiled on this call
            c = eng.chat(
                prompt,
                max_tokens=2,
                response_format={"type": "json_schema", "json_schema": {"name": "animals", "schema": fresh}},
            )
            compile_ms.append(c.constraint["compile_ms"])
    f, h = statistics.median(free), statistics.median(held)
    print(
        f"\n{fmt}: decode {f:.1f} tok/s free, {h:.1f} tok/s held to a schema: {h / f:.2f}x "
        f"({rounds} interleaved rounds, medians, {b.tokens_out} tokens each)"
    )
    print(
        f"TTFT {1000 * statistics.median(ttft_free):.0f} ms free, {1000 * statistics.median(ttft_held):.0f} "
        f"ms held (schema compiled before); a new schema's compile: {statistics.median(compile_ms):.1f} ms"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replies", type=int, default=20)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--formats", default="onnx,gguf")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parts", default="validity,parse", help="validity, parse (pydantic and tools)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="structured-bench-"))
    for fmt in args.formats.split(","):
        art = edgekit.convert(
            "bundled:smollm2-135m-instruct", to=fmt, quant="int4", output=work / fmt, verify=False
        ).path
        if args.speed:
            speed(art, fmt, args.rounds)
            continue
        server = Server([f"smol={art}", "--parallel", str(args.clients), "-c", str(1024 * args.clients)])
        try:
            client = server.client(timeout=600)
            start = time.perf_counter()
            if "validity" in args.parts:
                validity(client, fmt, args.replies, args.clients)
            if "parse" in args.parts:
                parsed_and_tools(client, fmt, max(1, args.replies // 2))
            print(f"({time.perf_counter() - start:.0f} s)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
