"""data.source: hf_dataset: local Hugging Face datasets (save_to_disk directories, parquet and
json data files) read with the JSONL record formats; bad records name dataset[split][index]."""

import sys

import pytest

datasets = pytest.importorskip("datasets")

from wavalign.train.config import ConfigError, TrainConfig  # noqa: E402

BASE = ["data.world=fast", "optim.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=24",
        "eval.limit=2", "run.progress=false", "run.plots=false", "run.tensorboard=false", "run.save_every=0",
        "optim.warmup_steps=1", "optim.steps=1", "eval.before=false", "eval.after=false"]
OURS = ("id", "prompt_text", "response_text", "response_units", "answer", "style")


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """load_dataset caches what it reads; keep that in tmp_path, never the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def train(tmp_path, path, *extra, world, name="run"):
    from wavalign.train.trainer import Trainer

    config = TrainConfig.load(None, BASE + [f"run.output_dir={tmp_path}", f"run.name={name}",
                                            "data.source=hf_dataset", f"data.path={path}", *extra])
    trainer = Trainer(config, world=world)
    try:
        return trainer, trainer.fit()
    finally:
        trainer.close()


def ours(records):
    return [{k: r[k] for k in OURS} for r in records]


def test_save_to_disk_dataset_dict_trains_and_evaluates_on_its_eval_split(fast_world, tmp_path):
    train_records, test_records = fast_world.examples("train")[:6], fast_world.examples("test")[:3]
    path = tmp_path / "my_data"
    datasets.DatasetDict(train=datasets.Dataset.from_list(ours(train_records)),
                         test=datasets.Dataset.from_list(ours(test_records))).save_to_disk(str(path))
    trainer, summary = train(tmp_path, path, "data.eval_split=test", "eval.after=true", world=fast_world)
    assert summary["step"] == 1 and summary["skipped_lines"] == 0
    assert [e.id for e in trainer.train_examples] == [r["id"] for r in train_records]
    assert [e.id for e in trainer.eval_examples] == [r["id"] for r in test_records]
    first = trainer.train_examples[0]
    assert first.where == f"{path}[train][0]" and trainer.eval_examples[2].where == f"{path}[test][2]"
    assert first.prompt_ids == train_records[0]["prompt_ids"]
    assert first.response_ids == train_records[0]["response_ids"]
    assert first.columns == {"id": train_records[0]["id"], "answer": train_records[0]["answer"],
                             "style": train_records[0]["style"]}
    assert "reward" in summary["evaluations"]["after"]


@pytest.mark.parametrize("layout", ["parquet_directory", "json_file"])
def test_data_files_train(fast_world, tmp_path, layout):
    records = fast_world.examples("train")[:4]
    table = datasets.Dataset.from_list(ours(records))
    if layout == "parquet_directory":  # splits from the file names
        path = tmp_path / "parquet_data"
        table.to_parquet(str(path / "train.parquet"))
        datasets.Dataset.from_list(ours(fast_world.examples("dev")[:2])).to_parquet(str(path / "validation.parquet"))
        extra = ["data.eval_split=validation"]
    else:  # one file: its one split is "train"
        path = tmp_path / "records.jsonl"
        table.to_json(str(path))
        extra = []
    trainer, summary = train(tmp_path, path, "mode=sft", *extra, world=fast_world)
    assert summary["step"] == 1
    assert [e.response_ids for e in trainer.train_examples] == [r["response_ids"] for r in records]
    assert trainer.train_examples[3].where == f"{path}[train][3]"
    assert len(trainer.eval_examples) == (2 if extra else 0)


def test_public_records_resolve_audio_against_the_dataset_directory(fast_world, tmp_path):
    from wavalign.world.audio import SAMPLE_RATE, write_wav

    records = fast_world.examples("train")[:3]
    path = tmp_path / "public_data"
    rows = [{"messages": [{"role": "user", "content": r["prompt_text"]}], "audios": [],
             "sft_target_text": r["response_text"], "sft_target_audio": f"audio/{r['id']}.wav",
             "task_type": "qa", "question_text": r["question"], "answer": r["answer"], "style": r["style"]}
            for r in records]
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    (path / "audio").mkdir()
    for r in records:
        write_wav(path / "audio" / f"{r['id']}.wav", fast_world.scorer.units.decode(r["response_units"]),
                  SAMPLE_RATE)
    trainer, _ = train(tmp_path, path, world=fast_world)
    example = trainer.train_examples[0]
    assert example.prompt_ids == records[0]["prompt_ids"] and example.response_ids is not None
    assert example.columns["task_type"] == "qa" and "audios" not in example.columns


def test_a_bad_record_names_dataset_split_and_index_and_skip_bad_lines_counts_it(fast_world, tmp_path):
    rows = ours(fast_world.examples("train")[:6])
    rows[3]["prompt_text"] = None  # Arrow keeps the column; a null counts as absent
    path = tmp_path / "my_data"
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows)).save_to_disk(str(path))
    with pytest.raises(ValueError, match=r"my_data\[train\]\[3\]: needs prompt_ids, prompt_text or prompt_units"):
        train(tmp_path, path, world=fast_world)
    trainer, summary = train(tmp_path, path, "data.skip_bad_lines=true", "mode=sft", name="skip", world=fast_world)
    assert summary["skipped_lines"] == 1 and len(trainer.train_examples) == 5
    assert [e.where for e in trainer.train_examples][3] == f"{path}[train][4]"


def test_missing_splits_paths_and_config_are_named(tmp_path):
    from wavalign.train.data import load_hf_split

    path = tmp_path / "my_data"
    datasets.DatasetDict(train=datasets.Dataset.from_list([{"prompt_ids": [1]}])).save_to_disk(str(path))
    with pytest.raises(ValueError, match=r"my_data: no split 'dev'; it has \['train'\]"):
        load_hf_split(path, "dev")
    data_file = tmp_path / "one.parquet"
    datasets.Dataset.from_list([{"prompt_ids": [1]}]).to_parquet(str(data_file))
    assert load_hf_split(data_file, "train").num_rows == 1
    with pytest.raises(ValueError, match=r"one\.parquet: datasets\.load_dataset failed for split 'test'"):
        load_hf_split(data_file, "test")
    with pytest.raises(FileNotFoundError, match="data.path"):
        load_hf_split(tmp_path / "nowhere", "train")
    with pytest.raises(ConfigError, match=r"data\.path is required when data\.source is 'hf_dataset'"):
        TrainConfig.load(None, ["data.source=hf_dataset"])
    with pytest.raises(ConfigError, match=r"data\.source must be one of \('world', 'jsonl', 'hf_dataset'\)"):
        TrainConfig.load(None, ["data.source=hf"])
    config = TrainConfig.load(None, ["data.source=hf_dataset", f"data.path={path}", "mode=dpo", "dpo.pairs=offline"])
    assert (config.data.split, config.data.eval_split) == ("train", None)


def test_without_the_datasets_package_the_error_names_the_extra(tmp_path, monkeypatch):
    from wavalign.train.data import load_hf_split

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'wavalign\[datasets\]'") as caught:
        load_hf_split(tmp_path, "train")
    assert isinstance(caught.value, ValueError)  # the CLI reports it like bad data (exit 2, one line)
