# Two commands on a fresh clone with only Python present: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: demo test setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The CPU build of torch first, so the project's torch range is already met and pip does not
# fetch a multi-gigabyte CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	# Slicer's terminology files for the slicer-core tests: trame-slicer's wheel carries them (its
	# own dependencies, a web framework, are not needed: nothing imports it)
	$(BIN)/python -m pip install -q --no-deps "trame-slicer==2.0.0"
	# OpenVINO, where PyPI can be reached: the faster runtime on CPUs without native bf16; without
	# it PyTorch runs everything and its tests say why they are skipped
	$(BIN)/python -m pip install -q --timeout 20 --retries 1 -e ".[openvino]" || \
		echo "OpenVINO could not be installed: PyTorch runs the networks"
	# highdicom, pydicom and contourpy for DICOM SEG and RT Structure Sets, where PyPI can be reached;
	# without them --dicom says so
	$(BIN)/python -m pip install -q --timeout 20 --retries 1 -e ".[dicom]" || \
		echo "highdicom could not be installed: medseg writes no DICOM SEG or RT Structure Set"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/medseg demo --output demo_output

test: setup
	$(BIN)/python -m pytest -q medseg_core Testing

clean:
	rm -rf $(VENV) demo_output .pytest_cache
