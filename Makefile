# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv from the lock (requirements.txt, every package pinned) when needed; a no-op when up to date.
# `make lock` re-resolves the lock from the top-level requirements.in (then commit both), and the runtime lock
# requirements-runtime.txt (the node on an exported package, without torch) from requirements-runtime.in.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ssov-installed

# Network safety for every process that may start rclpy here (DDS stays on this machine), and no waiting
# on model hubs. The node itself never sets these: on a vehicle, users keep their own discovery settings.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_local.xml
export HF_HUB_OFFLINE := 1
export GLOO_SOCKET_IFNAME := lo
export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)

.PHONY: venv lock lock-gpu check-lock test demo demo-pipeline export realcheck bench bench-scale gpu-check ablation mutation clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the locked requirements into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements.txt > $(VENV)/install.log 2>&1 \
		|| (grep -v '^WARNING: Location' $(VENV)/install.log | tail -30; exit 1)
	@$(PY) -m pip check >> $(VENV)/install.log 2>&1 || (tail -5 $(VENV)/install.log; exit 1)
	@$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e . >> $(VENV)/install.log 2>&1 \
		|| (tail -30 $(VENV)/install.log; exit 1)
	@touch $(STAMP)

# Re-resolve the full lock from requirements.in in a scratch venv (pip, so torch==2.13.0 takes the CPU wheel).
LOCK_VENV := $(CURDIR)/.lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --disable-pip-version-check -q -r requirements.in
	$(LOCK_VENV)/bin/pip check
	$(LOCK_VENV)/bin/python tools/lockfile.py write requirements.in > requirements.txt.tmp
	mv requirements.txt.tmp requirements.txt && rm -rf $(LOCK_VENV)
	# the runtime lock (the node on an exported package, no torch): requirements-runtime.in within the full lock
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --disable-pip-version-check -q -r requirements-runtime.in -c requirements.txt
	$(LOCK_VENV)/bin/pip check
	$(LOCK_VENV)/bin/python tools/lockfile.py write requirements-runtime.in > requirements-runtime.txt.tmp
	mv requirements-runtime.txt.tmp requirements-runtime.txt && rm -rf $(LOCK_VENV)

# The GPU machines' lock (CPython 3.12, manylinux x86_64, their own CUDA torch), resolved here without installing;
# packages shared with requirements.txt keep its versions.
GPU_PLATFORM := CPython 3.12 on manylinux_2_28_x86_64 (this project's GPU machines; torch is the machine's own CUDA build)
lock-gpu:
	grep -v '^torch\|^torchvision' requirements.txt > .lock-gpu-constraints.txt
	$(PYTHON) -m pip install --disable-pip-version-check -q --dry-run --ignore-installed --report .lock-gpu.json \
		--python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --only-binary=:all: --target .lock-gpu-target \
		-c .lock-gpu-constraints.txt -r requirements-gpu.in
	$(PYTHON) tools/lockfile.py report requirements-gpu.in .lock-gpu.json "$(GPU_PLATFORM)" > requirements-gpu.txt.tmp
	mv requirements-gpu.txt.tmp requirements-gpu.txt && rm -rf .lock-gpu.json .lock-gpu-constraints.txt .lock-gpu-target

check-lock: $(STAMP)
	@$(PY) tools/lockfile.py check requirements.txt

# ARGS narrows the run, e.g. make test ARGS=tests/test_afi.py
test: check-lock
	$(PY) -m pytest -q $(ARGS)

# Mutation testing of the critical modules (mutmut; slow: not in CI). MODULES narrows it, e.g.
# make mutation MODULES="vocab projection"; prints the score per module and rewrites docs/mutation.md.
mutation: check-lock
	$(PY) tools/mutation.py $(MODULES)

# The demo model as an ONNX model package (what the node runs by default on CPU): exported and parity-checked
# against spconv on the real sample, once (about 15 s).
DEMO_PKG := models/ssov_synthetic_minkunet34c_w025.ssovpkg
$(DEMO_PKG)/model.yaml: models/ssov_synthetic_minkunet34c_w025.pt $(wildcard ssov_export/*.py) | $(STAMP)
	$(VENV)/bin/ssov-export onnx --checkpoint $< --out $(DEMO_PKG)

export: $(DEMO_PKG)/model.yaml

# The shipped bags replayed through the ssov_segmenter node (two processes, real DDS); pictures in demo_out/.
demo: $(STAMP) $(DEMO_PKG)/model.yaml
	$(PY) -m ssov_ros.demo --out demo_out

# The first-stage pipeline on the shipped data (teachers, superpoints, the demo model's evaluation).
demo-pipeline: $(STAMP)
	$(PY) -m ssov_train.demo --out demo_out/pipeline

# The real-data checks of docs/real_data_checks.md on the shipped keyframe; compare models with
# make realcheck REALCHECK_MODELS="old=models/a.pt new=runs/b/model.pt"
REALCHECK_MODELS ?= models/ssov_synthetic_minkunet34c_w025.pt
realcheck: $(STAMP)
	$(VENV)/bin/ssov-train realcheck $(addprefix --model ,$(REALCHECK_MODELS)) --out runs/realcheck

bench: $(STAMP)
	$(PY) bench/bench_superpoints.py
	$(PY) bench/bench_models.py
	$(PY) bench/bench_afi.py
	$(PY) bench/bench_backends.py

# Latency and peak RSS from 15k to 1M points, with and without the voxel budget (about 10 minutes; docs/scale.png).
bench-scale: $(STAMP)
	$(PY) bench/bench_scale.py

# Training on CUDA vs the CPU (losses, evaluation, torchrun), then the GPU backends (spconv CUDA, onnxruntime CUDA
# EP, TensorRT where installed) for the demo model and MinkUNet34C: parity + timings into docs/performance.md;
# under 8 minutes; skips with the reason where there is no NVIDIA GPU.
# No venv needed (GPU machines bring their own torch): the repo's .venv if present, else python3.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	timeout 480 $(GPU_PY) bench/gpu_check.py

# The synthetic-world ablation of the README, which makes the shipped model (about 1.5 hours on 2 busy cores).
ablation: $(STAMP)
	$(PY) -m ssov_train ablation --out runs/ablation --train-scenes 24 --val-scenes 8 --frames 6 \
		--image-width 320 --image-height 180 --pretrain-epochs 3 --train-epochs 6 --arch MinkUNet34C --width 0.25 \
		--sensors all --street varied --no-scratch

clean:
	rm -rf demo_out runs .pytest_cache
