"""``ZooCache``: the zoo models of one run, built on demand, shared by every stage, released when done."""
from dery.utils.memory import trim_memory

from .adapters import build_zoo_model
from .entry import ZooEntry, entries_from_config, load_zoo, resolve_entry
from .zoo_model import node_index


class ZooCard:
    """What the stages need of a zoo model without its weights (the cost tables, layouts, records).

    Made once from a built :class:`~dery.zoo.ZooModel` (:meth:`ZooCache.card`)
    and kept after the model is released: name, nodes, family, input size,
    prefix tokens, node shapes (so :meth:`in_spec` / :meth:`out_spec`), the
    parameters of every node range, FLOPs per node and the stem's parameters
    and FLOPs. Answers as the model's own methods do.
    """

    def __init__(self, zm):
        self.name = zm.name
        self.nodes = list(zm.nodes)
        self.family = zm.family
        self.input_size = tuple(zm.input_size)
        self.num_prefix_tokens = zm.num_prefix_tokens
        n = len(self.nodes)
        self._shapes = [zm.shapes(i) for i in range(n)]
        self._flops = zm._flop_table()  # the FLOP table a rebuilt model reuses (no second jit trace)
        self._node_flops = [zm.flops(i, i) for i in range(n)]
        self._params = {(i, j): zm.params(i, j) for i in range(n) for j in range(i, n)}
        self._stem_params = zm.stem_params()

    def index(self, node):
        return node_index(self.name, self.nodes, node)

    def shapes(self, node):
        return self._shapes[self.index(node)]

    def in_spec(self, node):
        from .layout import TensorSpec
        return TensorSpec(self.family, self.shapes(node)[0], self.num_prefix_tokens)

    def out_spec(self, node):
        from .layout import TensorSpec
        return TensorSpec(self.family, self.shapes(node)[1], self.num_prefix_tokens)

    def params(self, start=0, end=-1):
        return self._params[(self.index(start), self.index(end))]

    def flops(self, start=0, end=-1):
        i, j = self.index(start), self.index(end)
        return sum(self._node_flops[i:j + 1])

    def stem_params(self):
        return self._stem_params

    def stem_flops(self):
        return self._flops['stem']

    def __repr__(self):
        return f'ZooCard({self.name!r}, family={self.family}, nodes={len(self.nodes)})'


class ZooCache:
    """Builds each zoo model on first use; shapes, stems, cuts and features share it.

    Memory: a built model stays until :meth:`release` (the similarity stage
    builds one model at a time and releases it when done, so its memory does
    not grow with the zoo). What a stage learnt about a released model that
    does not need its weights (the node list) is kept: :meth:`nodes`.

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
        self._added = set()
        self._nodes = {}
        self._cards = {}
        #: True: the stages keep what they build (a later stage of the same run needs every model)
        self.keep_built = False

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
        """Use an already built :class:`~dery.zoo.ZooModel` (never released by the stages)."""
        self.models[zoo_model.name] = zoo_model
        self._added.add(zoo_model.name)
        self._nodes[zoo_model.name] = list(zoo_model.nodes)

    def is_built(self, name):
        return name in self.models

    def is_added(self, name):
        """True for a model given with :meth:`add` (its weights may differ from its entry's)."""
        return name in self._added

    def release(self, name):
        """Drop the built model ``name`` (its weights are freed once nothing else holds them).

        Models given with :meth:`add` are kept. Returns True when a model was dropped.
        """
        if name in self._added or name not in self.models:
            return False
        zm = self.models.pop(name)
        self._nodes.setdefault(name, list(zm.nodes))
        del zm
        trim_memory()
        return True

    def release_all(self, keep=()):
        """:meth:`release` every built model but ``keep``."""
        for name in [n for n in self.models if n not in keep]:
            self.release(name)

    def nodes(self, name):
        """The node list of ``name``: remembered once the model was built, else built now (and released
        again unless it was built already)."""
        if name not in self._nodes:
            built = self.is_built(name)
            self._nodes[name] = list(self[name].nodes)
            if not built and not self.keep_built:
                self.release(name)
        return list(self._nodes[name])

    def known_nodes(self, name):
        """The node list of ``name`` when known without building it, else None."""
        nodes = self._nodes.get(name)
        return None if nodes is None else list(nodes)

    def card(self, name):
        """The :class:`ZooCard` of ``name`` (made from the model, built now if need be; kept after
        :meth:`release`). The caller releases a model it built only for its card."""
        if name not in self._cards:
            self._cards[name] = ZooCard(self[name])
        return self._cards[name]

    def has_card(self, name):
        return name in self._cards

    def remember_nodes(self, name, nodes):
        """Record the node list of ``name`` learnt elsewhere (e.g. from a feature cache)."""
        self._nodes.setdefault(name, list(nodes))

    def __contains__(self, name):
        return name in self.models or name in self.entries

    def __getitem__(self, name):
        if name not in self.models:
            zm = build_zoo_model(resolve_entry(name, self.entries), pretrained=self.pretrained,
                                 input_size=self.input_size)
            card = self._cards.get(name)
            if card is not None and list(zm.nodes) == card.nodes and zm._flops is None:
                zm._flops = card._flops  # built again after a release: its FLOP table is known
            self.models[name] = zm
            self._nodes.setdefault(name, list(zm.nodes))
        return self.models[name]

    def __repr__(self):
        return (f'ZooCache({len(self.entries)} entries, {len(self.models)} built, '
                f'pretrained={self.pretrained}, input_size={self.input_size})')


__all__ = ['ZooCache', 'ZooCard']
