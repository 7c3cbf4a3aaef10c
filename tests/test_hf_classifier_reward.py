"""HFClassifierReward: probabilities of a tiny classifier mapped onto the reward scale."""

import pytest
import torch

from wavalign.rewards import Completion
from wavalign.rewards.hf_classifier import HFClassifierReward


@pytest.fixture(scope="module")
def classifier():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "good", "bad", "answer"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2, id2label={0: "bad", 1: "good"},
                        label2id={"bad": 0, "good": 1})
    return BertForSequenceClassification(config).eval(), tokenizer


def test_scores_are_label_probability_on_the_scale(classifier):
    model, tokenizer = classifier
    reward = HFClassifierReward(model, tokenizer, label="good", score_min=1.0, score_max=5.0)
    completions = [Completion(text="good answer"), Completion(text="bad"), Completion(text="")]
    scores = reward(["q"] * 3, completions)
    with torch.no_grad():
        encoded = tokenizer(["good answer", "bad"], padding=True, return_tensors="pt")
        probs = torch.softmax(model(**encoded).logits, dim=-1)[:, 1]
    assert scores[:2] == pytest.approx((1.0 + 4.0 * probs).tolist(), rel=1e-5)
    assert scores[2] is None  # nothing to classify: no score, not a made-up one


def test_bad_configuration(classifier, tmp_path):
    model, tokenizer = classifier
    with pytest.raises(ValueError, match="label 'great' not in the classifier's labels"):
        HFClassifierReward(model, tokenizer, label="great")
    with pytest.raises(ValueError, match=r"label index 5 outside \[0, 2\)"):
        HFClassifierReward(model, tokenizer, label=5)
    with pytest.raises(FileNotFoundError, match="classifier directory not found"):
        HFClassifierReward(tmp_path / "missing")
