"""SQuAD v1 metric for `evaluate` (exact match and F1 with the official answer normalisation), usable offline.

The Hub's ``squad`` metric has to be downloaded; this is the same computation as the official v1.1 evaluation
script, as a local `evaluate` module: ``evaluate.load("<path>/squad_metric.py")``. Answers are normalised by
lower-casing, removing punctuation and the articles a/an/the, and collapsing whitespace; each prediction scores the
best of its gold answers; both metrics are percentages.

Keep this file self-contained: `evaluate.load` copies it into its modules cache and imports the copy (see
``glue_metric.py`` for why `evaluate` is imported as a module).
"""

import collections
import re
import string

import datasets
import evaluate


_DESCRIPTION = """\
SQuAD v1.1 exact match and token F1 (percentages), with the official normalisation of answers.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[dict]`): ``{"id": str, "prediction_text": str}`` per question.
    references (`list[dict]`): ``{"id": str, "answers": {"text": list[str], "answer_start": list[int]}}``.
Returns:
    `dict[str, float]`: ``exact_match`` and ``f1``, in percent.
Examples:
    >>> metric = evaluate.load("hfprune/metrics/squad_metric.py")
    >>> metric.compute(predictions=[{"id": "1", "prediction_text": "the Eiffel Tower"}],
    ...                references=[{"id": "1", "answers": {"text": ["Eiffel Tower"], "answer_start": [0]}}])
    {'exact_match': 100.0, 'f1': 100.0}
"""

_CITATION = """\
@inproceedings{rajpurkar2016squad,
  title={{SQuAD}: 100,000+ Questions for Machine Comprehension of Text},
  author={Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle={EMNLP},
  year={2016}
}
"""


def normalize_answer(text):
    """Lower case, drop punctuation, articles and extra whitespace (the official v1.1 normalisation)."""
    text = text.lower()
    text = "".join(character for character in text if character not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction, gold):
    prediction_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction, gold):
    return float(normalize_answer(prediction) == normalize_answer(gold))


class Squad(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                "references": {
                    "id": datasets.Value("string"),
                    "answers": datasets.Sequence({"text": datasets.Value("string"),
                                                  "answer_start": datasets.Value("int32")}),
                },
            }),
        )

    def _compute(self, predictions, references):
        predicted = {item["id"]: item["prediction_text"] for item in predictions}
        exact = f1 = 0.0
        for reference in references:
            golds = reference["answers"]["text"] or [""]
            answer = predicted.get(reference["id"], "")
            exact += max(exact_match_score(answer, gold) for gold in golds)
            f1 += max(f1_score(answer, gold) for gold in golds)
        total = max(1, len(references))
        return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}
