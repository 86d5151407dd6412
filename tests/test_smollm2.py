"""The real SmolLM2-135M-Instruct (embedded default) through `seqdistill generate`: correct traces are found and kept."""

import datasets
import pytest

from seqdistill import config as configlib
from seqdistill import generate
from seqdistill.generate import GenerateConfig
from seqdistill.verify import is_equivalent


@pytest.mark.slow
def test_smollm2_finds_correct_kept_traces(smollm2_llm, tmp_path):
    out = tmp_path / "gen-smollm2"  # unique name: datasets caches local directories by name
    cfg = configlib.load(GenerateConfig, "pipelines/generate-quickstart.yaml", [
        f"output_dir={out}", "problems.num_problems=24", "sampling.max_tokens=64", "chunk_size=12",
    ])
    stats = generate.run(cfg, llm=smollm2_llm)
    ds = datasets.load_dataset(str(out))
    kept = ds["train"]
    assert len(kept) == stats["funnel"]["kept"] > 0
    assert stats["funnel"]["generated"] == 24 * 8
    for row in kept:
        assert row["correct"] and is_equivalent(row["answer"], row["gold"])
        assert row["finish_reason"] == "stop"
        assert row["messages"][-1]["content"].strip()
    assert max(c for c in _per_problem(kept).values()) <= 4  # filters.max_per_problem
    assert "wrong_answer" in stats["drop_reasons"]


def _per_problem(ds):
    counts = {}
    for pid in ds["problem_id"]:
        counts[pid] = counts.get(pid, 0) + 1
    return counts
