"""histlib: generative augmentation for histology image classification with limited data.

Importing this package is cheap: it never imports torch, compiles a kernel or touches a GPU.
"""

__version__ = "0.1.0"
