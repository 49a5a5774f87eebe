"""The label vocabulary: {class folder name: index}, from the sorted class folders or fixed by a flag."""
import apache_beam as beam

from beam_jobs.input_tree import class_folder


def index_labels(names) -> dict[str, int]:
    return {name: index for index, name in enumerate(names)}


def _class_folders(input_file):
    folder = class_folder(input_file.relative_path)
    if folder is not None:
        yield folder


class ComputeVocabulary(beam.PTransform):
    """InputFile -> a single {label name: index}, indexing the sorted class folder names."""

    def expand(self, input_files):
        return (input_files
                | "ClassFolders" >> beam.FlatMap(_class_folders)
                | "CollectClasses" >> beam.combiners.ToSet()
                | "IndexSortedClasses" >> beam.Map(lambda names: index_labels(sorted(names))))
