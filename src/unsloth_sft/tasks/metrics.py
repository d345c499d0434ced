"""Evaluation metrics for generated text: ROUGE, chrF++/BLEU, GSM8K exact match, perplexity."""

from __future__ import annotations

import math
import re
import unicodedata

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

# math.exp overflows just above 709.78; 700 leaves headroom and is already a useless perplexity.
_MAX_EXP_ARG = 700.0

# A number is either comma-grouped thousands ("1,250") or a plain digit run, with an optional
# decimal part that needs digits after the dot, so a sentence-final "42." yields "42".
# A minus counts only at the start of a token or right after "$" ("-$5", "$-5"), so a
# subtraction like "5-3" yields "3", not "-3".
_NUMBER_RE = re.compile(
    r"(?P<neg>(?<![\w$])-)?\$?(?P<neg2>(?<=\$)-)?"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?"
)


class UnicodeTokenizer:
    """Lowercasing word tokenizer for RougeScorer that keeps non-Latin scripts intact."""

    # rouge-score's default tokenizer replaces everything outside [a-z0-9] with spaces, so any
    # Devanagari text tokenizes to nothing and scores 0 even against itself. Python's \w is no
    # fix either: it misses Devanagari vowel signs and viramas (categories Mn/Mc) and so splits
    # "नमस्ते" into "नमस" + "त". Grouping by Unicode category keeps letters, combining marks and
    # digits (L*, M*, N*) together as one word. There is deliberately no stemming: the Porter
    # stemmer is English-only and would treat other languages inconsistently.
    _WORD_CATEGORIES = ("L", "M", "N")
    # Zero-width (non-)joiners (category Cf) only shape a glyph; they must not split a word.
    _JOINERS = frozenset({"\u200c", "\u200d"})

    def tokenize(self, text: str) -> list[str]:
        """Return the lowercased words of text, split on anything not a letter, mark or digit."""
        tokens: list[str] = []
        current: list[str] = []
        for char in unicodedata.normalize("NFC", text.lower()):
            if char in self._JOINERS or unicodedata.category(char)[0] in self._WORD_CATEGORIES:
                current.append(char)
            elif current:
                tokens.append("".join(current))
                current = []
        if current:
            tokens.append("".join(current))
        return tokens


def _check_lengths(predictions: list[str], references: list[str]) -> None:
    """Raise ValueError unless predictions and references pair up one to one."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (0..1) over prediction/reference pairs."""
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    if not predictions:
        return {key: 0.0 for key in ROUGE_TYPES}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeTokenizer())
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        # RougeScorer.score takes (target, prediction): the reference comes first.
        scores = scorer.score(reference, prediction)
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: total / len(predictions) for key, total in totals.items()}


def sacrebleu_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus chrF++ and BLEU on sacrebleu's 0-100 scale."""
    from sacrebleu.metrics import BLEU, CHRF

    _check_lengths(predictions, references)
    # sacrebleu indexes into the first hypothesis and crashes on an empty corpus.
    if not predictions:
        return {"chrf++": 0.0, "bleu": 0.0}
    # "flores200" would suit Hindi best but downloads a SentencePiece model on first use, which
    # fails offline. "intl" splits on Unicode punctuation and symbols, so it handles Devanagari
    # text without any download; "13a" is the fallback for sacrebleu versions that lack it
    # (sacrebleu raises KeyError for an unknown tokenizer name).
    try:
        bleu_metric = BLEU(tokenize="intl")
    except KeyError:
        bleu_metric = BLEU(tokenize="13a")
    refs = [list(references)]
    chrf = CHRF(word_order=2).corpus_score(list(predictions), refs).score
    bleu = bleu_metric.corpus_score(list(predictions), refs).score
    return {"chrf++": float(chrf), "bleu": float(bleu)}


def _normalise_number(match: re.Match[str]) -> str:
    """Return the canonical string of a matched number: no commas, no trailing zero decimals."""
    digits = match.group("int").replace(",", "")
    frac = (match.group("frac") or "").rstrip("0")
    if frac == ".":
        frac = ""
    number = digits + frac
    negative = bool(match.group("neg") or match.group("neg2"))
    # "-0" and "0" are the same answer.
    if negative and number.strip("0.") != "":
        number = "-" + number
    return number


def extract_final_number(text: str) -> str | None:
    """GSM8K answer: the number after the last "####", else the last number in text, normalised."""
    if "####" in text:
        # The reference format puts the answer right after "####"; a bare "####" with nothing
        # numeric after it falls back to the last number anywhere in the text.
        tail = text.rsplit("####", 1)[1]
        match = _NUMBER_RE.search(tail)
        if match:
            return _normalise_number(match)
    matches = list(_NUMBER_RE.finditer(text))
    if not matches:
        return None
    return _normalise_number(matches[-1])


def gsm8k_exact_match(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Fraction of predictions whose final number equals the reference's final number."""
    _check_lengths(predictions, references)
    if not predictions:
        return {"exact_match": 0.0}
    hits = 0
    for prediction, reference in zip(predictions, references):
        predicted = extract_final_number(prediction)
        # A missing number is a wrong answer, even when the reference also lacks one.
        if predicted is not None and predicted == extract_final_number(reference):
            hits += 1
    return {"exact_match": hits / len(predictions)}


def perplexity(mean_loss: float) -> float:
    """exp(mean token cross-entropy), returning inf instead of overflowing."""
    if mean_loss > _MAX_EXP_ARG:
        return float("inf")
    return math.exp(mean_loss)


def free_text(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Scores for free text (summaries, answers, replies): ROUGE-1/2/L, then chrF++ and BLEU."""
    return {**rouge(predictions, references), **sacrebleu_scores(predictions, references)}
