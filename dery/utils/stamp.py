"""Stamps: what made a stage output, so that it is reused only when every input is unchanged.

A :class:`Stamp` holds a stage's name, its algorithm version (bump
:data:`STAGE_VERSIONS` when a stage's maths changes) and the plain values of
everything that can change its output. It is written into the output
(``partition.json``, ``assembly.json``, the similarity index,
``assembled_init.pth``); a later run compares the stamp it would write with
the one on disk and reuses the output only when they are equal, else it says
in one line what changed::

    partition: probe.num_samples changed (32 -> 16); recomputing

Values are canonical JSON (sorted keys, tuples as lists), so the order in
which a config lists its keys never matters.
"""
import hashlib
import json
import os
import os.path as osp

import numpy as np

__all__ = ['STAGE_VERSIONS', 'Stamp', 'canonical', 'digest', 'file_identity']

#: Algorithm version of each stage; bump when the maths of a stage changes its outputs.
# similarity/partition 3: timm MobileNetV3's blocks.6 became a node (#13); assembly 3: nodes shared by two
# blocks are copied, chain resolution, stem and stitch forms (#13); all 4: mmpretrain's masked-image-modelling
# backbones (MAE) run unmasked, models whose forward draws random numbers are seeded per model and batch (#16)
STAGE_VERSIONS = dict(similarity=4, partition=4, assembly=4)


def canonical(obj):
    """Plain JSON values: dicts with string keys, lists, numbers, strings, None."""
    if hasattr(obj, 'to_dict') and not isinstance(obj, dict):
        obj = obj.to_dict()
    if isinstance(obj, dict) or hasattr(obj, 'items'):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def digest(obj, n=None):
    """sha256 hex of the canonical JSON of ``obj`` (first ``n`` characters)."""
    h = hashlib.sha256(json.dumps(canonical(obj), sort_keys=True, separators=(',', ':')).encode()).hexdigest()
    return h[:n] if n else h


_FILE_DIGESTS = {}


def file_identity(path):
    """What identifies a weights file: its sha256 (memoised per path, size and mtime), or ``missing``."""
    path = osp.abspath(osp.expanduser(path))
    try:
        st = os.stat(path)
    except OSError:
        return dict(path=path, missing=True)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        from dery.utils.io import file_digest
        _FILE_DIGESTS[key] = file_digest(path)
    return dict(sha256=_FILE_DIGESTS[key], size=st.st_size)


def _flat(d, prefix=''):
    out = {}
    if isinstance(d, dict) and d:
        for k, v in d.items():
            out.update(_flat(v, f'{prefix}.{k}' if prefix else str(k)))
    else:
        out[prefix] = d
    return out


def _is_digest(v):
    return isinstance(v, str) and len(v) >= 16 and all(c in '0123456789abcdef' for c in v)


def _short(v, limit=60):
    text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
    return text if len(text) <= limit else text[:limit - 3] + '...'


class Stamp:
    """What made one stage output.

    Args:
        stage (str): a key of :data:`STAGE_VERSIONS`.
        inputs (dict): every input that can change the output (plain values;
            nested dicts give readable key paths in the messages).
    """

    def __init__(self, stage, inputs):
        self.stage = stage
        self.version = STAGE_VERSIONS[stage]
        self.inputs = canonical(inputs)

    @property
    def digest(self):
        return digest(dict(stage=self.stage, version=self.version, inputs=self.inputs))

    def to_json(self):
        return dict(stage=self.stage, version=self.version, digest=self.digest, inputs=self.inputs)

    def matches(self, old):
        return self.why_different(old) is None

    def why_different(self, old):
        """None when ``old`` (a stamp's JSON) equals this stamp, else one line saying what changed."""
        if not isinstance(old, dict) or 'inputs' not in old or 'version' not in old:
            return 'it has no stamp of its inputs (made by an earlier version of DeRy)'
        if old.get('version') != self.version:
            return f'{self.stage} algorithm version changed ({old.get("version")} -> {self.version})'
        if old.get('digest') == self.digest and canonical(old.get('inputs')) == self.inputs:
            return None
        before, now = _flat(canonical(old['inputs'])), _flat(self.inputs)
        changed = [k for k in sorted(set(before) | set(now)) if before.get(k, '<unset>') != now.get(k, '<unset>')]
        # readable values first (a setting that changed explains a digest that changed with it), then
        # the broadest setting (zoo.pretrained explains the weights of every model)
        changed.sort(key=lambda k: (_is_digest(before.get(k)) or _is_digest(now.get(k)), k.count('.'), k))
        if not changed:
            return 'its stamp does not match (edited by hand?)'
        first = changed[0]
        text = (f'{first} changed ({_short(before.get(first, "<unset>"))} -> '
                f'{_short(now.get(first, "<unset>"))})')
        if len(changed) > 1:
            text += f' (and {len(changed) - 1} more: {", ".join(changed[1:4])}{", ..." if len(changed) > 4 else ""})'
        return text
