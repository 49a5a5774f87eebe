"""The main job that ties beam_jobs and trainer together, and its HTML report."""
