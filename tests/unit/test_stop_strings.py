"""Stop strings in streamed text (edgekit/engine.py): where a stop string cuts the text, and how much
of the text's end must be held back because it may be the start of one."""

from __future__ import annotations

import itertools

import pytest

from edgekit.engine import _max_partial, _stop_at

# ---- _stop_at --------------------------------------------------------------------------------


def test_stop_found_at_its_index():
    assert _stop_at("hello world", ["wor"]) == 6
    assert _stop_at("hello world", ["hello"]) == 0
    assert _stop_at("hello world", ["d"]) == 10


def test_no_stop_gives_none():
    assert _stop_at("hello world", ["xyz"]) is None
    assert _stop_at("hello world", []) is None
    assert _stop_at("", ["a"]) is None


def test_earliest_of_several_stops():
    assert _stop_at("abc STOP def END", ["END", "STOP"]) == 4
    assert _stop_at("abc STOP def END", ["STOP", "END"]) == 4
    # overlapping stops: the one that starts first wins, whatever its length
    assert _stop_at("xabcd", ["bc", "abcd"]) == 1


def test_first_occurrence_of_a_repeated_stop():
    assert _stop_at("a.b.c.", ["."]) == 1


def test_start_skips_earlier_matches():
    text = "stop here, stop there"
    assert _stop_at(text, ["stop"]) == 0
    assert _stop_at(text, ["stop"], start=1) == 11
    assert _stop_at(text, ["stop"], start=11) == 11
    assert _stop_at(text, ["stop"], start=12) is None
    assert _stop_at(text, ["stop"], start=len(text) + 5) is None


def test_start_still_finds_a_stop_that_begins_at_start():
    # the engine searches from `before - longest + 1`: a stop straddling the old end must be found
    assert _stop_at("abcSTO" + "P!", ["STOP"], start=3) == 3


def test_empty_stop_strings_ignored():
    assert _stop_at("abc", [""]) is None  # str.find("") is 0: an empty stop would cut everything
    assert _stop_at("abc", ["", "c"]) == 2
    assert _stop_at("abc", ["c", ""]) == 2


def test_unicode_indices_are_characters():
    assert _stop_at("日本語のテキスト", ["テキ"]) == 4
    assert _stop_at("🤖🚀✨ end", ["✨"]) == 2


# ---- _max_partial ----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "stops", "expected"), [
    ("abc", ["cd"], 1),
    ("abc", ["bcd"], 2),
    ("abab", ["ababc"], 4),
    ("aaa", ["aab"], 2),  # the longest suffix, not the first that matches
    ("w", ["world"], 1),  # text shorter than the stop
    ("xyz", ["abc"], 0),
    ("", ["abc"], 0),
    ("abc", [], 0),
    ("abc", [""], 0),  # empty stops hold nothing back
    ("abc", ["a"], 0),  # a one-character stop has no proper prefix
    ("abc", ["abc"], 0),  # a whole stop is _stop_at's job: only proper prefixes count
    ("hello wo", ["world", "o w"], 2),  # the longest over several stops
    ("hello wo", ["o w", "world"], 2),
    ("日本", ["本語"], 1),
    ("x<|im", ["<|im_end|>"], 4),
])
def test_max_partial(text, stops, expected):
    assert _max_partial(text, stops) == expected


def _reference_partial(text: str, stops: list[str]) -> int:
    """Straight from the definition: longest suffix of text that is a proper prefix of a stop."""
    return max([n for s in stops for n in range(1, len(s))
                if n <= len(text) and text[len(text) - n:] == s[:n]], default=0)


def test_max_partial_matches_its_definition_exhaustively():
    alphabet = "ab"
    texts = ["".join(p) for n in range(6) for p in itertools.product(alphabet, repeat=n)]
    stop_sets = [["".join(p)] for n in range(1, 5) for p in itertools.product(alphabet, repeat=n)]
    stop_sets += [["ab", "bba"], ["aab", "b", ""], ["abab", "bb"]]
    for text in texts:
        for stops in stop_sets:
            assert _max_partial(text, stops) == _reference_partial(text, stops), (text, stops)


def test_held_back_text_never_emits_part_of_a_stop():
    # what the engine emits before seeing more tokens: text[:len(text) - _max_partial]. Growing the text
    # character by character, nothing emitted may ever belong to the stop string.
    full, stop = "say hello<|im_end|> trailing", "<|im_end|>"
    cut = full.index(stop)
    for end in range(len(full) + 1):
        text = full[:end]
        if _stop_at(text, [stop]) is not None:
            break
        safe = len(text) - _max_partial(text, [stop])
        assert safe <= cut, text
    else:
        pytest.fail("the stop string was never found")
