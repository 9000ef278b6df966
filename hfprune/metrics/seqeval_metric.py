"""Entity-level precision, recall and F1 for tagged sequences (CoNLL-2000/2003 style), for `evaluate`, offline.

An entity is a maximal run of tags of one type that starts with ``B-`` (or with ``I-`` after a tag of another type
or ``O``, as conlleval reads IOB1 files) and continues with ``I-`` of the same type; BIOES/BILOU tags are read too
(``S-``/``U-``: a one-token entity, ``E-``/``L-``: its last token). A predicted entity counts only when its type and
both its ends match a gold one. Micro-averaged over entities, like ``seqeval``'s default and conlleval;
``accuracy`` is per token. Tags without such prefixes (POS tags) have no entities: use ``accuracy`` for them.

Keep this file self-contained: `evaluate.load` copies it into its modules cache and imports the copy.
"""

import datasets
import evaluate


_DESCRIPTION = """\
Entity-level precision, recall and F1 (micro-averaged) and token accuracy for BIO/IOB-tagged sequences.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[str]]`): Predicted tags per token of each sentence.
    references (`list[list[str]]`): Gold tags, same lengths.
Returns:
    `dict[str, float]`: ``precision``, ``recall``, ``f1`` (entity level) and ``accuracy`` (token level).
Examples:
    >>> metric = evaluate.load("hfprune/metrics/seqeval_metric.py")
    >>> metric.compute(predictions=[["B-PER", "I-PER", "O"]], references=[["B-PER", "I-PER", "O"]])
    {'precision': 1.0, 'recall': 1.0, 'f1': 1.0, 'accuracy': 1.0}
"""

_CITATION = """\
@inproceedings{tjong-kim-sang-de-meulder-2003-introduction,
  title={Introduction to the {CoNLL}-2003 Shared Task: Language-Independent Named Entity Recognition},
  author={Tjong Kim Sang, Erik F. and De Meulder, Fien},
  booktitle={CoNLL},
  year={2003}
}
"""


def entities(tags):
    """``{(type, start, end)}`` of the entities in one sentence's tags (end exclusive)."""
    found, start, kind = set(), None, None
    for index, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        continues = prefix in ("I", "E", "L") and name == kind
        if start is not None and not continues:
            found.add((kind, start, index))
            start, kind = None, None
        if prefix in ("B", "I", "E", "L", "S", "U") and not continues:
            start, kind = index, name
        if start is not None and prefix in ("E", "L", "S", "U"):  # the entity ends with this token
            found.add((kind, start, index + 1))
            start, kind = None, None
    return found


class Seqeval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("string")),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references):
        correct = predicted = gold = tokens = right = 0
        for prediction, reference in zip(predictions, references, strict=True):
            if len(prediction) != len(reference):
                raise ValueError(f"A sentence has {len(prediction)} predicted tags for {len(reference)} gold tags.")
            mine, theirs = entities(prediction), entities(reference)
            correct += len(mine & theirs)
            predicted += len(mine)
            gold += len(theirs)
            tokens += len(reference)
            right += sum(p == r for p, r in zip(prediction, reference, strict=True))
        precision = correct / predicted if predicted else 0.0
        recall = correct / gold if gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "accuracy": right / tokens if tokens else 0.0}
