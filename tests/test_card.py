"""Dataset and model cards parse with huggingface_hub's own card parser, metadata round-tripping."""

import dataclasses
import hashlib
from types import SimpleNamespace

import yaml
from huggingface_hub import DatasetCard, ModelCard, ModelCardData

from seqdistill import card, sft
from seqdistill.generate import GenerateConfig

FUNNEL = {"generated": 16, "finished": 14, "formatted": 13, "correct": 6, "deduplicated": 5, "kept": 4}
STATS = {"problems": 2, "samples": 16, "funnel": FUNNEL, "drop_reasons": {"wrong_answer": 7, "truncated": 2},
         "pass@1": 0.375, "pass@n": 1.0, "problems_with_kept": 2,
         "completion_tokens": {"kept": card.quantiles([10, 12, 14, 20]), "dropped": card.quantiles([64] * 12)},
         "sampling_seconds": 3.0, "generated_tokens": 600, "generated_tokens_per_second": 200.0}
METRICS = {"train_loss": 0.5, "global_step": 4, "train_seconds": 9.0, "train_tokens_per_second": 100.0,
           "device": "cpu", "dtype": "float32", "peak_rss_mb": 900}


def test_dataset_card_metadata(tmp_path):
    cfg = GenerateConfig(output_dir=str(tmp_path))
    cfg.problems = dataclasses.replace(cfg.problems, preset="gsm8k", source="")
    (tmp_path / "data").mkdir()
    for split in ("train", "dropped"):
        (tmp_path / "data" / f"{split}.parquet").write_bytes(split.encode())
    text = card.dataset_card(cfg, STATS)
    parsed = DatasetCard(text)
    assert parsed.data.to_dict() == yaml.safe_load(text.split("---")[1])
    meta = parsed.data.to_dict()
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train.parquet"}, {"split": "dropped", "path": "data/dropped.parquet"}]}]
    assert meta["dataset_info"] == [{"config_name": "default", "download_checksums": {
        f"data/{split}.parquet": {"num_bytes": len(split), "checksum": hashlib.sha256(split.encode()).hexdigest()}
        for split in ("train", "dropped")}}]
    assert meta["source_datasets"] == ["openai/gsm8k"] and meta["size_categories"] == ["n<1K"]
    assert "| kept | 4 | 25.0% |" in parsed.text


def model_card(tmp_path, merged=False, aligner=None, **settings):
    cfg = sft.SFTStageConfig(output_dir=str(tmp_path / "sft"), **settings)
    data = SimpleNamespace(source_stats={"funnel": FUNNEL}, teacher="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                           n_train=4, end_of_turn="<|im_end|>", lengths={"max": 20}, mixture=None, aligner=aligner)
    return ModelCard(card.sft_model_card(cfg, data, METRICS, merged=merged))


def test_model_cards(tmp_path):
    generated = tmp_path / "gen"
    generated.mkdir()
    (generated / "seqdistill_config.yaml").write_text(yaml.safe_dump({"config": {"push_to_hub": "me/traces"}}))
    adapter = model_card(tmp_path, dataset=str(generated)).data
    assert adapter.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded default's source
    assert adapter.base_model_relation == "adapter" and adapter.library_name == "peft"
    assert adapter.datasets == ["me/traces"]
    merged = model_card(tmp_path, merged=True, student="Qwen/Qwen2.5-1.5B-Instruct", dataset="me/other").data
    assert (merged.base_model, merged.base_model_relation, merged.library_name) == (
        "Qwen/Qwen2.5-1.5B-Instruct", "finetune", "transformers")
    assert merged.datasets == ["me/other"] and merged.model_name == "sft-merged"
    local = model_card(tmp_path, student=str(tmp_path), dataset=str(tmp_path / "x.parquet")).data
    assert local.base_model is None and local.datasets is None
    # what huggingface_hub writes back is what it read
    for meta in (adapter, merged, local):
        assert ModelCard(f"---\n{meta.to_yaml()}\n---\n").data.to_dict() == meta.to_dict()
        assert isinstance(meta, ModelCardData)


def test_datasets_reads_the_card(tmp_path):
    import datasets

    (tmp_path / "data").mkdir()
    for split, n in (("train", 4), ("dropped", 12)):
        datasets.Dataset.from_dict({"x": list(range(n))}).to_parquet(tmp_path / "data" / f"{split}.parquet")
    (tmp_path / "README.md").write_text(card.dataset_card(GenerateConfig(output_dir=str(tmp_path)), STATS))
    loaded = datasets.load_dataset(str(tmp_path))
    assert {name: len(split) for name, split in loaded.items()} == {"train": 4, "dropped": 12}


def test_datasets_never_serves_an_earlier_run_of_the_same_name(tmp_path):
    """`datasets` keys its cache of a local folder on the folder's name and its card, not on the files: two runs
    into folders of one name, with rows of the same size, read back as the first run's rows unless the card
    names the files' checksums (which it does)."""
    import datasets

    for run, rows in (("a", [1, 2, 3, 4]), ("b", [4, 3, 2, 1])):
        out = tmp_path / run / "traces"
        (out / "data").mkdir(parents=True)
        for split, values in (("train", rows), ("dropped", rows * 3)):
            datasets.Dataset.from_dict({"x": values}).to_parquet(out / "data" / f"{split}.parquet")
        (out / "README.md").write_text(card.dataset_card(GenerateConfig(output_dir=str(out)), STATS))
        assert datasets.load_dataset(str(out), split="train")["x"] == rows


def test_model_card_names_the_kd_loss_across_tokenizers(tmp_path):
    """Across tokenizers the card states the loss that ran (GOLD's hybrid or ULD), not the same-tokenizer divergence."""
    from seqdistill.training.kd import KDConfig

    same = model_card(tmp_path, kd=KDConfig(mode="offline")).text
    assert "loss = 0.5 * CE + 0.5 * T^2 * forward_kl" in same and "across tokenizers" not in same
    hybrid = model_card(tmp_path, aligner=object(), kd=KDConfig(mode="offline")).text
    assert "across tokenizers" in hybrid and "T^2 * forward_kl on the top-k tokens both vocabularies share + ULD on the rest" in hybrid
    uld = model_card(tmp_path, aligner=object(), kd=KDConfig(mode="offline", cross_tokenizer="uld")).text
    assert "loss = 0.5 * CE + 0.5 * ULD (sorted probabilities, L1)" in uld
