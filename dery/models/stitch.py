"""Stitch layers: map one block's output to the next block's input.

One module covers all nine ordered family pairs (cnn / vit / swin). It works
in three steps:

1. *to map*: the input becomes ``[B, C_in, H, W]`` (cnn as is; swin
   ``[B, H, W, C]`` permuted; vit tokens without their prefix tokens reshaped
   to the patch grid, the prefix tokens kept aside);
2. *project*: a ``s x s`` convolution with stride ``s`` when the next block
   wants a map ``s`` times smaller, otherwise (bilinear resampling to the
   wanted size when it differs, then) a ``1 x 1`` convolution, which on tokens
   is exactly the linear map transformer->transformer stitches use;
3. *from map*: back to the next family's layout (swin ``[B, H, W, C]``; vit
   tokens with prefix tokens in front: the source's prefix tokens through their
   own linear map when it had them, else the mean of the new patch tokens).

Target sizes are ratios of the probe shapes, so the stitch follows the input
resolution at run time. With an explicit ``stride`` (``assembly.resolution=
'chain'``, the original DeRy code's schedule) the stitch never resamples: an
``s x s`` convolution with stride ``s`` (``s = 1``: a ``1 x 1``), and the next
block runs at whatever size that gives.

Two forms, both in ``MODELS`` and chosen with ``assembly.stitch=dict(type=...)``:

* :class:`StitchLayer` (default): the affine projection above (with bias);
* :class:`NormActStitch`: the original code's ``NeuralAdapter``, norm ->
  projection without bias -> ``LeakyReLU(0.1)``: ``BatchNorm2d`` ->
  ``Conv2d(kernel = stride)`` on maps, ``LayerNorm`` -> ``Linear`` between two
  token families (vit / swin) at stride 1.

Initialisation: ``random`` (the original DeRy code) or ``lstsq`` (least
squares on probe features of the two source models, as model-stitching work
does: Csiszarik et al. 2021, SN-Net). :meth:`StitchLayer.fit` does the fit; in
``'chain'`` mode the source features are resized to ``stride`` times the
target's grid for the fit only (the probe features of each model are at its own
resolution), the stitch itself never resamples. :meth:`NormActStitch.fit`
fits the linear part the same way, between the normalised input and the
LeakyReLU pre-image of the target (see there).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from dery.errors import ConfigError
from dery.registry import MODELS
from dery.zoo.layout import TensorSpec, check_family, from_map, grid_of, to_map


@MODELS.register_module()
class StitchLayer(nn.Module):
    """Stitch from ``in_family`` output of ``in_shape`` to ``out_family`` input of ``out_shape``.

    Args:
        in_family, out_family (str): ``cnn``, ``vit`` or ``swin``.
        in_shape, out_shape (sequence): per-sample canonical shapes at the
            probe resolution (``[C, H, W]``, ``[N, C]`` or ``[H, W, C]``).
        in_prefix, out_prefix (int): prefix (class) tokens of vit sides.
        init (str): ``'lstsq'`` or ``'random'``; ``lstsq`` stays random until
            :meth:`fit` is called with probe features.
        stride (int | None): None: inferred from the shapes, resampling when
            they are not an integer ratio (``resolution='native'``). An int: an
            ``s x s`` projection with stride ``s`` and never a resampling
            (``resolution='chain'``); the shapes are then those it runs at.
    """

    def __init__(self, in_family, in_shape, out_family, out_shape, in_prefix=0, out_prefix=0,
                 init='lstsq', stride=None):
        super().__init__()
        for fam in (in_family, out_family):
            check_family(fam, 'stitch family')
        if init not in ('lstsq', 'random'):
            raise ConfigError(f"stitch init must be 'lstsq' or 'random', got {init!r}")
        self.in_family, self.out_family = in_family, out_family
        self.in_shape, self.out_shape = [int(s) for s in in_shape], [int(s) for s in out_shape]
        self.in_prefix = int(in_prefix) if in_family == 'vit' else 0
        self.out_prefix = int(out_prefix) if out_family == 'vit' else 0
        self.init = init
        c_in, h_in, w_in = grid_of(self.in_shape, in_family, self.in_prefix)
        c_out, h_out, w_out = grid_of(self.out_shape, out_family, self.out_prefix)
        self.c_in, self.c_out = c_in, c_out
        self.resample = stride is None
        if stride is not None:
            if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
                raise ConfigError(f'stitch stride must be an integer >= 1, got {stride!r}')
            self.stride = stride
        else:
            # integer downsampling -> strided conv; anything else -> resample + 1x1
            self.stride = 1
            if h_out < h_in and h_in % h_out == 0 and w_in % w_out == 0 and h_in // h_out == w_in // w_out:
                self.stride = h_in // h_out
        self.scale = (h_out / h_in, w_out / w_in)
        self._build()

    def _build(self):
        """The learnable layers (subclasses: other forms)."""
        self.proj = nn.Conv2d(self.c_in, self.c_out, kernel_size=self.stride, stride=self.stride)
        self.prefix_proj = nn.Linear(self.c_in, self.c_out) if (self.in_prefix and self.out_prefix) else None

    @classmethod
    def from_specs(cls, src, dst, init='lstsq', stride=None, **kwargs):
        """The stitch from a block output ``src`` to a block input ``dst`` (:class:`TensorSpec`)."""
        return cls(src.family, src.shape, dst.family, dst.shape, src.prefix_tokens, dst.prefix_tokens, init=init,
                   stride=stride, **kwargs)

    @property
    def in_spec(self):
        return TensorSpec(self.in_family, self.in_shape, self.in_prefix)

    @property
    def out_spec(self):
        return TensorSpec(self.out_family, self.out_shape, self.out_prefix)

    # ---------------------------------------------------------------- layout
    def _to_map(self, x):
        return to_map(x, self.in_family, self.in_prefix)

    def _target_hw(self, h, w):
        h, w = int(h), int(w)  # plain ints under jit tracing too
        if self.stride > 1 or not self.resample:
            return h // self.stride, w // self.stride
        return max(1, int(round(h * self.scale[0]))), max(1, int(round(w * self.scale[1])))

    def _resample(self, m):
        if self.stride > 1 or not self.resample:
            return m
        th, tw = self._target_hw(*m.shape[-2:])
        if (th, tw) != tuple(m.shape[-2:]):
            m = F.interpolate(m, size=(th, tw), mode='bilinear', align_corners=False)
        return m

    def _from_map(self, m, prefix):
        cls = None
        if self.out_prefix and self.prefix_proj is not None:
            cls = self.prefix_proj(prefix)
            if cls.shape[1] != self.out_prefix:
                cls = cls.mean(1, keepdim=True).expand(-1, self.out_prefix, -1)
        return from_map(m, self.out_family, cls, self.out_prefix)

    def forward(self, x):
        m, prefix = self._to_map(x)
        return self._from_map(self._project(self._resample(m)), prefix)

    # ---------------------------------------------------------------- fitting
    @torch.no_grad()
    def fit(self, x, y, ridge=1e-4, max_rows=50000, seed=0):
        """Least-squares fit of the projection so that ``self(x)`` ~ ``y``.

        ``x``: source block outputs, ``y``: what the next block received in its
        own model on the same images (both canonical layout). Ridge-regularised;
        at most ``max_rows`` spatial positions (seeded subsample).
        Returns the relative error ``|self(x) - y| / |y|`` after the fit.
        """
        m, prefix = self._to_map(x.float())
        target_map, target_prefix = self._target_map(y.float())
        m = self._fit_input(m, target_map)
        s = self.stride
        # rows: one per output position; columns: the s*s*C_in receptive field
        cols = F.unfold(m, kernel_size=s, stride=s)  # [B, C_in*s*s, L]
        rows_x = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        rows_y = target_map.flatten(2).transpose(1, 2).reshape(-1, self.c_out)
        if rows_x.shape[0] != rows_y.shape[0]:
            raise ConfigError(f'stitch fit: {rows_x.shape[0]} source positions vs {rows_y.shape[0]} '
                             'target positions; probe features of different resolutions')
        w, b = self._ridge(rows_x, rows_y, ridge, max_rows, seed)
        self.proj.weight.copy_(w.reshape(self.c_out, self.c_in, s, s).to(self.proj.weight))
        self.proj.bias.copy_(b.to(self.proj.bias))
        if self.prefix_proj is not None and target_prefix is not None:
            px = prefix.reshape(-1, self.c_in)
            py = target_prefix[:, :prefix.shape[1]].reshape(-1, self.c_out) \
                if target_prefix.shape[1] >= prefix.shape[1] else target_prefix.mean(1)
            if px.shape[0] == py.shape[0]:
                w, b = self._ridge(px, py, ridge, max_rows, seed)
                self.prefix_proj.weight.copy_(w.to(self.prefix_proj.weight))
                self.prefix_proj.bias.copy_(b.to(self.prefix_proj.bias))
        return self.relative_error(x, y)

    def _fit_input(self, m, target_map):
        """The source map the fit sees: resampled as the stitch does (native), or, with a fixed
        stride (chain), resized to ``stride`` times the target's grid (the two models' probe
        features are each at their own resolution; the stitch itself never resamples)."""
        if self.resample:
            return self._resample(m)
        size = tuple(self.stride * int(v) for v in target_map.shape[-2:])
        if tuple(m.shape[-2:]) != size:
            m = F.interpolate(m, size=size, mode='bilinear', align_corners=False)
        return m

    @torch.no_grad()
    def relative_error(self, x, y):
        was_training = self.training
        self.eval()  # norms with their running statistics
        try:
            pred = self._fit_forward(x.float(), y)
        finally:
            self.train(was_training)
        return float((pred - y.float()).norm() / y.float().norm().clamp_min(1e-12))

    def _fit_forward(self, x, y):
        """``self(x)`` as the fit sees it (with a fixed stride: on the source resized to the target)."""
        if self.resample:
            return self(x)
        m, prefix = self._to_map(x)
        return self._from_map(self._project(self._fit_input(m, self._target_map(y.float())[0])), prefix)

    def _project(self, m):
        return self.proj(m)

    def _target_map(self, y):
        return to_map(y, self.out_family, self.out_prefix)

    @staticmethod
    def _ridge(x, y, ridge, max_rows, seed):
        if x.shape[0] > max_rows:
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(x.shape[0], generator=g)[:max_rows]
            x, y = x[idx], y[idx]
        x64, y64 = x.double(), y.double()
        mx, my = x64.mean(0), y64.mean(0)
        xc, yc = x64 - mx, y64 - my
        gram = xc.T @ xc
        lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
        w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)
        b = my - mx @ w
        return w.T.contiguous().float(), b.float()

    def extra_repr(self):
        return (f'{self.in_family}{tuple(self.in_shape)} -> {self.out_family}{tuple(self.out_shape)}, '
                f'stride={self.stride}{"" if self.resample else " (no resampling)"}, init={self.init}')


_TOKENS = ('vit', 'swin')


@MODELS.register_module()
class NormActStitch(StitchLayer):
    """The original DeRy code's stitch (``NeuralAdapter``): norm -> projection -> LeakyReLU.

    Between two token families (vit / swin) at stride 1: ``LayerNorm(C_in)``
    -> ``Linear(C_in, C_out, bias=False)`` on every token (class tokens too)
    -> ``LeakyReLU(0.1)``. Otherwise, on the ``[B, C, H, W]`` map:
    ``BatchNorm2d(C_in)`` -> ``Conv2d(C_in, C_out, kernel = stride = s,
    bias=False)`` -> ``LeakyReLU(0.1)``; a ViT output gets the mean of its new
    patch tokens as class tokens. Layouts, strides and resampling are
    :class:`StitchLayer`'s.

    Least-squares init (:meth:`fit`): the norm is set to the fit data's
    standardisation (BatchNorm: running mean / variance of the source features,
    weight 1; LayerNorm: weight 1), the projection solves ridge least squares
    from the normalised source to the LeakyReLU pre-image of the target
    (LeakyReLU is invertible: ``t = y`` where ``y >= 0``, ``y / slope``
    elsewhere), and the fitted intercept ``b``, which a bias-free projection
    cannot hold, goes into the norm's shift ``beta`` (the minimum-norm solution
    of ``W beta = b``; exact when ``W`` has full row rank).
    """

    def __init__(self, *args, negative_slope=0.1, **kwargs):
        self.negative_slope = float(negative_slope)
        super().__init__(*args, **kwargs)

    def _build(self):
        self.tokens = self.in_family in _TOKENS and self.out_family in _TOKENS and self.stride == 1
        if self.tokens:
            self.norm = nn.LayerNorm(self.c_in)
            self.proj = nn.Linear(self.c_in, self.c_out, bias=False)
        else:
            self.norm = nn.BatchNorm2d(self.c_in)
            self.proj = nn.Conv2d(self.c_in, self.c_out, kernel_size=self.stride, stride=self.stride, bias=False)
        self.act = nn.LeakyReLU(self.negative_slope)
        self.prefix_proj = None

    def _project(self, m):
        if self.tokens:  # per token: on the channels-last layout (swin's), and back to the map
            return to_map(self.act(self.proj(self.norm(from_map(m, 'swin')))), 'swin')[0]
        return self.act(self.proj(self.norm(m)))

    def _from_map(self, m, prefix):
        cls = None
        if self.tokens and self.out_prefix and prefix is not None:
            cls = self.act(self.proj(self.norm(prefix)))
            if cls.shape[1] != self.out_prefix:
                cls = cls.mean(1, keepdim=True).expand(-1, self.out_prefix, -1)
        return from_map(m, self.out_family, cls, self.out_prefix)

    def _pre_image(self, y):
        return torch.where(y >= 0, y, y / self.negative_slope)

    @torch.no_grad()
    def fit(self, x, y, ridge=1e-4, max_rows=50000, seed=0):
        """Least-squares fit of the norm and projection so that ``self(x)`` ~ ``y`` (see the class doc)."""
        m, _ = self._to_map(x.float())
        target_map, _ = self._target_map(y.float())
        m = self._fit_input(m, target_map)
        s = self.stride
        if self.tokens:
            self.norm.weight.fill_(1)
            self.norm.bias.zero_()
            mn = to_map(self.norm(from_map(m, 'swin')), 'swin')[0]
        else:
            self.norm.running_mean.copy_(m.mean((0, 2, 3)))
            self.norm.running_var.copy_(m.var((0, 2, 3), unbiased=False))
            self.norm.weight.fill_(1)
            self.norm.bias.zero_()
            was_training = self.norm.training
            self.norm.eval()
            mn = self.norm(m)
            self.norm.train(was_training)
        cols = F.unfold(mn, kernel_size=s, stride=s)
        rows_x = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        rows_y = self._pre_image(target_map).flatten(2).transpose(1, 2).reshape(-1, self.c_out)
        if rows_x.shape[0] != rows_y.shape[0]:
            raise ConfigError(f'stitch fit: {rows_x.shape[0]} source positions vs {rows_y.shape[0]} '
                              'target positions; probe features of different resolutions')
        w, b = self._ridge(rows_x, rows_y, ridge, max_rows, seed)
        self.proj.weight.copy_(w.reshape(self.proj.weight.shape).to(self.proj.weight))
        # the intercept through the norm's shift: W_sum beta = b (W summed over the kernel positions)
        w_sum = w.reshape(self.c_out, self.c_in, s * s).sum(-1).double()
        beta = torch.linalg.lstsq(w_sum, b.double().unsqueeze(1), driver='gelsd').solution.squeeze(1)
        self.norm.bias.copy_(beta.to(self.norm.bias))
        return self.relative_error(x, y)


def build_stitch(cfg, src, dst, init='lstsq', stride=None):
    """The stitch of form ``cfg`` (``dict(type='StitchLayer' | 'NormActStitch', ...)``, a
    registered :class:`StitchLayer` subclass) from ``src`` to ``dst`` (:class:`TensorSpec`)."""
    cfg = dict(cfg or dict(type='StitchLayer'))
    kind = cfg.pop('type', 'StitchLayer')
    cls = MODELS.get(kind) if isinstance(kind, str) else kind
    if not (isinstance(cls, type) and issubclass(cls, StitchLayer)):
        raise ConfigError(f"stitch type {kind!r} is not a stitch form registered in MODELS (a StitchLayer: "
                          "'StitchLayer', 'NormActStitch')")
    return cls.from_specs(src, dst, init=init, stride=stride, **cfg)
