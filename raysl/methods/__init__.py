"""SSL methods, one module each; importing this package registers them all."""

from raysl.methods import (  # noqa: F401
    autoencoder,
    barlow_twins,
    byol,
    colorization,
    deepcluster,
    dino,
    dinov2,
    distill,
    jigsaw,
    lejepa,
    mae,
    moco_v2,
    moco_v3,
    nnclr,
    rotation,
    simclr,
    simsiam,
    swav,
    vicreg,
)
