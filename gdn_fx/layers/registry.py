"""Layer classes by model-family name, so a model builder can pick one from a config string."""

from typing import Callable

LAYERS: dict[str, type] = {}


def register_layer(name: str) -> Callable[[type], type]:
    """Class decorator: make the class available as ``get_layer(name)``."""

    def deco(cls: type) -> type:
        if name in LAYERS and LAYERS[name] is not cls:
            raise ValueError(f"layer name {name!r} is already taken by {LAYERS[name].__qualname__}")
        LAYERS[name] = cls
        return cls

    return deco


def get_layer(name: str) -> type:
    if name not in LAYERS:
        raise KeyError(f"no GDN layer named {name!r}; registered: {sorted(LAYERS)}")
    return LAYERS[name]
