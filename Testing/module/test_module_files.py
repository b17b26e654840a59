"""Static checks of the module's files: CMake lists, compiling, the widgets the code uses."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET


from module_helpers import LIB, MODULE_DIR, REPO
from SlicerMedSegLib import Panel, Parameters


# ---- the module's files ---------------------------------------------------------------------------
def _module_files():
    return sorted(p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def test_every_module_file_is_listed_in_cmakelists():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT" in text
    expanded = text.replace("${MODULE_NAME}", "SlicerMedSeg").replace("${CMAKE_CURRENT_SOURCE_DIR}/", "")
    not_packaged = {"CMakeLists.txt", "README.md"}  # build script and developer notes
    missing = [f for f in _module_files() if f not in not_packaged and f not in expanded]
    assert not missing, f"not listed in SlicerMedSeg/CMakeLists.txt: {missing}"
    listed = re.findall(r"^\s+(SlicerMedSeg\S*|Resources/\S+|Testing/\S+)\s*$", expanded, re.M)
    assert len(listed) >= 17 and all((MODULE_DIR / f).is_file() for f in listed), listed
    slicer_test = re.search(r"slicer_add_python_unittest\(SCRIPT (\S+)\)", expanded).group(1)
    assert (MODULE_DIR / slicer_test).is_file()
    assert (MODULE_DIR / "Resources" / "Icons" / "SlicerMedSeg.png").read_bytes() == \
        (REPO / "Resources" / "Icons" / "SlicerMedSeg.png").read_bytes()


def test_module_files_compile():
    for rel in _module_files():
        if rel.endswith(".py"):
            compile((MODULE_DIR / rel).read_text(encoding="utf-8"), rel, "exec")  # no .pyc written
    assert (MODULE_DIR / "SlicerMedSeg.py").stat().st_size < 8000  # a thin module file


EXPECTED_WIDGETS = {
    "inputVolumeSelector": "qMRMLNodeComboBox", "roiSelector": "qMRMLNodeComboBox",
    "correctionSelector": "qMRMLNodeComboBox", "finetuneVolumeSelector": "qMRMLNodeComboBox",
    "modelComboBox": "QComboBox", "deviceComboBox": "QComboBox", "refreshModelsButton": "QPushButton",
    "applyButton": "QPushButton", "finetuneButton": "QPushButton", "progressBar": "QProgressBar",
    "statusLabel": "QLabel", "modelInfoLabel": "QLabel", "modalityWarningLabel": "QLabel",
    "logTextEdit": "QPlainTextEdit", "ttaCheckBox": "QCheckBox", "confidenceCheckBox": "QCheckBox",
    "regionsCheckBox": "QCheckBox", "confidenceThresholdSpinBox": "QDoubleSpinBox", "stepsSpinBox": "QSpinBox",
    "modelNameLineEdit": "QLineEdit", "optionsCollapsibleButton": "ctkCollapsibleButton",
    "logCollapsibleButton": "ctkCollapsibleButton", "finetuneCollapsibleButton": "ctkCollapsibleButton",
    "refineCollapsibleButton": "ctkCollapsibleButton", "refineSegmentationSelector": "qMRMLNodeComboBox",
    "refinePromptSelector": "qMRMLNodeComboBox", "refinePlaceWidget": "qSlicerMarkupsPlaceWidget",
    "refineOrganComboBox": "QComboBox", "refineKindComboBox": "QComboBox", "refineButton": "QPushButton",
}
NODE_TYPES = {"inputVolumeSelector": ["vtkMRMLScalarVolumeNode"], "roiSelector": ["vtkMRMLMarkupsROINode"],
              "correctionSelector": ["vtkMRMLSegmentationNode"], "finetuneVolumeSelector": ["vtkMRMLScalarVolumeNode"],
              "refineSegmentationSelector": ["vtkMRMLSegmentationNode"],
              "refinePromptSelector": ["vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsROINode"]}


def test_every_widget_the_code_uses_exists_in_the_ui_file_with_its_class():
    root = ET.parse(MODULE_DIR / "Resources" / "UI" / "SlicerMedSeg.ui").getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    classes = {name: w.get("class") for name, w in widgets.items()}
    used = set()
    for path in [MODULE_DIR / "SlicerMedSeg.py", *LIB.glob("*.py"), *(MODULE_DIR / "Testing").rglob("*.py")]:
        used |= set(re.findall(r"\bui\.([A-Za-z_]\w*)", path.read_text()))
    assert used, "the code uses no widget?"
    for name in sorted(used):
        assert name in classes, f"self.ui.{name} is not in SlicerMedSeg.ui"
        assert classes[name] == EXPECTED_WIDGETS.get(name, classes[name]), (name, classes[name])
    assert set(EXPECTED_WIDGETS) <= set(classes) and set(EXPECTED_WIDGETS) >= used - {"SlicerMedSeg"}
    for name, node_types in NODE_TYPES.items():
        prop = widgets[name].find("property[@name='nodeTypes']/stringlist")
        assert [s.text for s in prop] == node_types, name
    devices = [i.find("property/string").text.lower() for i in widgets["deviceComboBox"].findall("item")]
    assert devices == list(Parameters.DEVICES)  # the combo box index is the DEVICES index
    kinds = [i.find("property/string").text for i in widgets["refineKindComboBox"].findall("item")]
    assert len(kinds) == len(Panel.REFINE_POINT_KINDS) and "here" in kinds[0] and "Not" in kinds[1]
    assert root.find("widget").get("class") == "qMRMLWidget"
