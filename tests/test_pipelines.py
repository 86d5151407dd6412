"""Every recipe in pipelines/ loads and validates (strict keys, prompts that exist) and opens with its command."""

from pathlib import Path

import pytest
import yaml

from seqdistill import config as configlib
from seqdistill import evaluate, generate, pipeline, prompts, sft
from seqdistill.config import ConfigError

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
