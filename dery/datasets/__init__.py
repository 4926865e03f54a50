from .synthetic import SyntheticImageDataset

__all__ = ['SyntheticImageDataset']
