"""Sampler (runtimes/sampling.py) over GenerationOptions (runtimes/base.py): pure numpy, no model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit.errors import InvalidOptionError
from edgekit.runtimes.base import GenerationOptions
from edgekit.runtimes.sampling import Sampler

DRAWS = 2000


def _logits(probs: list[float]) -> np.ndarray:
    """Logits whose softmax (at temperature 1) is exactly `probs`."""
    return np.log(np.asarray(probs, dtype=np.float64))


def _draw(options: GenerationOptions, logits: np.ndarray, n: int = DRAWS, history=()) -> np.ndarray:
    sampler = Sampler(options)
    return np.array([sampler(logits, list(history)) for _ in range(n)])


# ---- greedy ----------------------------------------------------------------------------------

def test_greedy_picks_argmax():
    sampler = Sampler(GenerationOptions())
    assert sampler(np.array([0.1, 2.0, -1.0, 1.9], dtype=np.float32), []) == 1
    assert sampler(np.array([-3.0, -2.0, -5.0]), []) == 1
    rng = np.random.default_rng(0)
    for _ in range(50):
        logits = rng.normal(size=97).astype(np.float32)
        assert sampler(logits, []) == int(np.argmax(logits))


def test_greedy_returns_a_python_int():
    token = Sampler(GenerationOptions())(np.array([0.0, 1.0], dtype=np.float32), [])
    assert type(token) is int


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_top_k_one_equals_greedy(seed):
    rng = np.random.default_rng(seed)
    sampler = Sampler(GenerationOptions(temperature=1.5, top_k=1, seed=seed))
    for _ in range(200):
        logits = rng.normal(size=16)
        assert sampler(logits, []) == int(np.argmax(logits))


# ---- temperature sampling --------------------------------------------------------------------

def test_seeded_sampling_is_reproducible():
    logits = np.zeros(8)  # uniform: every draw is a real random choice
    options = GenerationOptions(temperature=0.8, top_k=0, seed=123)
    first, second = _draw(options, logits, 64), _draw(options, logits, 64)
    assert first.tolist() == second.tolist()
    assert len(set(first.tolist())) > 1  # it did sample, not fall back to greedy
    other = _draw(GenerationOptions(temperature=0.8, top_k=0, seed=124), logits, 64)
    assert other.tolist() != first.tolist()


def test_sampling_follows_the_distribution():
    probs = [0.7, 0.2, 0.1]
    draws = _draw(GenerationOptions(temperature=1.0, top_k=0, seed=7), _logits(probs), 4000)
    freq = np.bincount(draws, minlength=3) / draws.size
    assert abs(freq[0] - 0.7) < 0.05
    assert abs(freq[1] - 0.2) < 0.05
    assert abs(freq[2] - 0.1) < 0.05


def test_low_temperature_concentrates_on_the_top_token():
    draws = _draw(GenerationOptions(temperature=0.01, top_k=0, seed=3), np.array([1.0, 1.5, 0.2, 1.4]), 500)
    assert set(draws.tolist()) == {1}


def test_top_k_keeps_only_the_k_largest():
    draws = _draw(GenerationOptions(temperature=1.0, top_k=2, seed=5), _logits([0.3, 0.1, 0.35, 0.25]))
    assert set(draws.tolist()) == {0, 2}


# ---- the candidate-only sampler against the whole-vocabulary one it replaced ------------------

def _whole_vocabulary(options: GenerationOptions, logits: np.ndarray) -> np.ndarray:
    """The probabilities the earlier sampler drew from: float64 over the whole vocabulary, sorted
    in full for top-p (written out here as the specification the fast one must equal)."""
    z = logits.astype(np.float64) / options.temperature
    if 0 < options.top_k < z.size:
        kth = np.partition(z, -options.top_k)[-options.top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if options.min_p > 0:
        p = np.where(p < options.min_p * p.max(), 0.0, p)
    if options.top_p < 1.0:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < options.top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
    return p / p.sum()


@pytest.mark.parametrize("case", range(40))
def test_candidates_give_the_whole_vocabularys_distribution(case):
    """A real vocabulary's width (49,152), logits shaped like a model's (a few likely tokens, a long
    tail), every combination of temperature, top-k, top-p and min-p."""
    rng = np.random.default_rng(case)
    logits = (rng.standard_normal(49152) * rng.uniform(1, 4)).astype(np.float32)
    logits[rng.integers(0, 49152, 5)] += rng.uniform(0, 12)
    options = GenerationOptions(temperature=float(rng.choice([0.3, 0.7, 1.0, 1.6])),
                                top_k=int(rng.choice([0, 1, 40, 500])),
                                top_p=float(rng.choice([1.0, 0.9, 0.5, 0.999])),
                                min_p=float(rng.choice([0.0, 0.05])))
    ids, p = Sampler(options).distribution(logits)
    fast = np.zeros(49152)
    fast[ids] = p
    np.testing.assert_allclose(fast, _whole_vocabulary(options, logits), rtol=1e-5, atol=1e-9)


def test_a_flat_distribution_past_the_few_likeliest_is_sorted_in_full():
    """top-p 0.95 of a uniform vocabulary needs most of it: the 64 likeliest are not enough."""
    logits = np.zeros(1000, np.float32)
    options = GenerationOptions(temperature=1.0, top_k=0, top_p=0.95)
    ids, p = Sampler(options).distribution(logits)
    assert ids.size == 950 and p.sum() == pytest.approx(1.0)


# ---- top-p and min-p -------------------------------------------------------------------------

def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # sorted cumulative mass before each token: 0, 0.6, 0.9, 0.95 -> top_p 0.8 keeps tokens 0 and 1
    probs = [0.6, 0.3, 0.05, 0.05]
    draws = _draw(GenerationOptions(temperature=1.0, top_k=0, top_p=0.8, seed=11), _logits(probs))
    assert set(draws.tolist()) == {0, 1}


def test_top_p_below_the_top_mass_keeps_only_the_top_token():
    options = GenerationOptions(temperature=1.0, top_k=0, top_p=0.5, seed=11)
    draws = _draw(options, _logits([0.3, 0.6, 0.05, 0.05]))
    assert set(draws.tolist()) == {1}


def test_top_p_order_does_not_depend_on_token_index():
    # the same mass as above, shuffled: the kept set follows probability, not position
    probs = [0.05, 0.3, 0.05, 0.6]
    draws = _draw(GenerationOptions(temperature=1.0, top_k=0, top_p=0.8, seed=2), _logits(probs))
    assert set(draws.tolist()) == {1, 3}


def test_min_p_excludes_tokens_below_a_fraction_of_the_top():
    # min_p 0.2 of the top 0.5 = 0.1: only token 3 (0.05) falls below it
    probs = [0.5, 0.3, 0.15, 0.05]
    draws = _draw(GenerationOptions(temperature=1.0, top_k=0, min_p=0.2, seed=13), _logits(probs))
    assert set(draws.tolist()) == {0, 1, 2}
    # min_p 0.5 -> 0.25: tokens 2 and 3 go
    draws = _draw(GenerationOptions(temperature=1.0, top_k=0, min_p=0.5, seed=13), _logits(probs))
    assert set(draws.tolist()) == {0, 1}


def test_min_p_and_top_p_together_measure_top_p_on_the_full_distribution():
    # min_p 0.2 -> 0.1 drops token 3. top_p 0.82 on the full distribution (the mass before each
    # token: 0, 0.5, 0.8) keeps 0, 1, 2, as llama.cpp and transformers (top_p before min_p) do;
    # measured on the renormalized survivors (0, 0.53, 0.84) it would wrongly drop token 2 too.
    probs = [0.5, 0.3, 0.15, 0.05]
    draws = _draw(GenerationOptions(temperature=1.0, top_k=0, min_p=0.2, top_p=0.82, seed=17), _logits(probs))
    assert set(draws.tolist()) == {0, 1, 2}


# ---- repetition penalty ----------------------------------------------------------------------

def test_repeat_penalty_divides_positive_seen_logits():
    logits = np.array([2.0, 1.8, 0.5, -1.0], dtype=np.float32)
    assert Sampler(GenerationOptions())(logits, [0]) == 0  # no penalty: the argmax stays
    # 2.0 / 1.5 = 1.33 < 1.8
    assert Sampler(GenerationOptions(repeat_penalty=1.5))(logits, [0]) == 1
    assert Sampler(GenerationOptions(repeat_penalty=1.5))(logits, [2, 3]) == 0  # unseen top token


def test_repeat_penalty_multiplies_negative_seen_logits():
    logits = np.array([-1.0, -1.2, -5.0, -6.0])
    # -1.0 * 1.5 = -1.5 < -1.2: a negative logit must go down, not up
    assert Sampler(GenerationOptions(repeat_penalty=1.5))(logits, [0]) == 1


def test_repeat_penalty_below_one_favours_seen_tokens():
    logits = np.array([1.0, 1.2, 0.0])
    assert Sampler(GenerationOptions(repeat_penalty=0.5))(logits, [0]) == 0  # 1.0 / 0.5 = 2.0


def test_repeat_penalty_counts_each_token_once():
    logits = np.array([2.0, 1.2])
    # once: 1.33 > 1.2 keeps token 0; applied three times it would be 0.59
    assert Sampler(GenerationOptions(repeat_penalty=1.5))(logits, [0, 0, 0]) == 0


def test_repeat_penalty_leaves_the_callers_logits_alone():
    logits = np.array([2.0, 1.8, 0.5])
    Sampler(GenerationOptions(repeat_penalty=1.5))(logits, [0, 1])
    assert logits.tolist() == [2.0, 1.8, 0.5]


def test_repeat_penalty_applies_before_top_k_when_sampling():
    logits = np.array([3.0, 2.0, 0.0])
    # 3.0 / 2 = 1.5 < 2.0: with top_k 1 the sampler must now always pick token 1
    draws = _draw(GenerationOptions(temperature=1.0, top_k=1, repeat_penalty=2.0, seed=1), logits, 200,
                  history=[0])
    assert set(draws.tolist()) == {1}


# ---- option validation -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"max_tokens": 0},
    {"max_tokens": -5},
    {"temperature": -0.1},
    {"top_k": -1},
    {"top_p": 0.0},
    {"top_p": -0.5},
    {"top_p": 1.01},
    {"min_p": -0.01},
    {"min_p": 1.0},
    {"repeat_penalty": 0.0},
    {"repeat_penalty": -1.0},
    {"temperature": math.nan},
    {"top_p": math.nan},
    {"min_p": math.nan},
    {"repeat_penalty": math.nan},
])
def test_invalid_options_refused(kwargs):
    with pytest.raises(InvalidOptionError, match=rf"^{next(iter(kwargs))} must be"):
        GenerationOptions(**kwargs)


def test_invalid_option_error_is_a_value_error():
    with pytest.raises(ValueError):
        GenerationOptions(top_p=2.0)


@pytest.mark.parametrize("kwargs", [
    {"max_tokens": 1},
    {"temperature": 0.0},
    {"top_k": 0},
    {"top_p": 1.0},
    {"top_p": 1e-6},
    {"min_p": 0.0},
    {"min_p": 0.99},
    {"repeat_penalty": 1e-3},
])
def test_boundary_options_accepted(kwargs):
    options = GenerationOptions(**kwargs)
    key, value = next(iter(kwargs.items()))
    assert getattr(options, key) == value


# ---- frequency and presence penalties (OpenAI's), and the window all penalties look at ----------

def test_frequency_penalty_grows_with_the_count_and_presence_does_not():
    logits = np.array([2.0, 1.5, 0.0])
    # token 0 seen 3 times: 2.0 - 3 x 0.2 = 1.4 < 1.5; seen once it would stay ahead (1.8)
    assert Sampler(GenerationOptions(frequency_penalty=0.2))(logits, [0, 0, 0]) == 1
    assert Sampler(GenerationOptions(frequency_penalty=0.2))(logits, [0]) == 0
    # presence: once, whatever the count: 2.0 - 0.4 = 1.6 > 1.5 even after three
    assert Sampler(GenerationOptions(presence_penalty=0.4))(logits, [0, 0, 0]) == 0
    assert Sampler(GenerationOptions(presence_penalty=0.6))(logits, [0]) == 1
    # negative values favour what was seen
    assert Sampler(GenerationOptions(presence_penalty=-1.0))(np.array([1.0, 1.5]), [0]) == 0


def test_the_penalties_look_at_the_last_64_tokens_only():
    from edgekit.runtimes.sampling import PENALTY_LAST_N

    logits = np.array([2.0, 1.5, 0.0])
    old = [0] + [2] * PENALTY_LAST_N  # token 0 fell out of the window
    for options in (GenerationOptions(repeat_penalty=2.0), GenerationOptions(presence_penalty=1.0)):
        assert Sampler(options)(logits, old) == 0
        assert Sampler(options)(logits, old[1:] + [0]) == 1


@pytest.mark.parametrize("field", ["frequency_penalty", "presence_penalty"])
@pytest.mark.parametrize("value", [-2.5, 2.01])
def test_penalties_outside_openai_range_are_refused(field, value):
    with pytest.raises(InvalidOptionError, match=f"{field} must be in"):
        GenerationOptions(**{field: value})
