"""Chunking at structure boundaries and the guards against small models' failure modes (pure logic)."""

from __future__ import annotations

import pytest

from edgekit.summaries.chunking import JOIN_TOKENS, plan_chunks, split_sentences
from edgekit.summaries.documents import Block
from edgekit.summaries.summarizer import (
    _groups,
    clean_output,
    copied_fraction,
    find_loop,
    repeated_ngram,
    trim_to_sentence,
)


def words(text: str) -> int:  # a stand-in tokenizer: one token per word
    return len(text.split())


def para(i: int, n: int = 10) -> str:
    return " ".join(f"w{i}x{j}" for j in range(n - 1)) + f" end{i}."


def test_every_chunk_fits_and_the_text_is_covered_in_order():
    blocks = [Block(para(i, 7 + i % 9)) for i in range(60)]
    chunks = plan_chunks(blocks, words, 50, overlap=12)
    assert len(chunks) > 5
    for c in chunks:
        assert words(c.text) + JOIN_TOKENS * c.text.count("\n\n") <= c.tokens <= 50
        assert c.overlap_tokens <= 12 + JOIN_TOKENS
    seen = " ".join(c.text for c in chunks)
    order = [seen.find(f"end{i}.") for i in range(60)]
    assert all(p >= 0 for p in order) and order == sorted(order)


def test_consecutive_chunks_share_whole_sentences():
    blocks = [Block(" ".join(f"Sentence {i}-{j} has five words." for j in range(4))) for i in range(10)]
    chunks = plan_chunks(blocks, words, 60, overlap=12)
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        shared = nxt.text.split("\n\n")[0]
        assert nxt.overlap_tokens > 0 and prev.text.endswith(shared)
        assert shared.startswith("Sentence") and shared.endswith(".")  # whole sentences


def test_a_heading_starts_a_chunk_once_the_current_one_is_half_full():
    blocks = []
    for s in range(4):
        blocks.append(Block(f"Section {s}", "heading", 2))
        blocks += [Block(para(10 * s + i)) for i in range(3)]  # 3 x 10 words: more than half of 50
    chunks = plan_chunks(blocks, words, 50, overlap=0)
    assert [c.text.split("\n\n")[0] for c in chunks] == [f"Section {s}" for s in range(4)]
    assert [c.section for c in chunks] == [f"Section {s}" for s in range(4)]


def test_long_paragraphs_split_at_sentences_then_words_then_characters():
    long_para = " ".join(f"This is sentence number {i} of the paragraph." for i in range(30))
    chunks = plan_chunks([Block(long_para)], words, 40)
    assert len(chunks) > 4 and all(c.text.endswith("paragraph.") for c in chunks)
    one_sentence = " ".join(f"word{i}" for i in range(300))
    assert all(c.tokens <= 40 for c in plan_chunks([Block(one_sentence)], words, 40))
    no_spaces = "x" * 5000  # one token per 10 characters
    chunks = plan_chunks([Block(no_spaces)], lambda t: len(t) // 10 + 1, 100)
    assert "".join(c.text for c in chunks) == no_spaces and all(c.tokens <= 100 for c in chunks)


def test_max_tokens_too_small_is_refused():
    with pytest.raises(ValueError, match="at least 8"):
        plan_chunks([Block("a b c")], words, 4)


def test_sentences():
    assert split_sentences('He said "Go." Then 3 more. Dr. no? Yes! (Fine.) ok') == [
        'He said "Go."',
        "Then 3 more.",
        "Dr. no?",
        "Yes!",
        "(Fine.) ok",
    ]


def test_a_repetition_loop_is_found_where_it_starts():
    text = "The bees dance. " + "They fly to the flowers and back to the hive again. " * 3
    at = find_loop(text)
    assert at is not None and text[:at].count("They fly") == 1
    assert repeated_ngram(text) == ("they", "fly", "to", "the", "flowers", "and", "back", "to")
    assert find_loop("one two three four five six seven eight nine ten") is None
    symbols = "Fuzzing\n\n" + "#\n" * 30  # a loop of symbols is a loop too
    assert symbols[: find_loop(symbols)] == "Fuzzing\n\n#\n"  # cut where the run of 8 "#" recurs
    assert repeated_ngram("A B C D E F G H, a b c d e f g h") == tuple("abcdefgh")  # case and punctuation


def test_labels_and_echoes_are_removed():
    instruction = "Write a summary of the text above in about 50 words."
    assert clean_output("Summary: Bees make honey.") == "Bees make honey."
    assert clean_output("**Summary:** Bees make honey.") == "Bees make honey."
    assert clean_output("Here is a summary of the text:\n\nBees make honey.") == "Bees make honey."
    assert clean_output(f"{instruction} Bees make honey.", instruction) == "Bees make honey."
    ask = "These summarize parts of one document. Write one summary of it in about 50 words."
    echoed = f"Bees make honey.\n\nThese summarize parts of one document. {ask.split('. ')[1]}"
    assert clean_output(echoed, ask) == "Bees make honey."  # an echo at the end, sentence by sentence
    assert clean_output("Bees   make honey.\n\n\n\nThey dance.") == "Bees make honey.\n\nThey dance."
    assert clean_output("The summary shows: bees") == "The summary shows: bees"  # not a leading label


def test_a_cut_summary_ends_at_its_last_sentence():
    assert trim_to_sentence("Bees make honey. They dance to show where flowers") == "Bees make honey."
    assert trim_to_sentence("Bees make honey.") == "Bees make honey."
    assert trim_to_sentence("A. Then a very long sentence that the limit cut in the middle of") == (
        "A. Then a very long sentence that the limit cut in the middle of"
    )  # most would be lost


def test_copied_fraction():
    source = "one two three four five six seven eight nine ten eleven"
    assert copied_fraction(source, source) == 1.0
    assert copied_fraction("alpha beta gamma delta epsilon zeta eta theta iota", source) == 0.0


def test_partial_summaries_are_grouped_into_prompts_that_fit():
    partials = [para(i, 20) for i in range(10)]
    groups = _groups(partials, words, 50)  # 20 + 2 per partial: two per group
    assert [len(g) for g in groups] == [2, 2, 2, 2, 2] and sum(groups, []) == partials
    assert [len(g) for g in _groups(partials[:5], words, 50)] == [2, 2, 1]  # no room for a third
    assert [len(g) for g in _groups(partials[:5], words, 70)] == [3, 2]
    assert [len(g) for g in _groups(partials[:4], words, 70)] == [3, 1]
    assert _groups(partials[:3], words, 1000) == [partials[:3]]
