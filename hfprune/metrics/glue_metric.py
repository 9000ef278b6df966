"""GLUE metric for `evaluate`, computed with scikit-learn and scipy, usable offline.

The Hub's ``glue`` metric has to be downloaded; this file is the same metric as a local script, so
``evaluate.load("<path>/glue_metric.py", config_name="mrpc")`` works without network access. It returns the same
keys as the Hub metric:

- ``cola``: ``matthews_correlation``
- ``sst2``, ``qnli``, ``rte``, ``mnli``, ``mnli_matched``, ``mnli_mismatched``: ``accuracy``
- ``mrpc``, ``qqp``: ``accuracy`` and ``f1`` (binary, positive class 1)
- ``stsb``: ``pearson`` and ``spearmanr``

Keep this file self-contained. `evaluate.load` copies it into its modules cache and imports the copy, so a
relative import (``from ..errors import ...``) would not resolve there. Import `evaluate` as a module, not
``from evaluate import Metric``: `evaluate` picks the first `EvaluationModule` subclass it finds in this file's
namespace as the metric class, and an imported ``Metric`` name would be found before ours.
"""

import datasets
import evaluate
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


_DESCRIPTION = """\
GLUE (General Language Understanding Evaluation) metric: the score each GLUE task is reported with. Computed locally
with scikit-learn (accuracy, F1, Matthews correlation) and scipy (Pearson, Spearman).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]` or `list[float]`):
        Predicted class ids (argmax of the logits), or predicted similarity scores for ``stsb``.
    references (`list[int]` or `list[float]`):
        Gold class ids, or gold similarity scores for ``stsb``.
Returns:
    `dict[str, float]`: ``matthews_correlation`` (cola); ``accuracy`` (sst2, qnli, rte, mnli*); ``accuracy`` and
    ``f1`` (mrpc, qqp); ``pearson`` and ``spearmanr`` (stsb).
Examples:
    >>> metric = evaluate.load("hfprune/metrics/glue_metric.py", config_name="mrpc")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666, 'f1': 0.6666666666666666}
"""

_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""

# Which metrics each config computes. mnli_matched / mnli_mismatched exist because the Hub metric has them and
# scripts pass the evaluation split's name; they are plain accuracy.
METRICS_BY_CONFIG = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy",),
    "mnli_matched": ("accuracy",),
    "mnli_mismatched": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
}


# evaluate names a metric, and its cache folder HF_METRICS_CACHE/<name>/<config_name>, after the class in snake_case:
# "GlueMetric" -> "glue_metric" keeps our cache files apart from those of the Hub's "glue" metric (class "Glue").
@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlueMetric(evaluate.Metric):
    """GLUE metric; ``config_name`` is the task (``"cola"``, ``"sst2"``, ..., ``"mnli_matched"``)."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in METRICS_BY_CONFIG:
            raise ValueError(
                f"Unknown GLUE metric config_name {self.config_name!r}. Pass one of {sorted(METRICS_BY_CONFIG)}, "
                'e.g. evaluate.load(path, config_name="sst2").'
            )
        # stsb is regression: float scores (float64 rather than the Hub metric's float32, so the inputs are not
        # rounded before scipy sees them). Every other task compares integer class ids.
        value_type = "float64" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value(value_type), "references": datasets.Value(value_type)}
            ),
            codebase_urls=["https://github.com/nyu-mll/GLUE-baselines"],
            reference_urls=["https://gluebenchmark.com/"],
            format="numpy",
        )

    def _compute(self, predictions, references) -> dict[str, float]:  # noqa: ANN001 - numpy arrays from evaluate
        if self.config_name == "cola":
            return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
        if self.config_name == "stsb":
            return {
                "pearson": float(pearsonr(predictions, references)[0]),
                "spearmanr": float(spearmanr(predictions, references)[0]),
            }
        result = {"accuracy": float(accuracy_score(references, predictions))}
        if self.config_name in ("mrpc", "qqp"):
            result["f1"] = float(f1_score(references, predictions))
        return result
