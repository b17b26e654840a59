"""Every decision the panel makes, as pure functions the tests drive; ``Widget`` only connects the
signals and copies these values into the widgets.

Pure Python: imports neither slicer nor qt. Outcomes are read by attribute (``ok``, ``cancelled``,
``error``, ``seconds``, ...), so the ``Outcome`` of ``SegmentationLogic`` or any stand-in will do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .Parameters import DEVICES, FinetuneParameters, SegmentationParameters
from .Protocol import FINETUNE_STAGES, SEGMENT_STAGES, ProgressTracker

PROGRESS_STEPS = 1000  # the progress bar's range
SEGMENT, FINETUNE, REFINE = "segment", "finetune", "refine"
REFINE_POINT_KINDS = ("point", "negative")
"""What a point means, in the order of the panel's selector: the organ is here / not this piece."""


@dataclass(frozen=True)
class Buttons:
    """Texts and enabled states of the run buttons and of the inputs while a child runs."""

    applyText: str
    applyEnabled: bool
    finetuneText: str
    finetuneEnabled: bool
    inputsEnabled: bool  # volume, model, refresh, options, correction, fine-tune and refine fields
    refineText: str = "Refine"
    refineEnabled: bool = False


def buttons(running: Optional[str], hasInput: bool, model: str, modelCount: int, hasCorrection: bool,
            hasFinetuneVolume: bool, canRefine: bool = False) -> Buttons:
    """Apply turns into Cancel while a segmentation runs, Fine-tune into Cancel while fine-tuning,
    Refine into Cancel while refining; nothing else can start then. Apply needs a volume and a
    model (or an empty list: Apply reads it first); Fine-tune needs the corrected segmentation and
    its volume; Refine needs what :func:`refineReady` says.

    >>> b = buttons(None, True, "hn-oar", 3, False, False)
    >>> b.applyText, b.applyEnabled, b.finetuneEnabled, b.inputsEnabled, b.refineText, b.refineEnabled
    ('Apply', True, False, True, 'Refine', False)
    >>> b = buttons("segment", True, "hn-oar", 3, True, True)
    >>> b.applyText, b.finetuneEnabled
    ('Cancel', False)
    >>> buttons("refine", True, "hn-oar", 3, True, True, True).refineText
    'Cancel'
    >>> buttons("finetune", True, "hn-oar", 3, True, True, True).refineEnabled
    False
    """
    canSegment = hasInput and (bool(model) or modelCount == 0)
    canFinetune = hasCorrection and hasFinetuneVolume
    return Buttons(
        applyText="Cancel" if running == SEGMENT else "Apply",
        applyEnabled=running == SEGMENT or (running is None and canSegment),
        finetuneText="Cancel" if running == FINETUNE else "Fine-tune",
        finetuneEnabled=running == FINETUNE or (running is None and canFinetune),
        inputsEnabled=running is None,
        refineText="Cancel" if running == REFINE else "Refine",
        refineEnabled=running == REFINE or (running is None and bool(canRefine)))


def refineReady(hasSegmentation: bool, hasVolume: bool, hasPrompt: bool, organ: str) -> bool:
    """Refine needs a MedSeg result, the volume it was made on, a placed point or an ROI, and an
    organ.

    >>> refineReady(True, True, True, "Larynx"), refineReady(True, True, False, "Larynx")
    (True, False)
    """
    return bool(hasSegmentation and hasVolume and hasPrompt and organ)


def refineKind(isRegion: bool, kindIndex: int) -> str:
    """The prompt's kind: an ROI is a box around the organ; a point is what the selector says.

    >>> refineKind(True, 1), refineKind(False, 0), refineKind(False, 1)
    ('box', 'point', 'negative')
    """
    return "box" if isRegion else REFINE_POINT_KINDS[max(0, min(int(kindIndex), len(REFINE_POINT_KINDS) - 1))]


