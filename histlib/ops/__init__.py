"""GPU kernels of the StyleGAN2 networks, each beside its pure-PyTorch reference twin.

Importing this package imports torch but never compiles or loads an extension: a kernel is built on first use
(see :mod:`histlib.ops._build`). Every op takes ``impl='auto' | 'ref' | 'cuda' | 'compiled'``; see
:mod:`histlib.ops._dispatch` for how ``'auto'`` chooses and :func:`backend_info` for what ran.

Example:
    >>> from histlib import ops
    >>> f = ops.setup_filter([1, 3, 3, 1])
    >>> y = ops.upsample2d(x, f)                      # [N, C, 2H, 2W]
    >>> y = ops.bias_act(y, b, act='lrelu')           # + b, leaky ReLU, gain √2
    >>> with ops.use_impl('ref'):                     # force the reference inside the block
    ...     y_ref = ops.bias_act(y, b, act='lrelu')
    >>> ops.backend_info()                            # {'bias_act': 'ref', 'upfirdn2d': 'ref'} on CPU
"""

from histlib.ops._bias_act import activation_funcs, bias_act
from histlib.ops._dispatch import (
    AUTO_PREFERENCE,
    IMPLS,
    OpUnavailableError,
    backend_info,
    get_default_impl,
    reset_backend_info,
    set_default_impl,
    use_impl,
)
from histlib.ops._upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = [
    "AUTO_PREFERENCE",
    "IMPLS",
    "OpUnavailableError",
    "activation_funcs",
    "backend_info",
    "bias_act",
    "downsample2d",
    "filter2d",
    "get_default_impl",
    "reset_backend_info",
    "set_default_impl",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
    "use_impl",
]
