"""Prompt templates: GenRec's format, paraphrased instructions per domain, and a registry.

A row keeps `instruction`, `input` and `output` apart; the template renders them into the text the
model reads. Tokenization renders the prompt (instruction + input) and the response (the output
alone) separately, so the response's token ids are those the catalog trie decodes.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    prompt: str  # with {instruction} and {input}
    instructions: dict[str, tuple[str, ...]]  # domain -> paraphrases
    separator: str = ", "  # joins history titles into the input
    # format=sequence: the text before the first title; titles then follow as their own ids, each
    # ending in eos (genrec/data/tokenize.py tokenize_sequence_rows).
    sequence_prefix: str = "### Instruction:\n{instruction}\n\n### Items:\n"

    def render_prompt(self, instruction: str, input: str) -> str:
        return self.prompt.format(instruction=instruction, input=input)

    def render_sequence_prefix(self, instruction: str) -> str:
        return self.sequence_prefix.format(instruction=instruction)

    def instructions_for(self, domain: str) -> tuple[str, ...]:
        """The paraphrases of a domain; genrec/data/split.py picks one per row from (seed, user, position)."""
        if not self.instructions.get(domain):
            raise KeyError(f"template {self.name!r} has no instructions for domain {domain!r}; "
                           f"known: {sorted(self.instructions)}")
        return self.instructions[domain]


GENREC = Template(
    name="genrec",
    prompt="### Instruction:\n{instruction}\n\n### input:\n{input}\n\n### Response:\n",
    instructions={
        "movies": (
            "Given the movies this user watched, in order, predict the next movie they will watch.",
            "Here is a user's viewing history, oldest first. Which movie will they watch next?",
            "Based on the films listed below, in the order they were seen, name the next film this viewer will choose.",
            "A user watched these movies in this order. Recommend the one movie they are most likely to watch next.",
        ),
        "products": (
            "Given the products this user bought, in order, predict the next product they will buy.",
            "Here is a customer's purchase history, oldest first. Which item will they buy next?",
            "Based on the items listed below, in the order they were purchased, name the next item this shopper will choose.",
            "A user interacted with these products in this order. Recommend the one product they are most likely to want next.",
        ),
        "generic": (
            "Given the items this user interacted with, in order, predict the next item.",
            "Here is a user's history, oldest first. Which item comes next?",
            "Based on the items listed below, in the order they were seen, name the next item this user will choose.",
            "A user interacted with these items in this order. Recommend the one item they are most likely to pick next.",
        ),
    },
)

# GIRL's generator: a CV in, the job description that fits it out (genrec/girl/prompts.py renders it).
CV_TO_JD = Template(
    name="cv_to_jd",
    prompt="### Instruction:\n{instruction}\n\n### CV:\n{input}\n\n### Job description:\n",
    instructions={
        "jobs": ("Write the job description of an opening that fits the job seeker whose CV is below.",),
    },
)

TEMPLATES: dict[str, Template] = {GENREC.name: GENREC, CV_TO_JD.name: CV_TO_JD}


def register(template: Template) -> Template:
    """Add a template (the CV->JD task adds its own); names are unique."""
    if template.name in TEMPLATES and TEMPLATES[template.name] != template:
        raise ValueError(f"a different template named {template.name!r} is already registered")
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown template {name!r}; known: {sorted(TEMPLATES)}") from None
