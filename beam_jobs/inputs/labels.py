"""The label vocabulary: {class folder name: index}, append-only across re-ingests, or fixed by a flag.

A dataset's first ingest indexes its sorted class folders. A re-ingest into the
same folder keeps the previous manifest's labels at their indices (a class whose
files are all gone keeps its index, with zero examples) and gives each new class
folder the next free index, in sorted order: a model trained before still reads
every label it knows correctly.
"""


def index_labels(names) -> dict[str, int]:
    return {name: index for index, name in enumerate(names)}


def extend_labels(previous: tuple[str, ...], found) -> list[str]:
    """`previous` in order, then the class folders of `found` it lacks, sorted."""
    return [*previous, *sorted(set(found) - set(previous))]
