from .synthetic import SyntheticImageDataset

__all__ = ['SyntheticImageDataset']
from .procedural import ProceduralGlyphDataset  # noqa: E402
from .digits import SklearnDigitsDataset  # noqa: E402
from .shapes import ProceduralShapesDataset  # noqa: E402

__all__ += ['ProceduralGlyphDataset', 'SklearnDigitsDataset', 'ProceduralShapesDataset']
