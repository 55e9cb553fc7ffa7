"""bioplausible: biologically plausible learning rules, compared with backprop.

The Python API (see the README's "Use from Python"): `rules()`, `datasets()`,
`learner(rule, model=..., input_shape=..., num_classes=...)` for one's own training loop,
`train(rule, data, ...)` for a whole run, `results(store)`. They load torch on first use,
so `import bioplausible` stays quick.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "rules", "datasets", "learner", "train", "results", "Run", "from_sequential"]

# name -> module that defines it; imported on first access (PEP 562)
_LAZY = {"rules": "api", "datasets": "api", "learner": "api", "train": "api", "results": "api", "Run": "api",
         "from_sequential": "models.sequential"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
