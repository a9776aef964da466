"""The generator's prompt for a CV, and the one truncation rule every GIRL stage applies to CV/JD text.

Truncation rule (documented once, applied everywhere a CV or JD enters a model):
  whitespace is collapsed to single spaces, the first `max_words` whitespace-separated words are
  kept, then at most `CHARS_PER_WORD * max_words` characters (text written without spaces, such as
  the Chinese screening set, is cut by characters). Nothing is appended. `genrec prepare-jobs` cuts
  CVs to `max_cv_words` and JDs to `max_jd_words` (defaults below); if a rendered SFT row is still
  longer than train-sft's `max_len` tokens, train-sft stops with an error naming the row (raise
  max_len or lower the word budgets), it never drops the CV silently. The reward model then cuts
  the (CV, JD) token pair to its own `max_len` by dropping tokens from the longer side first.

PPO rollouts and the serving JobGenerator build prompts with `generator_prompt`, never by hand,
so they see exactly the text the generator was fine-tuned on.
"""
from __future__ import annotations

from genrec.data.templates import CV_TO_JD, Template

TEMPLATE_NAME = CV_TO_JD.name
DOMAIN = "jobs"
MAX_CV_WORDS = 200
MAX_JD_WORDS = 120
CHARS_PER_WORD = 6  # the character cap per word of budget, for text without spaces


def truncate_text(text: str, max_words: int) -> str:
    """The documented rule above: collapse whitespace, keep `max_words` words, cap the characters."""
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    words = str(text).split()
    return " ".join(words[:max_words])[: CHARS_PER_WORD * max_words]


def instruction() -> str:
    """The one instruction of the cv_to_jd template (a single phrasing keeps the prompt a function of the CV)."""
    return CV_TO_JD.instructions_for(DOMAIN)[0]


def generator_input(cv_text: str, max_cv_words: int = MAX_CV_WORDS) -> str:
    """The row's `input` field: the CV, truncated by the rule."""
    return truncate_text(cv_text, max_cv_words)


def generator_prompt(cv_text: str, max_cv_words: int = MAX_CV_WORDS, template: Template = CV_TO_JD) -> str:
    """The exact prompt text the CV->JD generator is trained on for `cv_text` (template cv_to_jd,
    CV truncated by the rule). Pass the max_cv_words the data were prepared with if not the default."""
    return template.render_prompt(instruction(), generator_input(cv_text, max_cv_words))
