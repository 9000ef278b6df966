"""Extractive QA and token classification: data, metrics, Fisher calibration on their losses, the CLI and KD.

No SQuAD or CoNLL data ships offline: the tests write small files in those formats.
"""

import json

import evaluate
import pytest
import torch

from hfprune import DistillationConfig, PruningTrainer
from hfprune.cli import main
from hfprune.data import DataError
from hfprune.question_answering import SQUAD_METRIC_PATH, qa_batches, read_squad
from hfprune.token_classification import SEQEVAL_METRIC_PATH, read_tagged, tagged_batches


TAGS = ["O", "B-PER", "I-PER", "B-LOC"]
CONTEXTS = [
    ("Marie Curie was born in Warsaw in 1867 and later moved to Paris.",
     [("Where was Marie Curie born?", "Warsaw"), ("When was she born?", "1867")]),
    ("The Eiffel Tower is a wrought-iron lattice tower in Paris, finished in 1889.",
     [("In which city is the Eiffel Tower?", "Paris"), ("When was it finished?", "1889")]),
    ("Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in plants.",
     [("What does photosynthesis produce?", "sugar and oxygen")]),
]  # fmt: skip
SENTENCES = [
    (["Ada", "Lovelace", "lived", "in", "London", "."], ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]),
    (["Alan", "visited", "Manchester", "yesterday"], ["B-PER", "O", "B-LOC", "O"]),
    (["The", "meeting", "is", "in", "Geneva"], ["O", "O", "O", "O", "B-LOC"]),
    (["Grace", "Hopper", "wrote", "compilers"], ["B-PER", "I-PER", "O", "O"]),
] * 3  # fmt: skip


def _squad_file(path):
    articles = [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": f"{i}-{j}", "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
        for j, (q, a) in enumerate(questions)]}]} for i, (context, questions) in enumerate(CONTEXTS)]  # fmt: skip
    path.write_text(json.dumps({"version": "1.1", "data": articles}))
    return path


def _conll_file(path):
    path.write_text("-DOCSTART- -X- O O\n\n" + "\n\n".join(
        "\n".join(f"{token} NN {tag}" for token, tag in zip(tokens, tags, strict=True)) for tokens, tags in SENTENCES
    ) + "\n")  # fmt: skip
    return path


