"""VGG19's layer names and positions, without torch: settings and the CLI check them cheaply.

Layer names follow the Gatys paper: reluB_N is the N-th ReLU of block B; convB_N its convolution,
poolB the pooling that ends block B. The index is the module's position in torchvision's
`vgg19().features`.
"""

from __future__ import annotations

from collections.abc import Collection

# torchvision's VGG19 `features`: conv channel widths per block, with a pool after each block.
BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256, 256),
    (512, 512, 512, 512),
    (512, 512, 512, 512),
)


def _layer_table() -> tuple[tuple[str, int], ...]:
    """(name, index in torchvision's vgg19().features) for every conv, relu and pool."""
    table: list[tuple[str, int]] = []
    index = 0
    for block, widths in enumerate(BLOCKS, start=1):
        for conv in range(1, len(widths) + 1):
            table.append((f"conv{block}_{conv}", index))
            table.append((f"relu{block}_{conv}", index + 1))
            index += 2
        table.append((f"pool{block}", index))
        index += 1
    return tuple(table)


LAYER_INDEX: dict[str, int] = dict(_layer_table())
LAYER_NAMES: frozenset[str] = frozenset(LAYER_INDEX)


def min_input_edge(layers: Collection[str]) -> int:
    """The smallest image edge that still leaves a pixel at every pooling before these layers."""
    deepest = max(LAYER_INDEX[name] for name in layers)
    pools = [i for name, i in LAYER_INDEX.items() if name.startswith("pool") and i < deepest]
    return int(2 ** len(pools))
