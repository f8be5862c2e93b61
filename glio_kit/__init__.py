"""glio-kit: unsupervised glioma detection with a DCGAN trained on healthy T2 MRI only.

The library behind the notebooks: each step of the paper is a function here that reads
what the previous step wrote into the run folder.
"""
__version__ = "0.1.0"

from .errors import GlioKitError, InputError, RunFolderError  # noqa: E402,F401
