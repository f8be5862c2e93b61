"""Exercises: the paper's key pieces written by the student and checked against the library.

``glio-kit notebooks DIR --exercises`` writes the student version of the notebooks
(:func:`~glio_kit.exercises.notebooks.exercise_notebook`): each instructor cell tagged
``exercise:<name>`` becomes a skeleton to complete, a check cell calling the ``check_*``
functions here, and a hint. A check runs the student's function and the library's on random
and edge-case inputs and raises :class:`ExerciseError` with one or two sentences on what is
wrong; it prints one line when everything matches.
"""
from .checks import (ExerciseError, check_anomaly_score, check_discrimination_loss, check_residual_loss,
                     check_scale_scores)
from .checks_gan import check_d_step, check_g_step, check_map_latent
from .checks_metrics import check_rates_from_counts, check_subject_scores, check_threshold_from_healthy

__all__ = ["ExerciseError", "check_residual_loss", "check_discrimination_loss", "check_anomaly_score",
           "check_scale_scores", "check_d_step", "check_g_step", "check_map_latent", "check_subject_scores",
           "check_threshold_from_healthy", "check_rates_from_counts"]
