"""The seed paper's reported numbers, and why two of them do not follow from its own counts.

The paper (test set: 27 healthy + 27 HGG subjects) reports accuracy 0.907, precision 0.892,
recall 0.923 and AUC 0.907, and says 24 of 27 tumours and 25 of 27 healthy subjects were
classified correctly.

**The inconsistency, explained once here** (``metrics.md``, notebook 05 and the README refer
to :func:`paper_consistency`). With tumour = positive, the counts give TP 24, FN 3, TN 25,
FP 2, hence

* accuracy  = 49/54 = 0.907: matches the printed 0.907;
* precision = 24/26 = 0.923, where the paper prints 0.892;
* recall    = 24/27 = 0.889, where the paper prints 0.923.

The printed values cannot both come from these counts: the printed recall equals the
precision the counts imply, and the printed precision is close to, but not, the implied
recall. AUC cannot be checked from counts. Nothing is "corrected": the kit compares itself
with the printed values and shows the implied ones beside them.
"""
from __future__ import annotations

from .metrics import rates

#: What the paper prints (abstract and Results), with the confusion counts its sentences imply.
PAPER = dict(
    accuracy=0.907,
    precision=0.892,
    recall=0.923,
    subject_auc=0.907,
    tumours_right=24,
    healthy_right=25,
    n_test_tumor=27,
    n_test_healthy=27,
    confusion=dict(tn=25, fp=2, fn=3, tp=24),  # implied by the counts above
    source="seed paper, abstract and Results",
)

#: The paper's operating point on the ROC curve, from its counts: (FPR, TPR) = (2/27, 24/27).
PAPER_OPERATING_POINT = (2 / 27, 24 / 27)


def paper_consistency() -> dict:
    """The paper's printed metrics next to the metrics its own counts imply (see the module text).

    Returns dict with ``printed``, ``implied`` (metric -> value, implied rounded to 4
    decimals), ``confusion`` (the implied counts), ``matches`` (metric -> bool at the paper's
    3-decimal rounding) and ``note`` (one sentence for reports).
    """
    c = PAPER["confusion"]
    implied = rates(c["tn"], c["fp"], c["fn"], c["tp"])
    printed = {k: PAPER[k] for k in ("accuracy", "precision", "recall", "subject_auc")}
    matches = {k: abs(round(implied[k], 3) - printed[k]) < 1e-9 for k in ("accuracy", "precision", "recall")}
    note = (
        "The paper's counts (24/27 tumours and 25/27 healthy right) imply TP 24, FN 3, TN 25, FP 2: "
        f"accuracy {implied['accuracy']:.3f}, precision {implied['precision']:.3f}, "
        f"recall {implied['recall']:.3f}. "
        "The paper prints precision 0.892 and recall 0.923, which its own counts do not give "
        "(accuracy 0.907 does match). Both are reported; neither is changed."
    )
    return dict(printed=printed, implied={k: round(v, 4) for k, v in implied.items()}, confusion=dict(c),
                matches=matches, note=note)


def paper_block() -> dict:
    """The ``paper`` entry of ``metrics.json``: :data:`PAPER`, its operating point and the
    consistency check."""
    return dict(PAPER, operating_point=dict(fpr=PAPER_OPERATING_POINT[0], tpr=PAPER_OPERATING_POINT[1]),
                consistency=paper_consistency())
