"""rm_ds: Bradley-Terry reward-model training on DeepSpeed.

Install torch first (``pip install torch==2.13.0`` on CPU machines), then ``pip install -e .[test]``;
``launch/setup.sh`` does both, idempotently.
"""

from setuptools import find_packages, setup

setup(
    name="rm_ds",
    version="0.1.0",
    description="Exact, distributed Bradley-Terry reward-model training on DeepSpeed",
    packages=find_packages(include=["rm_ds", "rm_ds.*"]),
    package_data={"rm_ds": ["configs/*.yaml", "serve/web/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.16",
        "transformers>=4.50",
        "peft>=0.13",
        "datasets>=3.0",
        "tensorboard>=2.15",
        "safetensors",
        "pyyaml",
        "numpy",
        "tqdm",
        "matplotlib",
        "pillow",
        "gguf",
        "fastapi",
        "uvicorn",
        "httpx",
        "scipy",
    ],
    extras_require={
        "mpi": ["mpi4py"],
        "test": ["pytest", "hypothesis", "scikit-learn", "mpi4py", "ruff"],
        "bench": ["trl"],
    },
    entry_points={"console_scripts": ["rm-ds=rm_ds.cli:main"]},
)
