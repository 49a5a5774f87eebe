"""Benchmarks: each prints its figures and verdicts, asserts nothing (README, "Tests and benchmarks").

They quiet what the commands quiet, before any of them imports Beam or TensorFlow: Beam's import-time notice
about Google Cloud clients (beam_jobs.console.logs) and TensorFlow's start-up notes (trainer/__init__.py).
"""
import trainer  # noqa: F401 -- imported for what it sets up, not used here

from beam_jobs.console import logs

logs.quiet_beam_import()
