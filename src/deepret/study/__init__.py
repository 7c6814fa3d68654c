"""The `deepret study`: nine retrieval representations compared on one benchmark, with an HTML report.

The names are imported on first use (deepret.lazy): the study's options without torch."""
from deepret.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "deepret.study.config": ("ALL_STEPS", "Budget", "StudyConfig", "add_arguments", "config_from_args", "load_config"),
    "deepret.study.run": ("run_study",),
})