def organIndex(organs: Sequence[str], underPoint: Optional[str], current: Optional[str]) -> int:
    """Which organ to select: the one under the point when it is one of the model's, else the
    current one, else the first (-1: none). Names compare as the engine compares them.

    >>> organIndex(["Brainstem", "LeftParotid"], "left parotid", "Brainstem")
    1
    >>> organIndex(["Brainstem", "LeftParotid"], "Low confidence", "LeftParotid")
    1
    """
    from .Commands import normalize_segment_name

    keys = [normalize_segment_name(o) for o in organs]
    for wanted in (underPoint, current):
        if wanted and normalize_segment_name(wanted) in keys:
            return keys.index(normalize_segment_name(wanted))
    return 0 if organs else -1


# ---- progress ---------------------------------------------------------------------------------------
def tracker(kind: str, clock=None) -> ProgressTracker:
    stages = SEGMENT_STAGES if kind == SEGMENT else FINETUNE_STAGES
    return ProgressTracker(stages) if clock is None else ProgressTracker(stages, clock=clock)


def progress(progressTracker: ProgressTracker) -> tuple[int, str]:
    """The bar's value (0..``PROGRESS_STEPS``) and the status line (stage and time left)."""
    return int(PROGRESS_STEPS * progressTracker.overall), progressTracker.status_text()


def logLine(event) -> Optional[str]:
    """What the log shows of one event of the child (None: nothing)."""
    if event.kind not in ("stage", "log", "result", "error") or not event.message:
        return None
    prefix = f"[{event.stage}] " if event.stage else ("stderr: " if event.source == "stderr" else "")
    return prefix + event.message


# ---- the model list ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelEntry:
    text: str  # the list entry
    name: str  # the item's data
    tooltip: str


def modelEntries(models: Sequence) -> list[ModelEntry]:
    return [ModelEntry(m.displayText(), m.name, m.summary()) for m in models]


def modelIndex(names: Sequence[str], wanted: Optional[str]) -> int:
    """Which entry to select after a refresh: the wanted one (the restored setting, the model just
    fine-tuned, or the current one), else the first, else none (-1)."""
    if wanted in names:
        return list(names).index(wanted)
    return 0 if names else -1


def modelInfoText(model) -> str:
    return model.summary() if model is not None else "No model."


def modalityWarning(check) -> str:
    """The orange warning: ``check()`` gives the logic's text; a volume whose voxels cannot be read
    gets a warning saying so rather than an error."""
    try:
        return check() or ""
    except Exception as exc:
        return f"Could not check the intensities: {exc}"


# ---- parameters -----------------------------------------------------------------------------------------
def segmentationParameters(model: str, deviceIndex: int, tta: bool, confidence: bool, threshold: float,
                           showRegions: bool) -> SegmentationParameters:
    return SegmentationParameters(model=model, device=DEVICES[max(0, deviceIndex)], tta=bool(tta),
                                  confidence=bool(confidence), confidence_threshold=float(threshold),
                                  show_regions=bool(showRegions))


def finetuneParameters(resultModel: Optional[str], currentModel: str, steps: int, name: str,
                       deviceIndex: int) -> FinetuneParameters:
    """The model to fine-tune is the one that made the corrected result (its attribute), else the
    selected one; the name is trimmed (empty: the engine's ``MODEL-ft-<date-time>``).

    >>> finetuneParameters("phantom-unet", "hn-oar", 0, "  mine ", 2)
    FinetuneParameters(model='phantom-unet', steps=0, name='mine', device='cpu', lr=None)
    """
    return FinetuneParameters(model=resultModel or currentModel, steps=int(steps), name=name.strip(),
                              device=DEVICES[max(0, deviceIndex)])


# ---- how a run ended -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ending:
    status: str  # the status line
    log: tuple = ()  # lines for the log
    errorDialog: Optional[str] = None  # shown in a dialog when set
    selectModel: Optional[str] = None  # refresh the list and select this model


