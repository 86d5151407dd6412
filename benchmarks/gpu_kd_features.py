"""The KD terms beyond logits (`sft.kd`: hidden_states, attention, relations, on_policy, skew KL) on a CUDA GPU.

    python benchmarks/gpu_kd_features.py --tokenizer DIR --out DIR     # DIR: any SmolLM2 tokenizer directory

Checks, on a tiny random Llama pair with SmolLM2's tokenizer (student 2 blocks x 64, teacher 4 blocks x 96):
each term through the real `sft.run`, on cuda in bfloat16, with a finite loss and its own logged term
falling (its last two steps below its first two); the hidden-state projections saved beside the student, which reloads and generates without them.
Figures, on a SmolLM2-135M-shaped random teacher (30 x 576) and a 15 x 384 student, rows of about 900
tokens, bf16, gradient checkpointing on (the default), 24 steps, one run each after a discarded warm-up run
(short runs: read speed to about +-10%): training tokens/s and peak GPU memory of online logit KD alone and with each term. Writes gpu_kd_features.json and .md. The GPU machine needs seqdistill's training side only (torch,
transformers, TRL, peft, datasets), not vLLM; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

def rows(repeat: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {a} plus {b}? Explain step by step."},
                          {"role": "assistant", "content": f"We add {a} and {b}. " * repeat + f"So {a} plus {b} makes {a + b}."}],
             "problem_id": f"p{a}"} for a, b in zip(range(64), range(7, 71))]

TERMS = {  # name: (logged key, overrides)
    "hidden_mse": ("hidden_states_loss", ["kd.hidden_states.weight=10"]),
    "hidden_cosine_lora": ("hidden_states_loss", ["method=lora", "kd.hidden_states.weight=10", "kd.hidden_states.loss=cosine"]),
    "attention": ("attention_loss", ["kd.attention.weight=10"]),
    "distance": ("relations_loss", ["kd.relations.weight=100", "kd.relations.kind=distance", "learning_rate=1e-3"]),
    "angle": ("relations_loss", ["kd.relations.weight=100", "kd.relations.kind=angle", "learning_rate=1e-3",
                                 "kd.relations.max_tokens=16"]),
    "value_relation": ("relations_loss", ["kd.relations.weight=100", "kd.relations.kind=attention_relation"]),
    "skew_kl": ("kd_loss", ["kd.divergence=skew_kl"]),
    "on_policy": ("kd_loss", ["kd.on_policy.fraction=0.5", "kd.on_policy.max_new_tokens=16"]),
}


def build_llama(tokenizer, path: Path, layers: int, hidden: int, heads: int, kv: int, init: float, seed: int) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         head_dim=hidden // heads, max_position_embeddings=2048, initializer_range=init,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def train(student, teacher, data, out, steps, batch, overrides, max_length=512):
    from seqdistill import config as configlib
    from seqdistill import sft

    cfg = configlib.load(sft.SFTStageConfig, None, [
        f"student={student}", f"dataset={data}", f"output_dir={out}", "method=full", "learning_rate=2e-2",
        f"max_steps={steps}", f"per_device_train_batch_size={batch}", "report_to=[none]", f"max_length={max_length}",
        "logging_steps=1", "lr_scheduler_type=constant", "kd.mode=online", f"kd.teacher={teacher}", "kd.alpha=0",
        "save_steps=1000", *overrides])
    return sft.run(cfg)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--work", default="/tmp/gpu-kd-features")
    parser.add_argument("--device-check", action="store_true", help="only the tiny checks")
    args = parser.parse_args()
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    data = work / "train.parquet"
    datasets.Dataset.from_list(rows(6)).to_parquet(str(data))
    long = work / "long.parquet"  # about 900 tokens a row: where attention's T^2 shows
    datasets.Dataset.from_list(rows(85)).to_parquet(str(long))
    student = build_llama(tokenizer, work / "student", 2, 64, 2, 2, 0.02, 0)
    teacher = build_llama(tokenizer, work / "teacher", 4, 96, 3, 3, 0.2, 1)
    result = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
              "date": time.strftime("%Y-%m-%d"), "checks": {}, "figures": {}}
    for name, (key, overrides) in TERMS.items():
        try:
            run = train(student, teacher, data, work / name, 8, 8, overrides)
            values = [e[key] for e in run.trainer.state.log_history if key in e]
            m = run.metrics
            ok = (m["device"] == "cuda" and m["dtype"] == "bfloat16" and math.isfinite(m["train_loss"])
                  and len(values) == 8 and (sum(values[-2:]) < sum(values[:2]) or name in ("skew_kl", "on_policy")))
            check = {"ok": ok, key: [round(v, 4) for v in values], "device": m["device"], "dtype": m["dtype"]}
            if name == "hidden_mse":
                model_dir = work / name / "model"
                check["projections_saved"] = (model_dir / "kd_projections.safetensors").is_file()
                reloaded = AutoModelForCausalLM.from_pretrained(model_dir).cuda()
                ids = tokenizer("What is 2 plus 3?", return_tensors="pt").to("cuda")
                check["generated"] = reloaded.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] - ids["input_ids"].shape[1]
                check["ok"] = ok and check["projections_saved"] and check["generated"] == 4
        except Exception as e:  # noqa: BLE001 - one failing term must not hide the others
            check = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
        result["checks"][name] = check
        print(name, json.dumps(check), flush=True)
    if not args.device_check:
        big_teacher = build_llama(tokenizer, work / "big-teacher", 30, 576, 9, 3, 0.02, 2)
        big_student = build_llama(tokenizer, work / "big-student", 15, 384, 6, 2, 0.02, 3)
        figures = {"warm-up (CUDA start, not a figure)": [], "logit KD only": []} | {name: overrides for name, (_, overrides) in TERMS.items()
                                           if name not in ("hidden_cosine_lora", "skew_kl")}
        for name, overrides in figures.items():
            torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
            try:
                m = train(big_student, big_teacher, long, work / f"big-{name}", 24, 8,
                          [o for o in overrides if not o.startswith("learning_rate")] + ["learning_rate=1e-4"], 1024).metrics
                row = {"tokens_per_second": m.get("train_tokens_per_second"), "seconds": m.get("train_seconds"),
                       "peak_gpu_memory_mb": m.get("peak_gpu_memory_mb")}
            except Exception as e:  # noqa: BLE001
                row = {"error": f"{type(e).__name__}: {e}"[:300]}
            result["figures"][name] = row
            print(name, json.dumps(row), flush=True)
    (out / "gpu_kd_features.json").write_text(json.dumps(result, indent=1))
    lines = [f"# KD terms on {result['gpu']} ({result['date']})", "", "| check | ok | logged term, 8 steps |", "|---|---|---|"]
    lines += [f"| {n} | {c['ok']} | {c.get('error') or next((v for k, v in c.items() if k.endswith('loss')), '')} |"
              for n, c in result["checks"].items()]
    if result["figures"]:
        lines += ["", "| 15x384 student, 30x576 teacher, ~900-token rows, batch 8, 24 steps | tokens/s | peak GPU memory (MB) |", "|---|---|---|"]
        lines += [f"| {n} | {f.get('tokens_per_second', f.get('error'))} | {f.get('peak_gpu_memory_mb', '')} |"
                  for n, f in result["figures"].items()]
    (out / "gpu_kd_features.md").write_text("\n".join(lines) + "\n")
    return 0 if all(c["ok"] for c in result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
