"""Figures, grouped by the step whose outputs they draw.

    data       notebook 01: slice montage, intensity histograms, cohort summary
    training   notebook 02: Figure 3 (samples by epoch), losses, real vs generated, learning rates
    scoring    notebook 03: the mapping made visible, mapping loss, score distributions
    residuals  notebook 04: Figures 4 and 5, the residual browser's drawing
    metrics    notebook 05: ROC, confusion matrix (Table I), score distributions, pixel metrics

Every function returns a matplotlib Figure; the notebook shows it and saves it as PNG in the
run folder with :func:`glio_kit.run.notebook.show`. :mod:`.style` holds what they share.
"""
