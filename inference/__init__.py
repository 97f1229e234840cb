"""Inference: the blend of the configs (blend), the ensemble of trained runs (ensemble), the Kaggle submission
(submission), and scoring recordings of any length (recordings) with their timeline pictures (timeline)."""
