"""Beam runner plumbing: the one default runner, the Prism binary, FnApiRunner's forked worker processes."""
