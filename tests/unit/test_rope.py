"""Rotary position embedding settings (converters/rope.py): reading both config spellings, and the
frequencies of each scaling kind. Checked against formulas written out here (transformers' own)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from edgekit.converters.rope import (
    attention_factor,
    base_frequencies,
    llama3_divisors,
    local_rope_theta,
    longrope_attention_factor,
    rope_parameters,
    rotary_inv_freq,
)
from edgekit.errors import ConversionError

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


# ---- rope_parameters -------------------------------------------------------------------------

def test_old_style_fields_merged():
    config = {"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    params = rope_parameters(config)
    assert params["rope_theta"] == 500000.0
    assert params["rope_type"] == "linear"  # "type" is the older spelling of "rope_type"
    assert params["factor"] == 2.0


def test_rope_type_wins_over_type():
    params = rope_parameters({"rope_scaling": {"type": "su", "rope_type": "longrope"}})
    assert params["rope_type"] == "longrope"


def test_theta_only():
    assert rope_parameters({"rope_theta": 10000.0}) == {"rope_theta": 10000.0}
    assert rope_parameters({}) == {}
    assert rope_parameters({"rope_theta": None, "rope_scaling": None}) == {}


def test_transformers5_rope_parameters():
    config = {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0}}
    params = rope_parameters(config)
    assert params == {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0}


def test_rope_parameters_win_over_old_fields():
    config = {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e6, "factor": 4.0},
              "rope_theta": 1e4, "rope_scaling": {"type": "dynamic", "factor": 2.0, "extra": 1}}
    params = rope_parameters(config)
    assert params["rope_theta"] == 1e6
    assert params["rope_type"] == "linear"
    assert params["factor"] == 4.0
    assert params["extra"] == 1  # old fields fill in what rope_parameters lacks


def test_gemma3_per_layer_type_form():
    config = {"rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}
    params = rope_parameters(config)
    assert params == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    assert local_rope_theta(config) == 10000.0


def test_rope_parameters_does_not_change_the_config():
    config = {"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0}},
              "rope_theta": 1e4, "rope_scaling": {"type": "linear", "low": 1}}
    before = copy.deepcopy(config)
    params = rope_parameters(config)
    params["factor"] = 99.0
    params["new"] = 1
    assert config == before


# ---- local_rope_theta ------------------------------------------------------------------------

def test_local_rope_theta_old_field():
    assert local_rope_theta({"rope_local_base_freq": 10000.0, "rope_theta": 1e6}) == 10000.0


def test_local_rope_theta_absent():
    assert local_rope_theta({"rope_theta": 1e6}) is None
    assert local_rope_theta({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}) is None


def test_local_rope_theta_prefers_rope_parameters():
    config = {"rope_parameters": {"sliding_attention": {"rope_theta": 20000.0}},
              "rope_local_base_freq": 10000.0}
    assert local_rope_theta(config) == 20000.0
    config = {"rope_parameters": {"sliding_attention": {"rope_type": "default"}},
              "rope_local_base_freq": 10000.0}
    assert local_rope_theta(config) == 10000.0


# ---- base_frequencies ------------------------------------------------------------------------

def test_base_frequencies_values():
    freqs = base_frequencies(10000.0, 8)
    np.testing.assert_allclose(freqs, [1.0, 0.1, 0.01, 0.001], rtol=1e-12)
    assert freqs.dtype == np.float64


def test_base_frequencies_shape_and_dtype():
    freqs = base_frequencies(500000.0, 64, np.float32)
    assert freqs.shape == (32,)
    assert freqs.dtype == np.float32
    assert freqs[0] == 1.0
    assert np.all(np.diff(freqs) < 0)
    np.testing.assert_allclose(freqs[1], 500000.0 ** (-2 / 64), rtol=1e-6)


# ---- llama3 ----------------------------------------------------------------------------------

def _llama3_reference(inv_freq: np.ndarray, factor, low, high, old_ctx) -> np.ndarray:
    """transformers' _compute_llama3_parameters, written out."""
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled)


def test_llama3_divisors_regions():
    inv_freq = base_frequencies(500000.0, 128)
    divisors = llama3_divisors(LLAMA3, inv_freq)
    wavelen = 2 * math.pi / inv_freq
    short, long = wavelen < 8192 / 4, wavelen > 8192 / 1
    between = ~short & ~long
    assert short.any() and long.any() and between.any()  # the case covers all three bands
    assert np.all(divisors[short] == 1.0)
    assert np.all(divisors[long] == 8.0)
    assert np.all((divisors[between] > 1.0) & (divisors[between] < 8.0))
    assert np.all(np.diff(divisors) >= 0)  # monotone in wavelength (inv_freq falls with the index)


