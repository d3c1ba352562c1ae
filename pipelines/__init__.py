"""The DAG factory and the ways to run it: locally (kfp.local), compiled, submitted, scheduled."""

__all__ = ["PIPELINES", "build_pipeline"]


def __getattr__(name: str):
    # Lazy: importing the factory imports the components, whose container image (GANFORGE_IMAGE) is
    # fixed at that moment; `python -m pipelines run --runner docker` sets it first.
    if name in __all__:
        from . import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
