"""The label vocabulary: {class folder name: index}, append-only across re-ingests, or fixed by a flag.

A dataset's first ingest indexes its sorted class folders. A re-ingest into the
same folder keeps the previous manifest's labels at their indices (a class whose
files are all gone keeps its index, with zero examples) and gives each new class
folder the next free index, in sorted order: a model trained before still reads
every label it knows correctly.
"""
import apache_beam as beam

from beam_jobs.input_tree import class_folder


def index_labels(names) -> dict[str, int]:
    return {name: index for index, name in enumerate(names)}


def _class_folders(input_file):
    folder = class_folder(input_file.relative_path)
    if folder is not None:
        yield folder


def extend_labels(previous: tuple[str, ...], found) -> list[str]:
    """`previous` in order, then the class folders of `found` it lacks, sorted."""
    return [*previous, *sorted(set(found) - set(previous))]


class ComputeVocabulary(beam.PTransform):
    """InputFile -> a single {label name: index}: `previous_labels` first, then the new class folders, sorted."""

    def __init__(self, *, previous_labels: tuple[str, ...] = ()):
        super().__init__()
        self._previous_labels = previous_labels

    def expand(self, input_files):
        return (input_files
                | "ClassFolders" >> beam.FlatMap(_class_folders)
                | "CollectClasses" >> beam.combiners.ToSet()
                | "IndexClasses" >> beam.Map(
                    lambda names, previous: index_labels(extend_labels(previous, names)),
                    previous=self._previous_labels))
