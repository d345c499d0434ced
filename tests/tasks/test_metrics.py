"""Tests for unsloth_sft.tasks.metrics against hand-computed values."""

from __future__ import annotations

import math
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unsloth_sft import tasks
from unsloth_sft.tasks.metrics import (
    UnicodeTokenizer,
    extract_final_number,
    gsm8k_exact_match,
    perplexity,
    rouge,
    sacrebleu_scores,
)

HINDI = "मैं आज बाज़ार से ताज़ी सब्ज़ियाँ ख़रीदने जा रहा हूँ।"
HINDI_UNRELATED = "बिल्ली ने दूध पिया"
ENGLISH = "The quick brown fox jumps over the lazy dog."
ENGLISH_UNRELATED = "Stock markets fell sharply on Monday morning"


# --- tokenizer -----------------------------------------------------------------------------


def test_tokenizer_keeps_devanagari_combining_marks_inside_words():
    # "नमस्ते" holds a virama (Mn) and a vowel sign (Mn); Python's \w would split it in two.
    assert UnicodeTokenizer().tokenize("नमस्ते, दुनिया!") == ["नमस्ते", "दुनिया"]


def test_tokenizer_lowercases_and_splits_on_punctuation():
    assert UnicodeTokenizer().tokenize("Hello, World! 42x") == ["hello", "world", "42x"]


def test_tokenizer_keeps_zero_width_joiners_inside_words():
    assert UnicodeTokenizer().tokenize("क्\u200dष ज्ञान") == ["क्\u200dष", "ज्ञान"]


def test_tokenizer_does_not_stem():
    assert UnicodeTokenizer().tokenize("running runs") == ["running", "runs"]


# --- ROUGE ---------------------------------------------------------------------------------


def test_rouge_default_tokenizer_scores_identical_hindi_zero():
    # This is why UnicodeTokenizer exists: the default drops every non [a-z0-9] character.
    from rouge_score import rouge_scorer

    scores = rouge_scorer.RougeScorer(["rouge1", "rougeL"]).score(HINDI, HINDI)
    assert scores["rouge1"].fmeasure == 0.0
    assert scores["rougeL"].fmeasure == 0.0


