"""rm_ds: Bradley-Terry reward-model training on DeepSpeed.

Install torch first (``pip install torch==2.13.0`` on CPU machines), then ``pip install -e .[test]``;
``launch/setup.sh`` does both, idempotently.
"""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithDeepSpeedConfigs(build_py):
    """Copy the top-level ``ds_configs/*.json`` (the one source) into the built package as
    ``rm_ds/ds_configs/``, where ``rm_ds.config`` looks when the repo root is not beside the package."""

    def run(self):
        super().run()
        out = Path(self.build_lib) / "rm_ds" / "ds_configs"
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted((Path(__file__).resolve().parent / "ds_configs").glob("*.json")):
            shutil.copy2(f, out / f.name)


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
    cmdclass={"build_py": BuildWithDeepSpeedConfigs},
    entry_points={"console_scripts": ["rm-ds=rm_ds.cli:main"]},
)
