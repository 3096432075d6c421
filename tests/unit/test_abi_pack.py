"""datapath/abi.py: every mirror's fast `pack` (and the struct.Struct `packer` hands out for hot
loops) gives the same bytes as its ctypes layout."""
import ctypes
import random

import pytest

from datapath import abi

STRUCTS = sorted((c for c in vars(abi).values() if isinstance(c, type) and
                  issubclass(c, abi._Struct) and c is not abi._Struct and c._fields_),
                 key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c.__name__)
def test_pack_matches_ctypes(cls):
    rng = random.Random(cls.__name__)
    for _ in range(20):
        obj, values = cls(), []
        for name, ctype, *_ in cls._fields_:
            if name.startswith("pad"):
                continue
            if issubclass(ctype, ctypes.Array):
                raw = bytes(rng.randrange(256) for _ in range(ctypes.sizeof(ctype)))
                ctypes.memmove(ctypes.addressof(obj) + getattr(cls, name).offset, raw, len(raw))
                values.append(raw)
            elif issubclass(ctype, ctypes.Structure):
                pytest.skip("nested struct: no flat pack")
            else:
                v = rng.randrange(1 << (8 * ctypes.sizeof(ctype)))
                setattr(obj, name, v)
                values.append(v)
        assert cls.pack(*values) == bytes(obj)
        assert abi.packer(cls).pack(*values) == bytes(obj)
        assert abi.packer(cls).size == ctypes.sizeof(cls)