def _tiny(head, minilm_path, tmp_path, **config):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    model_config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=37, max_position_embeddings=128,
                                           **config)  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path / head
    getattr(transformers, "BertModel" if head == "Model" else f"BertFor{head}")(model_config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def test_squad_metric_uses_the_official_normalisation():
    metric = evaluate.load(str(SQUAD_METRIC_PATH))
    gold = {"text": ["the Eiffel Tower", "Eiffel tower"], "answer_start": [0, 0]}
    scores = metric.compute(predictions=[{"id": "a", "prediction_text": "Eiffel Tower!"},
                                         {"id": "b", "prediction_text": "tower in Paris"}],
                            references=[{"id": "a", "answers": gold}, {"id": "b", "answers": gold}])  # fmt: skip
    # a: exact after normalisation; b: 1 of 3 predicted tokens right, 1 of 2 gold found -> F1 0.4.
    assert scores == {"exact_match": 50.0, "f1": 70.0}


def test_seqeval_metric_counts_whole_entities():
    metric = evaluate.load(str(SEQEVAL_METRIC_PATH))
    scores = metric.compute(predictions=[["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "O"]],
                            references=[["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER"]])  # fmt: skip
    # 2 of 3 predicted entities match (the second PER stops one token early); 2 of 3 gold found.
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(5 / 6)
    # BIOES: a one-token entity (S-) and an entity closed by E- are whole entities.
    tags = ["S-LOC", "O", "B-PER", "E-PER"]
    bioes = metric.compute(predictions=[tags], references=[tags])
    assert bioes["f1"] == 1.0
    short = metric.compute(predictions=[["B-PER", "E-PER", "O"]], references=[["B-PER", "I-PER", "E-PER"]])
    assert short["f1"] == 0.0


def test_qa_labels_point_at_the_answer(tmp_path, minilm_path):
    _, tokenizer = _tiny("QuestionAnswering", minilm_path, tmp_path)
    rows = read_squad(_squad_file(tmp_path / "squad.json"))
    assert len(rows) == 5
    batch = qa_batches(rows, tokenizer, max_seq_length=64, stride=16)[0]
    for index, row in enumerate(rows):
        ids = batch["input_ids"][index][batch["start_positions"][index] : batch["end_positions"][index] + 1]
        assert tokenizer.decode(ids).lower() == row["answers"]["text"][0].lower()


def test_a_question_longer_than_the_window_allows_names_the_flag(tmp_path, minilm_path):
    _, tokenizer = _tiny("QuestionAnswering", minilm_path, tmp_path)
    rows = read_squad(_squad_file(tmp_path / "squad.json"))
    rows[2] = {**rows[2], "question": " ".join(["why"] * 60) + "?"}
    with pytest.raises(DataError, match=r"Question '1-0' is 61 tokens long; with --max-seq-length 64 a question may "
                                        r"have 45\. Raise --max-seq-length"):
        qa_batches(rows, tokenizer, max_seq_length=64)


def test_token_labels_go_on_first_subtokens(tmp_path, minilm_path):
    _, tokenizer = _tiny("TokenClassification", minilm_path, tmp_path)
    rows = read_tagged(_conll_file(tmp_path / "ner.txt"))
    assert len(rows) == 12 and rows[0]["tags"][0] == "B-PER"

    class Config:
        label2id = {tag: i for i, tag in enumerate(TAGS)}

    batch = tagged_batches(rows[:1], tokenizer, Config)[0]
    labels = batch["labels"][0]
    assert labels[0] == -100  # [CLS]
    assert [int(label) for label in labels if label != -100] == [1, 2, 0, 0, 3, 0]
    ids = [{"tokens": rows[0]["tokens"], "tags": ["1", "2", "0", "0", "3", "0"]}]  # class ids, as the Hub stores them
    assert torch.equal(tagged_batches(ids, tokenizer, Config)[0]["labels"], batch["labels"])
    Config.label2id = {"O": 0}
    with pytest.raises(DataError, match=r"Tags \['B-LOC', 'B-PER', 'I-PER'\] are neither among the model's labels"):
        tagged_batches(rows, tokenizer, Config)


@pytest.mark.parametrize("head", ["QuestionAnswering", "TokenClassification"])
def test_cli_prunes_qa_and_token_models_on_their_own_losses(tmp_path, minilm_path, capsys, head):
    labels = {"id2label": dict(enumerate(TAGS)), "label2id": {t: i for i, t in enumerate(TAGS)}}
    folder, _ = _tiny(head, minilm_path, tmp_path, **(labels if head == "TokenClassification" else {}))
    data = _squad_file(tmp_path / "squad.json") if head == "QuestionAnswering" else _conll_file(tmp_path / "ner.txt")
    out = tmp_path / "out"
    code = main(["prune", "--model", str(folder), "--dataset", str(data), "--method", "fisher", "--structure",
                 "heads_and_neurons", "--target-flops", "0.6", "--eval", "--output", str(out), "--no-latency",
                 "--max-seq-length", "64"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert ("'exact_match'" if head == "QuestionAnswering" else "'f1'") in printed
    card = (out / "README.md").read_text()
    assert ("question-answering" if head == "QuestionAnswering" else "token-classification") in card
    plan = json.loads((out / "pruning_plan.json").read_text())
    assert sum(map(len, plan["heads"])) + sum(map(len, plan["neurons"])) < 2 * (4 + 37)  # units were removed


@pytest.mark.parametrize("head", ["QuestionAnswering", "TokenClassification"])
def test_distillation_matches_qa_spans_and_token_tags(tmp_path, minilm_path, head):
    import transformers
    from datasets import Dataset

    labels = {"id2label": dict(enumerate(TAGS)), "label2id": {t: i for i, t in enumerate(TAGS)}}
    folder, tokenizer = _tiny(head, minilm_path, tmp_path, **(labels if head == "TokenClassification" else {}))
    model_class = getattr(transformers, f"BertFor{head}")
    student, teacher = model_class.from_pretrained(folder), model_class.from_pretrained(folder)
    if head == "QuestionAnswering":
        batches = qa_batches(read_squad(_squad_file(tmp_path / "s.json")), tokenizer, max_seq_length=64)
    else:
        batches = tagged_batches(read_tagged(_conll_file(tmp_path / "n.txt")), tokenizer, student.config)
    rows = {key: [row.tolist() for batch in batches for row in batch[key]] for key in batches[0]}
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                                          report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)  # fmt: skip
    trainer = PruningTrainer(model=student, args=args, train_dataset=Dataset.from_dict(rows), teacher_model=teacher,
                             distillation_config=DistillationConfig(alpha=0.5))  # fmt: skip
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "kd_loss" in entry]
    # Identical student and teacher start with zero KL: the KD term is there and finite.
    assert logged and all(0.0 <= entry["kd_loss"] < 1.0 for entry in logged)


def test_an_answer_in_a_later_window_labels_only_that_window(tmp_path, minilm_path):
    _, tokenizer = _tiny("QuestionAnswering", minilm_path, tmp_path)
    filler = " ".join(["The river flows slowly past the old mill."] * 12)
    context = f"{filler} The treasure is buried under the oak tree."
    row = {"id": "far", "question": "Where is the treasure?", "context": context,
           "answers": {"text": ["under the oak tree"], "answer_start": [context.index("under the oak tree")]}}
    batch = qa_batches([row], tokenizer, max_seq_length=64, stride=16)[0]
    windows = len(batch["input_ids"])
    assert windows > 2
    cls = tokenizer.cls_token_id
    spans = list(zip(batch["start_positions"].tolist(), batch["end_positions"].tolist(), strict=True))
    answered = [i for i, (start, _) in enumerate(spans) if batch["input_ids"][i][start] != cls]
    assert answered and answered[-1] == windows - 1  # the answer is at the end of the context
    for i in answered:
        start, end = spans[i]
        assert tokenizer.decode(batch["input_ids"][i][start : end + 1]) == "under the oak tree"
    assert all(batch["input_ids"][i][spans[i][0]] == cls and spans[i][0] == spans[i][1]
               for i in range(windows) if i not in answered)  # fmt: skip
    wrong = {**row, "answers": {"text": ["under the oak tree"], "answer_start": [3]}}
    with pytest.raises(DataError, match=r"Question 'far': answer_start 3 does not point at its answer 'under the oak "
                                        r"tree' in the context; the text first occurs at \d+"):
        qa_batches([wrong], tokenizer, max_seq_length=64, stride=16)


def test_qa_distillation_gives_padding_no_weight():
    from hfprune.distillation import head_logits, kd_loss

    mask = torch.tensor([[1, 1, 1, 0, 0]])
    student = {"start_logits": torch.tensor([[1.0, 2.0, 0.5, 9.0, -3.0]]),
               "end_logits": torch.tensor([[0.0, 1.0, 3.0, -7.0, 8.0]])}  # fmt: skip
    teacher = {key: value.clone() for key, value in student.items()}
    teacher["start_logits"][0, 3:] = torch.tensor([-5.0, 20.0])  # differs only where there is padding
    pairs = zip(head_logits(student, mask), head_logits(teacher, mask), strict=True)
    assert all(float(kd_loss(s, t)) == pytest.approx(0.0, abs=1e-6) for s, t in pairs)
    unmasked = zip(head_logits(student), head_logits(teacher), strict=True)
    assert max(float(kd_loss(s, t)) for s, t in unmasked) > 0.1


def test_byte_level_tokenizers_see_words_as_in_running_text(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hfprune.token_classification import tagged_features

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(["Ada Lovelace lived in London", "hello world again"] * 20,
                                trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"],
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>")

    class Config:
        label2id = {tag: i for i, tag in enumerate(TAGS)}

    row = {"tokens": ["Ada", "Lovelace", "lived", "in", "London"], "tags": ["B-PER", "I-PER", "O", "O", "B-LOC"]}
    feature = tagged_features([row], tokenizer, Config)[0]
    # The same pieces as the sentence written out (RoBERTa's "Ġword" after a space), labels on each word's first.
    assert feature["input_ids"] == tokenizer("Ada Lovelace lived in London")["input_ids"]
    assert [label for label in feature["labels"] if label != -100] == [1, 2, 0, 0, 3]


@pytest.mark.parametrize("head", ["QuestionAnswering", "TokenClassification"])
def test_a_training_recipe_fine_prunes_qa_and_token_heads(tmp_path, minilm_path, head):
    import yaml

    from hfprune.recipes import GlueRecipe, train_glue

    data = tmp_path / "data"
    data.mkdir()
    if head == "QuestionAnswering":
        folder, _ = _tiny(head, minilm_path, tmp_path)
        _squad_file(data / "train.json"), _squad_file(data / "validation.json")
        section = {"path": str(data)}  # the head comes from the checkpoint's architecture
    else:
        folder, _ = _tiny("Model", minilm_path, tmp_path)  # no head yet: it gets the training file's tags
        _conll_file(data / "train.txt"), _conll_file(data / "validation.txt")
        section = {"path": str(data), "task": "token-classification"}
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({
        "model": str(folder), "teacher": str(folder) if head == "QuestionAnswering" else None,
        "output_dir": str(tmp_path / "final"), "max_seq_length": 64, "dataset": section,
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 3, "per_device_train_batch_size": 4,
                     "learning_rate": "5e-4", "use_cpu": True, "report_to": [], "save_strategy": "no"},
        "pruning": {"importance": "magnitude", "sparsity": 0.3},
    }))  # fmt: skip
    result = train_glue(GlueRecipe.from_yaml(recipe_file))
    metric = "exact_match" if head == "QuestionAnswering" else "f1"
    assert metric in result["metrics"]["validation"] and result["sparsity"] == pytest.approx(0.3, abs=0.02)
    saved = json.loads((tmp_path / "final" / "config.json").read_text())
    assert saved["architectures"] == [f"BertFor{head}"]
    if head == "TokenClassification":
        assert saved["id2label"] == {"0": "O", "1": "B-LOC", "2": "B-PER", "3": "I-PER"}
    card = (tmp_path / "final" / "README.md").read_text()
    assert ("question-answering" if head == "QuestionAnswering" else "token-classification") in card
    if head == "QuestionAnswering":
        assert "dense teacher" in card  # the teacher was scored on the same questions
    with pytest.raises(Exception, match=r"dataset.task is 'qa'; choose one of text-classification, "
                                        r"question-answering, token-classification"):
        GlueRecipe(model=str(folder), dataset={"path": str(data), "task": "qa"},
                   training={"output_dir": str(tmp_path / "r")})  # fmt: skip
