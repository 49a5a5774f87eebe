"""The preprocessing run: settings, planning, the Beam recipe and its steps, ingest, the watch, the summary."""
