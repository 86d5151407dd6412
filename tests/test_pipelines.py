"""Every recipe in pipelines/ loads and validates (strict keys, prompts that exist) and opens with its command."""

from pathlib import Path

import pytest
import yaml

from seqdistill import config as configlib
from seqdistill import evaluate, generate, pipeline, sft
from seqdistill.config import ConfigError
from seqdistill.engines import prompts

STAGES = {"generate": generate.GenerateConfig, "sft": sft.SFTStageConfig, "eval": evaluate.EvalConfig}
RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("pipelines").glob("*.yaml"))
# what the recipes write; a recipe may read what another one writes
PRODUCED = {yaml.safe_load(p.read_text()).get("output_dir") for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path):
    if path.read_text().startswith(f"# seqdistill run pipelines/{path.name}"):  # a whole pipeline
        cfg = pipeline.load(str(path), [])
        for stage in pipeline.STAGES:
            if getattr(cfg, stage) is not None and hasattr(getattr(cfg, stage), "prompt"):
                prompts.template_path(getattr(cfg, stage).prompt.template)
        return
    stage = path.name.split("-")[0]
    assert stage in STAGES, f"{path.name}: name stage recipes STAGE-*.yaml, or open a pipeline with its run command"
    assert path.read_text().startswith(f"# seqdistill {stage} --config pipelines/{path.name}")
    try:
        cfg = configlib.load(STAGES[stage], path)
    except ConfigError as e:
        unexplained = [p for p in e.problems if not any(f"path {out}" in p for out in PRODUCED if out)]
        assert not unexplained, unexplained
        return
    if hasattr(cfg, "prompt"):
        prompts.template_path(cfg.prompt.template)


def test_data_parallel_recipe_passes_only_through_rank_processes():
    """vLLM 0.32 refuses LLM(data_parallel_size=8) in one process at engine start; seqdistill starts one
    engine process per rank instead, so the 8-GPU recipe validates and the single-process path does not."""
    path = next(p for p in RECIPES if p.name == "qwen1.5b-full-zero3.yaml")
    cfg = pipeline.load(str(path), [])
    assert (cfg.generate.engine.backend, cfg.generate.engine.data_parallel_size) == ("vllm", 8)
    with pytest.raises(ConfigError, match=r"engine.extra.data_parallel_size is an engine setting of its own: set engine.data_parallel_size"):
        pipeline.load(str(path), ["generate.engine.data_parallel_size=1", "generate.engine.extra={data_parallel_size: 8}"])


def test_sft_mixture_in_a_pipeline(tmp_path):
    """With a generate stage, sft trains on what it writes, so a mixture of other datasets is refused; without
    one, each mixture dataset must exist when the recipe loads (named by its place in the list)."""
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "generate": {}, "sft": {"datasets": [
        {"path": str(tmp_path / "a.jsonl"), "weight": 1}]}}))
    with pytest.raises(ConfigError, match="sft.datasets names its own datasets, but in a pipeline with a generate stage"):
        pipeline.load(str(recipe), [])
    (tmp_path / "a.jsonl").write_text('{"messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]}\n')
    recipe.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "sft": {"datasets": [
        {"path": str(tmp_path / "a.jsonl"), "weight": 1}, {"path": str(tmp_path / "missing.jsonl"), "weight": 1}]}}))
    with pytest.raises(ConfigError, match=r"sft.datasets\[1\]: .*missing.jsonl.*no generate stage to write it"):
        pipeline.load(str(recipe), [])


def test_student_scored_in_the_mode_it_was_trained_in(tmp_path):
    """A pipeline whose sft changes how the student answers (template switches, thinking off) must eval it alike."""
    recipe = tmp_path / "mode.yaml"

    def load(sft_cfg, eval_cfg):
        recipe.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "generate": {}, "sft": sft_cfg, "eval": eval_cfg}))
        return pipeline.load(str(recipe), [])

    with pytest.raises(ConfigError, match="sft.chat_template_kwargs .* differ from eval.prompt.chat_template_kwargs"):
        load({"chat_template_kwargs": {"enable_thinking": False}}, {})
    with pytest.raises(ConfigError, match="sft.thinking off trains the student to answer after an empty think block"):
        load({"thinking": "off"}, {})
    both = {"chat_template_kwargs": {"enable_thinking": False}}
    assert load(both, {"prompt": both}).sft.chat_template_kwargs == {"enable_thinking": False}
    assert load({"thinking": "off"}, {"prompt": {"prefill": "<think>\n\n</think>\n\n"}}).sft.thinking == "off"
