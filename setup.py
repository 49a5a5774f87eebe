"""soundsight: raw audio and images to sharded TFRecords (Apache Beam) and a CNN (TensorFlow).

The base requirements are what a Beam worker needs to run `beam_jobs`, so
`--setup_file ./setup.py` ships exactly that to Dataflow workers. TensorFlow
lives in the `trainer` extra and is never imported by `beam_jobs`, which
encodes its Examples itself; the `tfrecord` package reads shards where
TensorFlow is absent (the tests check the shards with it, TF-free).
"""
import setuptools

WORKER_REQUIRES = [
    "apache-beam>=2.60",
    "google-crc32c>=1.5",  # without it Beam's TFRecord CRCs fall back to pure Python
    "numpy>=1.26",
    "pillow>=10.0",
    "scipy>=1.11",
]

# TensorBoard logs need the tensorboard package; trainer.export runs the LiteRT interpreter (ai-edge-litert, which
# replaces tf.lite.Interpreter) to quantize the int8 model selectively.
TRAINER_TOOLS = ["tensorboard>=2.16", "matplotlib>=3.8", "ai-edge-litert>=2.0"]

EXTRAS_REQUIRE = {
    "gcp": ["apache-beam[gcp]>=2.60"],
    "s3": ["apache-beam[aws]>=2.60"],  # s3:// roots and output; the commit's conditional PutObject uses its boto3
    "dask": ["apache-beam[dask]>=2.60", "distributed>=2024.1"],  # --runner=...dask_runner.DaskRunner
    "trainer": ["tensorflow-cpu>=2.16", *TRAINER_TOOLS],
    # Instead of "trainer" on a machine with NVIDIA GPUs: TensorFlow with its CUDA libraries from PyPI.
    "trainer-gpu": ["tensorflow[and-cuda]>=2.16", *TRAINER_TOOLS],
    "app": ["voila>=0.5", "ipywidgets>=8.1", "ipykernel>=6.29", "matplotlib>=3.8"],
    "test": ["pytest>=8", "playwright>=1.45", "tfrecord>=1.14", "crc32c>=2.3", "tensorflow-datasets>=4.9",
             "apache-beam[dask]>=2.60", "distributed>=2024.1",
             "apache-beam[aws]>=2.60", "moto[server]>=5.1",  # moto: an S3 server that honours If-None-Match
             "datasets>=5.2"],  # Hugging Face datasets: bench.preprocess's "hf datasets" engine, in its smoke test
}

setuptools.setup(
    name="soundsight",
    version="0.1.0",
    description="One Beam + TensorFlow pipeline for spoken commands and images",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["beam_jobs", "beam_jobs.*", "trainer", "app", "workflow"]),
    install_requires=WORKER_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
