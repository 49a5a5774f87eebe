"""Where files come from: reading input files, the folder-per-class tree's rules, split rules, label vocabularies."""