def test_llama3_divisors_match_transformers():
    inv_freq = base_frequencies(500000.0, 64)
    expected = _llama3_reference(inv_freq, 8.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(inv_freq / llama3_divisors(LLAMA3, inv_freq), expected, rtol=1e-12)


def test_llama3_divisors_keep_the_dtype():
    inv_freq = base_frequencies(500000.0, 64, np.float32)
    assert llama3_divisors(LLAMA3, inv_freq).dtype == np.float32


def test_llama3_divisors_defaults():
    # factor 8, low 1, high 4, original context 8192 when the config leaves them out
    inv_freq = base_frequencies(500000.0, 64)
    np.testing.assert_array_equal(llama3_divisors({"rope_type": "llama3"}, inv_freq),
                                  llama3_divisors(LLAMA3, inv_freq))


def test_llama3_divisors_other_factor():
    inv_freq = base_frequencies(500000.0, 64)
    rope = {**LLAMA3, "factor": 32.0, "original_max_position_embeddings": 8192}
    divisors = llama3_divisors(rope, inv_freq)
    assert divisors.max() == 32.0 and divisors.min() == 1.0


# ---- rotary_inv_freq -------------------------------------------------------------------------

def test_rotary_default():
    np.testing.assert_array_equal(rotary_inv_freq({"rope_theta": 10000.0}, 64), base_frequencies(10000.0, 64))
    np.testing.assert_array_equal(rotary_inv_freq({}, 64), base_frequencies(10000.0, 64))


def test_rotary_linear():
    config = {"rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 4.0}}
    np.testing.assert_allclose(rotary_inv_freq(config, 64), base_frequencies(10000.0, 64) / 4.0, rtol=1e-15)


def test_rotary_llama3():
    config = {"rope_theta": 500000.0, "rope_scaling": dict(LLAMA3)}
    expected = _llama3_reference(base_frequencies(500000.0, 64), 8.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(rotary_inv_freq(config, 64), expected, rtol=1e-12)


def test_rotary_llama3_transformers5_spelling():
    old = {"rope_theta": 500000.0, "rope_scaling": dict(LLAMA3)}
    new = {"rope_parameters": {**LLAMA3, "rope_theta": 500000.0}}
    np.testing.assert_array_equal(rotary_inv_freq(old, 64), rotary_inv_freq(new, 64))


def test_rotary_longrope_divides_by_short_factor():
    short = [1.0, 1.5, 2.0, 4.0]
    config = {"rope_theta": 10000.0, "max_position_embeddings": 131072,
              "original_max_position_embeddings": 4096,
              "rope_scaling": {"type": "longrope", "short_factor": short, "long_factor": [9.0] * 4}}
    np.testing.assert_allclose(rotary_inv_freq(config, 8), base_frequencies(10000.0, 8) / np.array(short),
                               rtol=1e-15)


@pytest.mark.parametrize("kind", ["dynamic", "yarn", "ntk", "unknown"])
def test_rotary_unknown_kind_refused(kind):
    config = {"rope_theta": 10000.0, "rope_scaling": {"type": kind, "factor": 2.0}}
    with pytest.raises(ConversionError, match=kind):
        rotary_inv_freq(config, 64)


def test_rotary_uses_theta():
    a = rotary_inv_freq({"rope_theta": 10000.0}, 64)
    b = rotary_inv_freq({"rope_theta": 1e6}, 64)
    assert a[0] == b[0] == 1.0
    assert b[-1] < a[-1]


# ---- attention_factor ------------------------------------------------------------------------

def _longrope(max_pos: int = 131072, original: int = 4096, **scaling) -> dict:
    return {"max_position_embeddings": max_pos, "original_max_position_embeddings": original,
            "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
                             **scaling}}


def test_attention_factor_longrope():
    expected = math.sqrt(1 + math.log(32) / math.log(4096))
    assert attention_factor(_longrope()) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(1.1902380714238083)


def test_attention_factor_original_in_rope_parameters():
    config = {"max_position_embeddings": 131072,
              "rope_parameters": {"rope_type": "longrope", "original_max_position_embeddings": 4096,
                                  "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}}
    assert attention_factor(config) == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))


def test_attention_factor_given_explicitly():
    assert attention_factor(_longrope(attention_factor=1.25)) == 1.25


def test_attention_factor_not_extended():
    assert attention_factor(_longrope(max_pos=4096)) == 1.0


def test_attention_factor_without_longrope():
    assert attention_factor({"rope_theta": 10000.0}) == 1.0
    assert attention_factor({"max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                             "rope_scaling": {"type": "linear", "factor": 32.0}}) == 1.0
    assert attention_factor({"rope_scaling": dict(LLAMA3)}) == 1.0


def test_longrope_attention_factor_for_gguf():
    expected = math.sqrt(1 + math.log(32) / math.log(4096))
    assert longrope_attention_factor(_longrope()) == pytest.approx(expected)
    assert longrope_attention_factor(_longrope(max_pos=4096)) == 1.0
    assert longrope_attention_factor({"rope_theta": 10000.0}) is None
    no_lists = {"max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                "rope_scaling": {"type": "longrope"}}
    assert longrope_attention_factor(no_lists) is None
