"""What a person sees: Beam's chatter filtered, the live progress line, the pipeline's counters."""
