"""The `deepret study`: nine retrieval representations compared on one benchmark, with an HTML report."""
from deepret.study.config import ALL_STEPS, Budget, StudyConfig, add_arguments, config_from_args, load_config
from deepret.study.run import run_study

__all__ = ["ALL_STEPS", "Budget", "StudyConfig", "add_arguments", "config_from_args", "load_config", "run_study"]
