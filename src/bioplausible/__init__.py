"""bioplausible: biologically plausible learning rules, compared with backprop."""

__version__ = "0.1.0"
