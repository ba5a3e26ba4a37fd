"""`tunewise data synth`: instruction–response pairs written by a teacher model from a documents
folder, each kept only when it is parseable, grounded in its chunk, answerable by retrieval and not a
near-duplicate, with its provenance and a funnel that says where every candidate went.

Modules: ``prompts`` (templates, rendered without ``str.format``), ``parse`` (reasoning tags, code
fences, JSON), ``cache`` (request-keyed, append-only), ``client`` (OpenAI-compatible calls with
backoff), ``cost`` (prices, estimates, the budget), ``filters`` (grounding, answerability,
duplicates), ``pairs`` (the run), ``report`` (the funnel).
"""

from tunewise.data.synth.pairs import SynthOptions, SynthResult, synthesize

__all__ = ["SynthOptions", "SynthResult", "synthesize"]
