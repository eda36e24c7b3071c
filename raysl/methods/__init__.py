"""SSL methods, one module each; importing this package registers them all."""

from raysl.methods import (  # noqa: F401
    barlow_twins,
    byol,
    dino,
    moco_v2,
    moco_v3,
    nnclr,
    simclr,
    simsiam,
    swav,
    vicreg,
)