def segmentEnding(outcome, summary: Optional[str] = None) -> Ending:
    if outcome.cancelled:
        return Ending("Cancelled: nothing was added to the scene.", ("Cancelled.",))
    if not outcome.ok:
        return Ending(f"Failed: {outcome.error}", errorDialog=f"Segmentation failed:\n{outcome.error}")
    hint = (" Review the 'Low confidence' outline and the red overlay, correct in the Segment Editor, then "
            "fine-tune." if outcome.confidenceNode is not None else "")
    return Ending(f"Done in {outcome.seconds:.1f} s.{hint}", (summary,) if summary else ())


def refineEnding(outcome) -> Ending:
    """How a refine ended: per prompted organ the voxels added and removed, or why nothing changed.

    >>> from types import SimpleNamespace as O
    >>> refineEnding(O(cancelled=False, ok=True, seconds=0.84, changes=[{"label": "Larynx", "voxels_added": 120,
    ...     "voxels_removed": 3, "box_index": [1, 2, 3, 4, 5, 6]}])).status
    'Refined in 0.8 s: Larynx +120 / -3 voxels. Undo with the Segment Editor.'
    """
    if outcome.cancelled:
        return Ending("Refine cancelled: the segmentation is unchanged.", ("Refine cancelled.",))
    if not outcome.ok:
        return Ending(f"Refine failed: {outcome.error}", errorDialog=f"Refine failed:\n{outcome.error}")
    parts = [f"{c['label']} +{c['voxels_added']} / -{c['voxels_removed']} voxels" if c.get("box_index")
             else f"{c['label']} unchanged (the model found nothing else there)" for c in outcome.changes]
    changed = any(c.get("box_index") for c in outcome.changes)
    status = f"Refined in {outcome.seconds:.1f} s: {'; '.join(parts)}." + (" Undo with the Segment Editor." if changed
                                                                          else "")
    return Ending(status, (status,))


def finetuneEnding(outcome) -> Ending:
    if outcome.cancelled:
        return Ending("Fine-tuning cancelled: no model was written.")
    if not outcome.ok:
        return Ending(f"Fine-tuning failed: {outcome.error}", errorDialog=f"Fine-tuning failed:\n{outcome.error}")
    dice = ""
    if outcome.diceBefore is not None and outcome.diceAfter is not None:
        dice = f" Dice on your correction: {outcome.diceBefore:.3f} before, {outcome.diceAfter:.3f} after."
    organs = organChanges(getattr(outcome, "perLabel", None) or {})
    return Ending(f"New model {outcome.model}.{dice} It is selected: press Apply to re-run.",
                  (f"New model {outcome.model} in {outcome.modelPath}.{dice}",) + ((organs,) if organs else ()),
                  selectModel=outcome.model)


def organChanges(perLabel, tolerance=0.005):
    """The organs a fine-tune changed on the correction, most changed first ("Tumour 0.62 -> 0.81"),
    how many it left as they were (within ``tolerance``), and which ones the user edited (the
    others were accepted as the model drew them)."""
    rows = [(name, d.get("before"), d.get("after")) for name, d in perLabel.items()
            if isinstance(d, dict) and all(isinstance(d.get(k), (int, float)) for k in ("before", "after"))]
    changed = sorted((r for r in rows if abs(r[2] - r[1]) > tolerance), key=lambda r: -abs(r[2] - r[1]))
    if not rows:
        return ""
    text = "; ".join(f"{n} {b:.3f} -> {a:.3f}" for n, b, a in changed) or "no organ changed"
    same = len(rows) - len(changed)
    edited = [name for name, d in perLabel.items() if isinstance(d, dict) and d.get("edited")]
    return (f"Per organ on the correction: {text}" + (f" ({same} unchanged)" if changed and same else "") + "."
            + (f" You edited {', '.join(edited)}; the rest was kept as the model drew it." if edited else ""))
