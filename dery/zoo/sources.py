"""Where zoo weights come from: URLs, local files, hub ids, and torch.hub's download cache."""
import os
import os.path as osp
from urllib.parse import urlparse

__all__ = ['is_url', 'looks_like_path', 'hub_cache_file']


def is_url(s):
    return isinstance(s, str) and s.split('://')[0] in ('http', 'https', 's3', 'ftp')


def looks_like_path(s):
    return isinstance(s, str) and not is_url(s) and not s.startswith('hf-hub:') and (
        os.sep in s or s.endswith(('.pth', '.pt', '.bin', '.safetensors', '.ckpt', '.pth.tar')))


def hub_cache_file(url):
    """Where torch.hub (and so mmengine / torchvision) caches a URL download."""
    import torch
    return osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(urlparse(url).path))
