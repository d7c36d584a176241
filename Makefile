# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv from the pinned requirements when needed (idempotent; a no-op when up to date).

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

.PHONY: venv test demo bench ablation clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing pinned requirements into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt > $(VENV)/install.log 2>&1 \
		|| (grep -v '^WARNING: Location' $(VENV)/install.log | tail -30; exit 1)
	@$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e . >> $(VENV)/install.log 2>&1 \
		|| (tail -30 $(VENV)/install.log; exit 1)
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m ssov_train.demo --out demo_out

bench: $(STAMP)
	$(PY) bench/bench_superpoints.py
	$(PY) bench/bench_models.py
	$(PY) bench/bench_afi.py

# The synthetic-world ablation of the README (about 40 minutes on 2 cores).
ablation: $(STAMP)
	$(PY) -m ssov_train ablation --out runs/ablation --train-scenes 32 --val-scenes 8 --frames 10 \
		--image-width 640 --image-height 360 --pretrain-epochs 4 --train-epochs 4 --arch MinkUNet34C --width 0.25

clean:
	rm -rf demo_out runs .pytest_cache