def test_rouge_identical_hindi_is_one():
    assert rouge([HINDI], [HINDI]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_rouge_unrelated_hindi_is_low():
    scores = rouge([HINDI_UNRELATED], [HINDI])
    assert all(value < 0.1 for value in scores.values())


def test_rouge_english_partial_overlap_hand_computed():
    # pred tokens: the cat sat; ref tokens: the cat ran away.
    # rouge1: 2 shared -> P=2/3, R=2/4, F=4/7. rougeL: LCS "the cat" = 2 -> also 4/7.
    # rouge2: "the cat" shared -> P=1/2, R=1/3, F=2/5.
    scores = rouge(["the cat sat"], ["the cat ran away"])
    assert scores["rouge1"] == pytest.approx(4 / 7)
    assert scores["rouge2"] == pytest.approx(2 / 5)
    assert scores["rougeL"] == pytest.approx(4 / 7)


def test_rouge_hindi_partial_overlap_hand_computed():
    # pred: मैं घर जा रहा हूँ; ref: मैं स्कूल जा रहा हूँ (5 tokens each, 4 shared).
    # rouge1 = 4/5; bigrams shared "जा रहा", "रहा हूँ" -> 2/4; LCS "मैं जा रहा हूँ" = 4 -> 4/5.
    scores = rouge(["मैं घर जा रहा हूँ"], ["मैं स्कूल जा रहा हूँ"])
    assert scores["rouge1"] == pytest.approx(0.8)
    assert scores["rouge2"] == pytest.approx(0.5)
    assert scores["rougeL"] == pytest.approx(0.8)


def test_rouge_is_mean_over_pairs():
    # One perfect pair (1.0) and one disjoint pair (0.0) average to 0.5.
    scores = rouge(["a b c", "x y"], ["a b c", "p q"])
    assert scores == {"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5}


def test_rouge_empty_inputs_and_empty_prediction():
    assert rouge([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert rouge([""], ["the cat"])["rouge1"] == 0.0


def test_rouge_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        rouge(["a"], ["a", "b"])


_WORD_CHARS = [chr(code) for code in range(0x0900, 0x0980) if unicodedata.category(chr(code))[0] in "LMN"] + list(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=_WORD_CHARS, min_size=1, max_size=8), min_size=1, max_size=12))
def test_rouge_l_of_text_with_itself_is_one(words):
    text = " ".join(words)
    assert rouge([text], [text])["rougeL"] == 1.0


# --- sacrebleu -----------------------------------------------------------------------------


def test_sacrebleu_identical_is_100():
    scores = sacrebleu_scores([ENGLISH], [ENGLISH])
    assert scores["chrf++"] == pytest.approx(100.0)
    assert scores["bleu"] == pytest.approx(100.0)


def test_sacrebleu_identical_hindi_is_100():
    scores = sacrebleu_scores([HINDI], [HINDI])
    assert scores["chrf++"] == pytest.approx(100.0)
    assert scores["bleu"] == pytest.approx(100.0)


def test_sacrebleu_unrelated_is_low():
    scores = sacrebleu_scores([ENGLISH_UNRELATED], [ENGLISH])
    assert scores["chrf++"] < 20.0
    assert scores["bleu"] < 5.0


def test_sacrebleu_empty_predictions_do_not_crash():
    assert sacrebleu_scores([], []) == {"chrf++": 0.0, "bleu": 0.0}
    scores = sacrebleu_scores(["", ""], ["the cat sat down", "a dog ran off"])
    assert scores == {"chrf++": 0.0, "bleu": 0.0}


# --- GSM8K ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 42", "42"),
        ("so the answer is 1,250.", "1250"),
        ("#### -3", "-3"),
        ("42.0", "42"),
        ("42.00", "42"),
        ("7.5", "7.5"),
        ("no number here", None),
        ("", None),
        ("She had 3 apples, bought 5 more, so 8 in total", "8"),
        ("First 12 then 7 makes 19 and\n#### 18\n", "18"),
        ("It costs $1,000.00", "1000"),
        ("The answer is 42.", "42"),
        ("#### $5", "5"),
        ("5-3 = 2 so 2", "2"),
        ("the difference 5-3", "3"),
        ("temperature was -0", "0"),
        ("a loss of -$5", "-5"),
        ("a loss of $-5", "-5"),
        ("#### \nbut earlier I said 9", "9"),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_gsm8k_exact_match_hand_computed_fraction():
    predictions = [
        "6 * 7 = 42\n#### 42",  # hit
        "so the answer is 1,250.",  # hit: commas stripped
        "#### 7.50",  # hit: trailing zero stripped on both sides
        "I think it is 4",  # miss: wrong number
        "no idea",  # miss: None never matches
        "no idea",  # miss: None never matches even when the reference has no number
    ]
    references = [
        "Natalia sold 42 clips.\n#### 42",
        "#### 1250",
        "#### 7.5",
        "#### 5",
        "#### 3",
        "no number",
    ]
    assert gsm8k_exact_match(predictions, references) == {"exact_match": pytest.approx(3 / 6)}


def test_gsm8k_exact_match_empty():
    assert gsm8k_exact_match([], []) == {"exact_match": 0.0}


# --- perplexity ----------------------------------------------------------------------------


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(10)) == pytest.approx(10.0)
    assert perplexity(1e6) == float("inf")
    assert perplexity(709.0) == float("inf")  # above the guard, below exp's overflow point


# --- dispatch ------------------------------------------------------------------------------


def test_task_metrics_gsm8k():
    assert tasks.get("gsm8k").metrics(["#### 42", "#### 1"], ["#### 42", "#### 2"]) == {"exact_match": 0.5}


@pytest.mark.parametrize("task", ["summarization", "qa", "chat", "instruction", "completion"])
def test_task_metrics_free_text_tasks_merge_rouge_and_sacrebleu(task):
    scores = tasks.get(task).metrics([ENGLISH], [ENGLISH])
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "chrf++", "bleu"}
    assert scores["rougeL"] == 1.0
    assert scores["chrf++"] == pytest.approx(100.0)


def test_unknown_task_names_valid_tasks():
    with pytest.raises(ValueError, match="unknown task 'translation'") as excinfo:
        tasks.get("translation")
    for task in ("gsm8k", "summarization", "qa", "chat", "instruction", "completion"):
        assert task in str(excinfo.value)
