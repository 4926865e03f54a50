"""``ZooCache``: the zoo models of one run, each built once and shared by every stage."""
from .adapters import build_zoo_model
from .entry import ZooEntry, entries_from_config, load_zoo, resolve_entry


class ZooCache:
    """Builds each zoo model on first use; shapes, stems, cuts and features share it.

    Args:
        entries: ``None`` (the default ``model_zoo.yml``, read when first
            needed), a ``model_zoo.yml`` path, a list of entries (dicts or
            :class:`~dery.zoo.ZooEntry`) or a dict name -> entry.
        pretrained (bool): build with the entries' weights (False: random init,
            seeded by the entry name).
        input_size (tuple): ``(C, H, W)`` every model is probed at.
    """

    def __init__(self, entries=None, pretrained=True, input_size=(3, 224, 224)):
        if entries is None or isinstance(entries, str):
            self._path, self._entries = entries, None
        elif isinstance(entries, dict):
            self._path = None
            self._entries = {k: resolve_entry(v if isinstance(v, ZooEntry) else dict(v, name=k))
                             for k, v in entries.items()}
        else:
            self._path = None
            self._entries = {}
            for e in entries:
                entry = resolve_entry(e if isinstance(e, ZooEntry) else dict(e))
                self._entries[entry.name] = entry
        self.pretrained = bool(pretrained)
        self.input_size = tuple(int(s) for s in input_size)
        self.models = {}

    @classmethod
    def from_config(cls, zoo_cfg):
        """The zoo of a config's ``zoo`` section (see :func:`~dery.zoo.entries_from_config`)."""
        entries = entries_from_config(zoo_cfg)
        return cls(entries, pretrained=zoo_cfg.get('pretrained', True),
                   input_size=tuple(zoo_cfg.get('input_size', (3, 224, 224))))

    @property
    def entries(self):
        """``{name: ZooEntry}`` this cache builds from."""
        if self._entries is None:
            self._entries = load_zoo(self._path)
        return self._entries

    @property
    def names(self):
        return list(self.entries)

    def identity(self, names=None):
        """What determines the zoo's models (for stage stamps): pretrained, input size, each entry."""
        names = self.names if names is None else names
        return dict(pretrained=self.pretrained, input_size=list(self.input_size),
                    models={n: self.entries[n].identity(self.pretrained) for n in names})

    def add(self, zoo_model):
        """Use an already built :class:`~dery.zoo.ZooModel`."""
        self.models[zoo_model.name] = zoo_model

    def __contains__(self, name):
        return name in self.models or name in self.entries

    def __getitem__(self, name):
        if name not in self.models:
            self.models[name] = build_zoo_model(resolve_entry(name, self.entries), pretrained=self.pretrained,
                                                input_size=self.input_size)
        return self.models[name]

    def __repr__(self):
        return (f'ZooCache({len(self.entries)} entries, {len(self.models)} built, '
                f'pretrained={self.pretrained}, input_size={self.input_size})')


__all__ = ['ZooCache']
